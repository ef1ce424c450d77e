"""Flax models: PreAct ResNet-18, Wide ResNet-34-x, the standard ResNet-18 and a small CNN.

Every model maps NHWC images in [0, 1] to logits and takes ``train: bool`` (BatchNorm on batch
statistics when True). Input normalisation (e.g. CIFAR-10 mean/std, as the released SAAT code does)
happens inside the model, so eps is always in pixel units (8/255).

``dtype`` is the compute dtype (``'float32'``, the default, or ``'bfloat16'``; config.model.dtype):
parameters and BatchNorm statistics stay float32, the input is normalised in float32 and then cast,
and the logits come back as float32 (see :mod:`saat_jax.models.layers`).

``create_model(name, num_classes, ...)`` names:
  ``preact_resnet18``, ``resnet18``, ``wrn34_<x>`` (e.g. ``wrn34_10``; ``wrn<depth>_<x>`` for other
  depths), ``small_cnn``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from saat_jax.models.layers import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, COMPUTE_DTYPES,
                                    compute_dtype)
from saat_jax.models.preact_resnet import PreActResNet
from saat_jax.models.resnet import ResNet
from saat_jax.models.small import SmallCNN
from saat_jax.models.torch_import import convert_state_dict, load_torch_checkpoint
from saat_jax.models.wide_resnet import WideResNet

MODEL_NAMES = ("preact_resnet18", "resnet18", "wrn34_<x>", "small_cnn")

NORMALIZATIONS = {
    "none": (None, None),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}


def create_model(name: str, num_classes: int = 10, *, normalization: str = "none", dtype: Any = "float32",
                 **kwargs: Any) -> nn.Module:
  """Build a model by name, computing in ``dtype``; raises ``ValueError`` naming the known models
  (normalizations, dtypes) for an unknown one."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; use one of {sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalization]
  kwargs["dtype"] = compute_dtype(dtype)
  key = name.lower().replace("-", "_")
  if key == "preact_resnet18":
    return PreActResNet(num_classes=num_classes, mean=mean, std=std, **kwargs)
  if key == "resnet18":
    return ResNet(num_classes=num_classes, mean=mean, std=std, **kwargs)
  if key == "small_cnn":
    return SmallCNN(num_classes=num_classes, mean=mean, std=std, **kwargs)
  m = re.fullmatch(r"(?:wrn|wide_resnet)_?(\d+)_(\d+)", key)
  if m:
    if (int(m.group(1)) - 4) % 6:
      raise ValueError(f"unknown model {name!r}: a Wide ResNet's depth must be 6n+4 (e.g. wrn34_10, wrn28_10)")
    return WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), num_classes=num_classes,
                      mean=mean, std=std, **kwargs)
  raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)} "
                   "(e.g. wrn34_10 for Wide ResNet-34-10)")


def init_variables(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> dict:
  """Initialise ``{'params', 'batch_stats'?}`` for inputs of shape ``image_shape`` (H, W, C)."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return dict(jax.jit(lambda k: model.init(k, x, train=False))(key))


def count_params(params) -> int:
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


__all__ = ["create_model", "init_variables", "count_params", "convert_state_dict", "load_torch_checkpoint", "PreActResNet", "ResNet", "WideResNet",
           "SmallCNN", "MODEL_NAMES", "NORMALIZATIONS", "COMPUTE_DTYPES", "compute_dtype"]
