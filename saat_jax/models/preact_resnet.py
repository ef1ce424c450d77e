"""PreAct ResNet-18 (He et al. 2016, identity mappings), as in Rice et al. (2020) ``preactresnet.py``.

The network of every experiment in Sec. 4.2-4.3 and Table 1. Conv shortcuts carry no BatchNorm and
one final BN precedes the pooling (Rice et al.'s version, which the released SAAT code imports):
11,172,170 parameters for 10 classes, i.e. 11.17M, which the tests assert. (kuangliu's variant,
without the final BN, has 11,171,146.)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from saat_jax.models.layers import TorchLinear, batch_norm, conv, model_input


class PreActBlock(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = self.dtype
    out = nn.relu(batch_norm(train, "bn1", dt)(x))
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, 1, self.stride, dtype=dt, name="shortcut")(out)
    else:
      shortcut = x
    out = conv(self.planes, 3, self.stride, dtype=dt, name="conv1")(out)
    out = conv(self.planes, 3, 1, dtype=dt, name="conv2")(nn.relu(batch_norm(train, "bn2", dt)(out)))
    return out + shortcut


class PreActResNet(nn.Module):
  num_blocks: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 10
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  dtype: Any = jnp.float32  # compute dtype (layers.COMPUTE_DTYPES); parameters are float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    out = conv(64, 3, 1, dtype=dt, name="conv1")(model_input(x, self.mean, self.std, dt))
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.num_blocks)):
      for j in range(n):
        stride = (1 if i == 0 else 2) if j == 0 else 1
        out = PreActBlock(planes, stride, dt, name=f"layer{i + 1}_{j}")(out, train)
    out = nn.relu(batch_norm(train, "bn", dt)(out))
    out = out.mean(axis=(1, 2))  # avg_pool2d(out, 4) on the 4x4 map of a 32x32 input
    return TorchLinear(self.num_classes, dtype=dt, name="linear")(out).astype(jnp.float32)
