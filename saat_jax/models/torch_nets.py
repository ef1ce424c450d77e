"""The PyTorch modules of the Flax models, to load exported weights (needs torch).

One PyTorch definition per architecture, with the reference code's structure and parameter names,
so their ``state_dict``s are the ones :mod:`saat_jax.models.torch_import` reads and
:mod:`saat_jax.models.torch_export` writes:

* :class:`TorchResNet18`: the AutoAttack examples' ``resnet.py`` ResNet-18 (after kuangliu);
* :class:`TorchPreActResNet18`: Rice et al. (2020) ``preactresnet.py``, with the final ``bn``;
* :class:`TorchWideResNet`: TRADES / Rice et al. ``wideresnet.py`` (RobustBench's format), optionally
  with TRADES' unused ``sub_block1``;
* :class:`TorchSmallCNN`: saat_jax's own small CNN (:mod:`saat_jax.models.small`; no PyTorch
  original), names ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``fc1``, ``fc2`` as in Flax.

Each module takes NCHW images and, like the Flax model of the same name, can normalise them itself:
given ``mean`` and ``std`` it computes ``(x - mean) / std`` first, so it takes images in [0, 1] as the
Flax model does. The two are non-persistent buffers, so the ``state_dict`` keys stay the reference
network's and an export loads with ``load_state_dict(..., strict=True)``. Two departures from the
reference code, neither visible in the weights or on 32x32 inputs: the pooling is a global average
(the reference's ``avg_pool2d(out, 4)`` -- ``8`` for the WRN -- is that on a 32x32 input, and the
Flax models take the mean over H and W at any size), and the first conv takes ``in_channels``
(3 in the reference).

:func:`build` makes the module of a run's model spec (the ``model`` entry of the ``.json`` that
``python -m saat_jax.export`` writes beside the weights); :func:`build_torch_model` is the same by
name. Training never needs this module: it imports torch at the top, so import it only where torch
is installed (``pip install saat_jax[torch]``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from saat_jax.models import NORMALIZATIONS
from saat_jax.models.torch_import import model_family

# The Flax models' keyword arguments (``config.model.kwargs``) each PyTorch module has as well.
MODEL_KWARGS = {"resnet18": ("num_blocks",), "preact_resnet18": ("num_blocks",), "wrn": ("drop_rate",),
                "small_cnn": ("width", "use_bn")}


class _InputNormalization(nn.Module):
  """Base of the networks: ``(x - mean) / std`` per channel before the first layer when ``mean`` is
  given, as :func:`saat_jax.models.layers.normalize` does inside the Flax models."""

  def _set_normalization(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> None:
    if (mean is None) != (std is None):
      raise ValueError("give both mean and std, or neither (no input normalisation)")
    for name, value in (("mean", mean), ("std", std)):
      buf = None if value is None else torch.tensor(value, dtype=torch.float32).view(1, -1, 1, 1)
      self.register_buffer(name, buf, persistent=False)  # not in the state_dict

  def normalize(self, x: torch.Tensor) -> torch.Tensor:
    return x if self.mean is None else (x - self.mean) / self.std


def _add_resnet_stages(net: nn.Module, block, num_blocks: Sequence[int]) -> None:
  """``layer1`` .. ``layer4`` of a CIFAR ResNet: ``num_blocks[i]`` ``block``s, 64 to 512 planes."""
  in_planes = 64
  for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
    stride = 1 if i == 0 else 2
    blocks = [block(in_planes if j == 0 else planes, planes, stride if j == 0 else 1) for j in range(n)]
    setattr(net, f"layer{i + 1}", nn.Sequential(*blocks))
    in_planes = planes


class TorchBasicBlock(nn.Module):
  """AutoAttack examples' ``resnet.py`` BasicBlock: post-activation, conv+BN shortcut."""

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                    nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class TorchResNet18(_InputNormalization):
  """:class:`saat_jax.models.resnet.ResNet`; ``num_blocks`` as its field (ResNet-18: two per stage)."""

  def __init__(self, num_classes=10, *, num_blocks=(2, 2, 2, 2), in_channels=3, mean=None, std=None):
    super().__init__()
    self._set_normalization(mean, std)
    self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    _add_resnet_stages(self, TorchBasicBlock, num_blocks)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(self.normalize(x))))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    return self.linear(out.mean((2, 3)))


class TorchPreActBlock(nn.Module):
  """Rice et al. ``preactresnet.py`` PreActBlock: the conv shortcut (no BN) sees relu(bn1(x))."""

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + shortcut


