"""The PyTorch reference architectures, as the reference code writes them (needs torch).

The modules have the reference code's structure and parameter names, so their ``state_dict``s are
the ones :mod:`saat_jax.models.torch_import` reads:

* ``TorchResNet18``: the AutoAttack examples' ``resnet.py`` ResNet-18 (after kuangliu);
* ``TorchPreActResNet18``: Rice et al. (2020) ``preactresnet.py``, with the final ``bn``;
* ``TorchWideResNet``: TRADES / Rice et al. ``wideresnet.py`` (RobustBench's format), optionally
  with TRADES' unused ``sub_block1``.

They serve the tests (same logits as the imported Flax models) and the benchmarks (the reference
AutoAttack attacks them while the JAX one attacks the imported Flax model). Training never needs
this module: it imports torch at the top, so import it only where torch is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saat_jax.models import NORMALIZATIONS
from saat_jax.models.torch_import import _family


def _add_resnet18_stages(net: nn.Module, block) -> None:
  """``layer1`` .. ``layer4`` of a CIFAR ResNet-18: two ``block``s per stage, 64 to 512 planes."""
  in_planes = 64
  for i, planes in enumerate((64, 128, 256, 512)):
    stride = 1 if i == 0 else 2
    setattr(net, f"layer{i + 1}", nn.Sequential(block(in_planes, planes, stride), block(planes, planes, 1)))
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


class TorchResNet18(nn.Module):

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    _add_resnet18_stages(self, TorchBasicBlock)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.avg_pool2d(out, 4).flatten(1)
    return self.linear(out)


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


class TorchPreActResNet18(nn.Module):

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    _add_resnet18_stages(self, TorchPreActBlock)
    self.bn = nn.BatchNorm2d(512)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = self.conv1(x)
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.relu(self.bn(out))
    out = F.avg_pool2d(out, 4).flatten(1)
    return self.linear(out)


class TorchWideBlock(nn.Module):
  """TRADES / Rice ``wideresnet.py`` BasicBlock: ``convShortcut`` when in != out planes."""

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
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
    return shortcut + self.conv2(out)


class TorchNetworkBlock(nn.Module):

  def __init__(self, n, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        TorchWideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
        for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class TorchWideResNet(nn.Module):
  """With ``sub_block1=True`` it has TRADES' / RobustBench's unused ``sub_block1`` as well."""

  def __init__(self, depth, widen_factor, num_classes=10, sub_block1=False):
    super().__init__()
    n = (depth - 4) // 6
    ch = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
    self.block1 = TorchNetworkBlock(n, ch[0], ch[1], 1)
    if sub_block1:
      self.sub_block1 = TorchNetworkBlock(n, ch[0], ch[1], 1)
    self.block2 = TorchNetworkBlock(n, ch[1], ch[2], 2)
    self.block3 = TorchNetworkBlock(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(ch[3], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.Linear):
        m.bias.data.zero_()

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = self.relu(self.bn1(out))
    out = F.avg_pool2d(out, 8).flatten(1)
    return self.fc(out)


class Normalized(nn.Module):
  """``net((x - mean) / std)``: inputs in [0, 1], as ``create_model(..., normalization=...)``."""

  def __init__(self, net: nn.Module, mean, std):
    super().__init__()
    self.model = net  # ``model.`` prefixed keys, which load_torch_checkpoint strips
    self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

  def forward(self, x):
    return self.model((x - self.mean) / self.std)


def build_torch_model(model_name: str, num_classes: int = 10, *, normalization: str = "none",
                      sub_block1: bool = False) -> nn.Module:
  """The PyTorch module of ``model_name`` (``resnet18``, ``preact_resnet18``, ``wrn<depth>_<width>``).

  ``normalization`` ("none", "cifar10", "cifar100") wraps it in :class:`Normalized`, like the Flax
  model of the same name; ``sub_block1`` adds TRADES' unused block to a Wide ResNet.
  """
  family, name = _family(model_name)
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; use one of {sorted(NORMALIZATIONS)}")
  if family == "resnet18":
    net = TorchResNet18(num_classes)
  elif family == "preact_resnet18":
    net = TorchPreActResNet18(num_classes)
  else:
    depth, width = (int(v) for v in name[3:].split("_"))
    net = TorchWideResNet(depth, width, num_classes, sub_block1=sub_block1)
  mean, std = NORMALIZATIONS[normalization]
  if mean is None:
    return net
  return Normalized(net, mean, std)
