"""Wide ResNet-34-x (Zagoruyko & Komodakis 2016) as in the TRADES / Rice et al. ``wideresnet.py``.

Depth 34 gives (34 - 4) / 6 = 5 pre-activation blocks per group, widths 16, 16x, 32x, 64x.
Initialisation follows that code: conv weights ``kaiming_normal(fan_out, relu)``, linear bias 0
(its weight keeps PyTorch's default). WRN-34-10 has 46,160,474 parameters for 10 classes, which the
tests assert. (The reference module also defines an unused ``sub_block1``; it is never called in the
forward pass, so it is not built here and is skipped when importing such a checkpoint.)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from saat_jax.models.layers import TorchLinear, batch_norm, conv, model_input

kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class WideBlock(nn.Module):
  planes: int
  stride: int = 1
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = self.dtype
    equal_in_out = x.shape[-1] == self.planes
    act = nn.relu(batch_norm(train, "bn1", dt)(x))
    out = conv(self.planes, 3, self.stride, kernel_init=kaiming_normal_fan_out, dtype=dt, name="conv1")(act)
    out = nn.relu(batch_norm(train, "bn2", dt)(out))
    if self.drop_rate > 0:
      out = nn.Dropout(self.drop_rate, deterministic=not train)(out)
    out = conv(self.planes, 3, 1, kernel_init=kaiming_normal_fan_out, dtype=dt, name="conv2")(out)
    if equal_in_out:
      shortcut = x
    else:
      shortcut = conv(self.planes, 1, self.stride, kernel_init=kaiming_normal_fan_out, dtype=dt,
                      name="shortcut")(act)
    return out + shortcut


class WideResNet(nn.Module):
  depth: int = 34
  widen_factor: int = 10
  num_classes: int = 10
  drop_rate: float = 0.0
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  dtype: Any = jnp.float32  # compute dtype (layers.COMPUTE_DTYPES); parameters are float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {self.depth}")
    n = (self.depth - 4) // 6
    widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    dt = self.dtype
    out = conv(16, 3, 1, kernel_init=kaiming_normal_fan_out, dtype=dt,
               name="conv1")(model_input(x, self.mean, self.std, dt))
    for g, (planes, stride) in enumerate(zip(widths, (1, 2, 2))):
      for j in range(n):
        out = WideBlock(planes, stride if j == 0 else 1, self.drop_rate, dt, name=f"block{g + 1}_{j}")(out, train)
    out = nn.relu(batch_norm(train, "bn1", dt)(out))
    out = out.mean(axis=(1, 2))  # avg_pool2d(out, 8) on the 8x8 map of a 32x32 input
    return TorchLinear(self.num_classes, zero_bias=True, dtype=dt, name="fc")(out).astype(jnp.float32)