class TorchPreActResNet18(_InputNormalization):
  """:class:`saat_jax.models.preact_resnet.PreActResNet` (Rice et al.'s, final ``bn`` included)."""

  def __init__(self, num_classes=10, *, num_blocks=(2, 2, 2, 2), in_channels=3, mean=None, std=None):
    super().__init__()
    self._set_normalization(mean, std)
    self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    _add_resnet_stages(self, TorchPreActBlock, num_blocks)
    self.bn = nn.BatchNorm2d(512)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = self.conv1(self.normalize(x))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.relu(self.bn(out))
    return self.linear(out.mean((2, 3)))


class TorchWideBlock(nn.Module):
  """TRADES / Rice ``wideresnet.py`` BasicBlock: ``convShortcut`` when in != out planes."""

  def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
    self.drop_rate = drop_rate
    self.equal_in_out = in_planes == out_planes
    self.convShortcut = None if self.equal_in_out else nn.Conv2d(
        in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

  def forward(self, x):
    if self.equal_in_out:
      out = self.relu1(self.bn1(x))
      shortcut = x
    else:
      x = self.relu1(self.bn1(x))
      out = x
      shortcut = self.convShortcut(x)
    out = self.relu2(self.bn2(self.conv1(out)))
    if self.drop_rate > 0:
      out = F.dropout(out, p=self.drop_rate, training=self.training)
    return shortcut + self.conv2(out)


class TorchNetworkBlock(nn.Module):

  def __init__(self, n, in_planes, out_planes, stride, drop_rate=0.0):
    super().__init__()
    self.layer = nn.Sequential(*[
        TorchWideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
        for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class TorchWideResNet(_InputNormalization):
  """:class:`saat_jax.models.wide_resnet.WideResNet`. With ``sub_block1=True`` it has TRADES' /
  RobustBench's unused ``sub_block1`` as well (never in an export)."""

  def __init__(self, depth, widen_factor, num_classes=10, sub_block1=False, *, drop_rate=0.0, in_channels=3,
               mean=None, std=None):
    super().__init__()
    self._set_normalization(mean, std)
    n = (depth - 4) // 6
    ch = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
    self.block1 = TorchNetworkBlock(n, ch[0], ch[1], 1, drop_rate)
    if sub_block1:
      self.sub_block1 = TorchNetworkBlock(n, ch[0], ch[1], 1, drop_rate)
    self.block2 = TorchNetworkBlock(n, ch[1], ch[2], 2, drop_rate)
    self.block3 = TorchNetworkBlock(n, ch[2], ch[3], 2, drop_rate)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(ch[3], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.Linear):
        m.bias.data.zero_()

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
    out = self.relu(self.bn1(out))
    return self.fc(out.mean((2, 3)))


class TorchSmallCNN(_InputNormalization):
  """:class:`saat_jax.models.small.SmallCNN`: two bias-free 3x3 convs (stride 1, then 2), each with
  BatchNorm unless ``use_bn=False``, then ``fc1`` (4 ``width`` units) and ``fc2``.

  ``image_size`` (H, W) fixes ``fc1``'s input, ``ceil(H/2) * ceil(W/2) * 2 width``. The feature map is
  flattened channels-last (``permute(0, 2, 3, 1)``), as the Flax model flattens NHWC, so that
  ``fc1.weight`` is the Flax kernel transposed, like every other dense layer.
  """

  def __init__(self, num_classes=10, width=32, use_bn=True, *, in_channels=3, image_size=(32, 32), mean=None,
               std=None):
    super().__init__()
    self._set_normalization(mean, std)
    self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
    if use_bn:
      self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(2 * width)
    h, w = (-(-int(s) // 2) for s in image_size)
    self.fc1 = nn.Linear(h * w * 2 * width, 4 * width)
    self.fc2 = nn.Linear(4 * width, num_classes)

  def forward(self, x):
    out = self.normalize(x)
    for conv, bn in ((self.conv1, getattr(self, "bn1", None)), (self.conv2, getattr(self, "bn2", None))):
      out = conv(out)
      out = F.relu(out if bn is None else bn(out))
    out = out.permute(0, 2, 3, 1).flatten(1)
    return self.fc2(F.relu(self.fc1(out)))


class Normalized(nn.Module):
  """``net((x - mean) / std)`` for a network without its own normalisation: inputs in [0, 1]. Its
  ``state_dict`` keys have the prefix ``model.`` (which :mod:`saat_jax.models.torch_import` strips)."""

  def __init__(self, net: nn.Module, mean, std):
    super().__init__()
    self.model = net
    self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

  def forward(self, x):
    return self.model((x - self.mean) / self.std)


def build_torch_model(model_name: str, num_classes: int = 10, *, normalization: str = "none",
                      image_shape: Sequence[int] = (32, 32, 3), sub_block1: bool = False,
                      **model_kwargs: Any) -> nn.Module:
  """The PyTorch module of ``create_model(model_name, num_classes, normalization=...,
  **model_kwargs)`` on ``image_shape`` (H, W, C) images, with freshly initialised weights.

  ``normalization`` ("none", "cifar10", "cifar100") is applied inside the module, as in the Flax
  model; ``sub_block1`` adds TRADES' unused block to a Wide ResNet. Raises ``ValueError`` for a model,
  normalisation or keyword argument that has no PyTorch counterpart, saying which ones do.
  """
  family, name = model_family(model_name, "export")
  fail = f"cannot export model {model_name!r} to PyTorch"
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"{fail}: unknown normalization {normalization!r}; use one of {sorted(NORMALIZATIONS)}")
  unknown = sorted(set(model_kwargs) - set(MODEL_KWARGS[family]))
  if unknown:
    raise ValueError(f"{fail}: its PyTorch module has no counterpart of the keyword argument(s) {unknown}; "
                     f"{name} takes {list(MODEL_KWARGS[family])}")
  if len(image_shape) != 3:
    raise ValueError(f"{fail}: image_shape must be (H, W, C), got {tuple(image_shape)}")
  mean, std = NORMALIZATIONS[normalization]
  # (x - mean) / std broadcasts a one-channel image to len(mean) channels, in Flax as here
  in_channels = int(image_shape[2]) if mean is None else np.broadcast_shapes((int(image_shape[2]),),
                                                                             (len(mean),))[0]
  common = dict(in_channels=in_channels, mean=mean, std=std)
  if family == "resnet18":
    return TorchResNet18(num_classes, **common, **model_kwargs)
  if family == "preact_resnet18":
    return TorchPreActResNet18(num_classes, **common, **model_kwargs)
  if family == "small_cnn":
    return TorchSmallCNN(num_classes, **model_kwargs, image_size=tuple(image_shape[:2]), **common)
  depth, width = (int(v) for v in name[3:].split("_"))
  return TorchWideResNet(depth, width, num_classes, sub_block1=sub_block1, **common, **model_kwargs)


SPEC_KEYS = ("name", "num_classes", "normalization", "kwargs", "image_shape")


def build(spec: Mapping[str, Any], *, normalize: bool = True) -> nn.Module:
  """The PyTorch module of a model spec, to load an export into with ``strict=True``.

  ``spec`` is the ``model`` entry of the ``.json`` that ``python -m saat_jax.export`` writes beside
  the weights: ``name``, ``num_classes``, ``normalization``, ``kwargs`` (a run's
  :func:`saat_jax.run_state.model_spec`) and ``image_shape`` (H, W, C; default 32x32x3). With
  ``normalize`` (the default) the module normalises its input as the Flax model does, so it takes
  NCHW images in [0, 1]; ``normalize=False`` gives the bare network, which expects normalised
  inputs (for a wrapper of one's own, e.g. RobustBench's). The module is in train mode, as
  ``torch.nn.Module``s start: call ``.eval()`` to use BatchNorm's running statistics.
  """
  if not isinstance(spec, Mapping) or "name" not in spec or "num_classes" not in spec:
    raise ValueError("cannot build the PyTorch module of an export: the spec must be a mapping with at least "
                     f"'name' and 'num_classes' (keys {list(SPEC_KEYS)}; the 'model' entry of the .json "
                     f"beside an export), got {spec!r}")
  unknown = sorted(set(spec) - set(SPEC_KEYS))
  if unknown:
    raise ValueError(f"cannot build the PyTorch module of an export: unknown spec key(s) {unknown}; "
                     f"a spec has {list(SPEC_KEYS)}")
  normalization = spec.get("normalization", "none") if normalize else "none"
  return build_torch_model(spec["name"], int(spec["num_classes"]), normalization=normalization,
                           image_shape=tuple(spec.get("image_shape") or (32, 32, 3)),
                           **dict(spec.get("kwargs") or {}))


__all__ = ["build", "build_torch_model", "Normalized", "TorchResNet18", "TorchPreActResNet18", "TorchWideResNet",
           "TorchSmallCNN", "MODEL_KWARGS", "SPEC_KEYS"]
