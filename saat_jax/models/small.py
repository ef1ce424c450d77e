"""A small CNN for the minute-long CPU runs on scikit-learn's 8x8 digits (and for tests).

Not from the paper: it exists so that the whole SAAT pipeline (BatchNorm in train mode during the
attack included) can be exercised end to end on a laptop CPU. ``use_bn=False`` gives a network
without BatchNorm, on which SA-PGD's examples are independent (used to compare it example by example
with a slow reference).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from saat_jax.models.layers import TorchLinear, batch_norm, conv, model_input


class SmallCNN(nn.Module):
  num_classes: int = 10
  width: int = 32
  use_bn: bool = True
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  dtype: Any = jnp.float32  # compute dtype (layers.COMPUTE_DTYPES); parameters are float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    out = model_input(x, self.mean, self.std, dt)
    for i, (feat, stride) in enumerate(((self.width, 1), (2 * self.width, 2))):
      out = conv(feat, 3, stride, dtype=dt, name=f"conv{i + 1}")(out)
      if self.use_bn:
        out = batch_norm(train, f"bn{i + 1}", dt)(out)
      out = nn.relu(out)
    out = out.reshape(out.shape[0], -1)
    out = nn.relu(TorchLinear(4 * self.width, dtype=dt, name="fc1")(out))
    return TorchLinear(self.num_classes, dtype=dt, name="fc2")(out).astype(jnp.float32)
