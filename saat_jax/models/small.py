"""A small CNN for the minute-long CPU runs on scikit-learn's 8x8 digits (and for tests).

Not from the paper: it exists so that the whole SAAT pipeline (BatchNorm in train mode during the
attack included) can be exercised end to end on a laptop CPU. ``use_bn=False`` gives a network
without BatchNorm, on which SA-PGD's examples are independent (used to compare it example by example
with a slow reference).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from saat_jax.models.layers import TorchLinear, batch_norm, conv, normalize


class SmallCNN(nn.Module):
  num_classes: int = 10
  width: int = 32
  use_bn: bool = True
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = normalize(x, self.mean, self.std)
    for i, (feat, stride) in enumerate(((self.width, 1), (2 * self.width, 2))):
      out = conv(feat, 3, stride, name=f"conv{i + 1}")(out)
      if self.use_bn:
        out = batch_norm(train, f"bn{i + 1}")(out)
      out = nn.relu(out)
    out = out.reshape(out.shape[0], -1)
    out = nn.relu(TorchLinear(4 * self.width, name="fc1")(out))
    return TorchLinear(self.num_classes, name="fc2")(out)
