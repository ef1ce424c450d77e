"""The standard ResNet-18 for CIFAR (the ``resnet.py`` of the AutoAttack examples, after kuangliu).

Post-activation blocks with BatchNorm on the conv shortcuts; 11,173,962 parameters for 10 classes.
Kept so that PyTorch checkpoints of it (e.g. the pretrained model shipped with ``pyautoattack``)
can be imported and attacked.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from saat_jax.models.layers import TorchLinear, batch_norm, conv, model_input


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = self.dtype
    out = nn.relu(batch_norm(train, "bn1", dt)(conv(self.planes, 3, self.stride, dtype=dt, name="conv1")(x)))
    out = batch_norm(train, "bn2", dt)(conv(self.planes, 3, 1, dtype=dt, name="conv2")(out))
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = batch_norm(train, "shortcut_bn", dt)(conv(self.planes, 1, self.stride, dtype=dt, name="shortcut_conv")(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  num_blocks: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 10
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  dtype: Any = jnp.float32  # compute dtype (layers.COMPUTE_DTYPES); parameters are float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    out = conv(64, 3, 1, dtype=dt, name="conv1")(model_input(x, self.mean, self.std, dt))
    out = nn.relu(batch_norm(train, "bn1", dt)(out))
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.num_blocks)):
      for j in range(n):
        stride = (1 if i == 0 else 2) if j == 0 else 1
        out = BasicBlock(planes, stride, dt, name=f"layer{i + 1}_{j}")(out, train)
    out = out.mean(axis=(1, 2))
    return TorchLinear(self.num_classes, dtype=dt, name="linear")(out).astype(jnp.float32)
