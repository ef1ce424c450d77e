"""Layers shared by the models: PyTorch-default initialisers, BatchNorm, input normalisation.

The reference AT code (Rice et al. 2020, the SAAT release, TRADES) is PyTorch; to train the same
networks we initialise as PyTorch does (``kaiming_uniform(a=sqrt(5))`` for conv and linear weights,
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for linear biases) unless an architecture's reference code
overrides it (WRN, see ``wide_resnet.py``), and use PyTorch's BatchNorm constants (momentum 0.1,
i.e. flax ``momentum=0.9``, epsilon 1e-5).

Mixed precision follows the Flax idiom: every layer takes ``dtype``, the dtype it computes in
(``float32`` or ``bfloat16``, :data:`COMPUTE_DTYPES`), while parameters are created and kept in
float32 (``param_dtype``, :data:`PARAM_DTYPE`) and BatchNorm's running statistics are float32
(flax computes batch statistics in at least float32 and stores them so). The models read their
input in float32, normalise it in float32 and only then cast it to ``dtype`` (:func:`model_input`),
so an attack's perturbation of 1/255 is exact in the input; they return float32 logits.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform_(a=sqrt(5)) == U(-b, b) with b = 1/sqrt(fan_in), i.e. variance 1/(3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The compute dtypes a model can run in (config.model.dtype); parameters are always float32.
# float16 is not offered: it would need loss scaling, which bfloat16 (float32's exponent range) does not.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PARAM_DTYPE = jnp.float32

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def compute_dtype(dtype: Any) -> Any:
  """The jnp dtype of a compute dtype given by name (``'float32'``, ``'bfloat16'``) or as a dtype.

  Raises ``ValueError`` naming the choices for anything else."""
  try:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  except TypeError:
    name = None
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"dtype={dtype!r} is unknown; use one of {', '.join(map(repr, COMPUTE_DTYPES))} "
                     "(the compute dtype; parameters stay float32)")
  return COMPUTE_DTYPES[name]


def conv(features: int, kernel: int, stride: int = 1, *, kernel_init=torch_default_kernel_init,
         dtype: Any = jnp.float32, name: Optional[str] = None) -> nn.Conv:
  """A bias-free conv with PyTorch's padding (``kernel // 2``), computing in ``dtype``."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=kernel_init, dtype=dtype, param_dtype=PARAM_DTYPE, name=name)


def batch_norm(train: bool, name: Optional[str] = None, dtype: Any = jnp.float32) -> nn.BatchNorm:
  """PyTorch's BatchNorm constants; output in ``dtype``, scale/bias and running statistics float32."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=PARAM_DTYPE, name=name)


class TorchLinear(nn.Module):
  """``torch.nn.Linear`` with its default initialisation; params ``kernel`` (in, out) and ``bias``."""

  features: int
  zero_bias: bool = False
  dtype: Any = jnp.float32  # computation; the parameters are float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    bound = 1.0 / float(fan_in) ** 0.5

    def bias_init(key, shape, dtype=jnp.float32):
      if self.zero_bias:
        return jnp.zeros(shape, dtype)
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", torch_default_kernel_init, (fan_in, self.features), PARAM_DTYPE)
    bias = self.param("bias", bias_init, (self.features,), PARAM_DTYPE)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
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


def model_input(x: jax.Array, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                dtype: Any) -> jax.Array:
  """The first step of every model: :func:`normalize` in (at least) float32, then cast to ``dtype``.

  The input itself, and so an attack's ``x + delta``, is never rounded to ``dtype`` before it is
  normalised: a perturbation of 1/255 reaches the network as exactly as float32 allows.
  """
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return normalize(x, mean, std).astype(dtype)
