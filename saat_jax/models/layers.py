"""Layers shared by the models: PyTorch-default initialisers, BatchNorm, input normalisation.

The reference AT code (Rice et al. 2020, the SAAT release, TRADES) is PyTorch; to train the same
networks we initialise as PyTorch does (``kaiming_uniform(a=sqrt(5))`` for conv and linear weights,
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for linear biases) unless an architecture's reference code
overrides it (WRN, see ``wide_resnet.py``), and use PyTorch's BatchNorm constants (momentum 0.1,
i.e. flax ``momentum=0.9``, epsilon 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform_(a=sqrt(5)) == U(-b, b) with b = 1/sqrt(fan_in), i.e. variance 1/(3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def conv(features: int, kernel: int, stride: int = 1, *, kernel_init=torch_default_kernel_init,
         name: Optional[str] = None) -> nn.Conv:
  """A bias-free conv with PyTorch's padding (``kernel // 2``)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=kernel_init, name=name)


def batch_norm(train: bool, name: Optional[str] = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class TorchLinear(nn.Module):
  """``torch.nn.Linear`` with its default initialisation; params ``kernel`` (in, out) and ``bias``."""

  features: int
  zero_bias: bool = False

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    bound = 1.0 / float(fan_in) ** 0.5

    def bias_init(key, shape, dtype=jnp.float32):
      if self.zero_bias:
        return jnp.zeros(shape, dtype)
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", torch_default_kernel_init, (fan_in, self.features))
    bias = self.param("bias", bias_init, (self.features,))
    return x @ kernel + bias


def normalize(x: jax.Array, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> jax.Array:
  """``(x - mean) / std`` per channel; the identity when ``mean`` is None.

  Done inside the model, as the released SAAT code does with ``normalize(X + delta)``, so that
  attacks, eps and clipping all live in pixel space [0, 1].
  """
  if mean is None:
    return x
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  return (x - mean) / std
