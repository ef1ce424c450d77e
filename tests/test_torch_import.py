"""Importing PyTorch state_dicts: same logits as the PyTorch reference modules, wrappers, errors.

The PyTorch reference architectures (``saat_jax.models.torch_nets``) have the reference
code's structure and parameter names: the AutoAttack examples' ResNet-18, Rice et al.'s PreAct
ResNet-18 and the TRADES / Rice / RobustBench Wide ResNet (with its unused ``sub_block1``). Their BatchNorm running
statistics are set to non-trivial values, so eval mode (``train=False``) is really compared.
"""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.models import count_params, create_model
from saat_jax.models.torch_import import convert_state_dict, load_torch_checkpoint

try:
  import torch
  from torch import nn
except ImportError:
  torch = None

requires_torch = pytest.mark.skipif(
    torch is None, reason="torch is not installed, so the PyTorch reference models cannot be built "
    "(pip install torch==2.13.0, or pip install saat_jax[torch])")
TOL = 1e-4


if torch is not None:
  from saat_jax.models.torch_nets import (Normalized, TorchPreActResNet18, TorchResNet18, TorchSmallCNN,
                                          TorchWideResNet, build_torch_model)


# The Wide ResNets of these tests: one in TRADES' layout with its unused ``sub_block1``, one without.
SUB_BLOCK1 = {"wrn16_2": True, "wrn34_1": False}


def build_torch_net(name, seed=0, num_classes=10):
  """A seeded torch net in eval mode with non-trivial BN affine params and running statistics."""
  torch.manual_seed(seed)
  net = build_torch_model(name, num_classes, sub_block1=SUB_BLOCK1.get(name, False))
  bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    # Running statistics from a train-mode pass (momentum None = plain average), then perturbed,
    # so the activations stay O(1) while eval mode differs from both batch stats and (0, 1).
    for m in bns:
      m.reset_running_stats()
      m.momentum = None
    net.train()
    net(torch.rand(16, 3, 32, 32))
    for m in bns:
      m.momentum = 0.1
      m.weight.uniform_(0.5, 1.5)
      m.bias.uniform_(-0.3, 0.3)
      m.running_mean.add_(0.3 * torch.randn_like(m.running_mean) * m.running_var.sqrt())
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
  net.eval()
  return net


def images(seed, n=3):
  return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype(np.float32)


def torch_logits(net, x_nhwc):
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def max_logit_diff(net, model, variables, x):
  ref = torch_logits(net, x)
  out = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
  assert out.shape == ref.shape
  return float(np.abs(out - ref).max()), ref


def expected_tree(name, num_classes=10):
  model = create_model(name, num_classes)
  x = jnp.zeros((1, 32, 32, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def assert_same_tree(variables, expected):
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(dict(expected))
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(dict(expected))):
    assert a.shape == b.shape and a.dtype == np.float32


def numpy_state_dict(net):
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def torch_nets():
  if torch is None:
    pytest.skip("torch is not installed (pip install torch==2.13.0)")
  return {}


def get_net(cache, name):
  if name not in cache:
    cache[name] = build_torch_net(name)
  return cache[name]


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn16_2", "wrn34_1"])
@pytest.mark.slow
def test_logits_match_torch(name, torch_nets, tmp_path):
  net = get_net(torch_nets, name)
  sd = net.state_dict()
  bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
  assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # eval mode matters
  plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pth"
  torch.save(sd, plain)
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 7}, wrapped)

  model, variables = load_torch_checkpoint(str(plain), name)
  assert_same_tree(variables, expected_tree(name))
  diff, ref = max_logit_diff(net, model, variables, images(1))
  print(f"{name}: max |logit difference| = {diff:.3g} (max |logit| {np.abs(ref).max():.3g})")
  assert diff < TOL
  assert np.abs(ref).max() > 0.1  # the comparison is not vacuous

  # DataParallel prefixes inside a {'state_dict': ...} checkpoint give the same variables.
  model2, variables2 = load_torch_checkpoint(str(wrapped), name)
  assert type(model2) is type(model)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables2, variables)


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_other_wrappers_numpy_values_and_normalization(torch_nets, tmp_path):
  net = get_net(torch_nets, "resnet18")
  sd = net.state_dict()
  ref = convert_state_dict(sd, "resnet18")
  for ckpt in ({"model_state_dict": sd, "optimizer": {}}, {"model": sd}, numpy_state_dict(net),
               {"_orig_mod." + k: v for k, v in sd.items()}):
    jax.tree_util.tree_map(np.testing.assert_array_equal, convert_state_dict(ckpt, "resnet18"), ref)
  # normalization is applied inside the Flax model: the same logits as torch on normalised inputs
  path = tmp_path / "m.pt"
  torch.save({"model": sd}, path)
  model, variables = load_torch_checkpoint(str(path), "ResNet18", normalization="cifar10")
  from saat_jax.models.layers import CIFAR10_MEAN, CIFAR10_STD
  x = images(2, 2)
  normed = (x - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
  out = np.asarray(model.apply(variables, x, train=False))
  assert np.abs(out - torch_logits(net, normed)).max() < TOL


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_build_torch_model_normalized_round_trip(tmp_path):
  """A normalised torch model saved whole loads into the Flax model with the same normalisation:
  build_torch_model's (normalising inside, bare keys) and a Normalized wrapper's (``model.`` keys)."""
  from saat_jax.models.layers import CIFAR10_MEAN, CIFAR10_STD

  torch.manual_seed(3)
  net = build_torch_model("preact_resnet18", normalization="cifar10")
  assert isinstance(net, TorchPreActResNet18)
  with torch.no_grad():  # leave the trivial running statistics, so eval mode is a real check
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  net.eval()
  bare = TorchPreActResNet18()
  bare.load_state_dict(net.state_dict(), strict=True)  # mean/std are not saved
  wrapped = Normalized(bare, CIFAR10_MEAN, CIFAR10_STD).eval()
  assert all(k.startswith("model.") for k in wrapped.state_dict())
  x = images(4, 2)
  np.testing.assert_allclose(torch_logits(wrapped, x), torch_logits(net, x), atol=1e-6)
  for i, module in enumerate((net, wrapped)):
    path = tmp_path / f"normed{i}.pt"
    torch.save(module.state_dict(), path)
    model, variables = load_torch_checkpoint(str(path), "preact_resnet18", normalization="cifar10")
    diff, ref = max_logit_diff(module, model, variables, x)
    assert diff < TOL and np.abs(ref).max() > 0.01  # default init: logits of order 0.1
  # without the normalisation the logits differ: the module really normalises
  plain, plain_vars = load_torch_checkpoint(str(path), "preact_resnet18")
  assert max_logit_diff(net, plain, plain_vars, x)[0] > 10 * TOL
  assert isinstance(build_torch_model("WRN-16-2", 100, sub_block1=True), TorchWideResNet)
  assert build_torch_model("wrn16_2", 100).fc.out_features == 100
  with pytest.raises(ValueError, match="normalization"):
    build_torch_model("resnet18", normalization="imagenet")
  assert isinstance(build_torch_model("small_cnn", width=4), TorchSmallCNN)  # exports only: no import of it
  with pytest.raises(ValueError, match="cannot export model 'vgg16' to PyTorch; supported: resnet18"):
    build_torch_model("vgg16")


@requires_torch
@pytest.mark.torch
def test_wrn_robustbench_bias_free_classifier_and_num_classes(torch_nets):
  net = get_net(torch_nets, "wrn16_2")
  sd = {k: v for k, v in net.state_dict().items() if k != "fc.bias"}  # WideResNet(bias_last=False)
  variables = convert_state_dict({"state_dict": sd}, "wrn16_2")
  np.testing.assert_array_equal(variables["params"]["fc"]["bias"], np.zeros(10, np.float32))
  # num_classes is read from the final layer; a CIFAR-100 head converts to a 100-way model
  torch.manual_seed(0)
  wide100 = TorchWideResNet(16, 2, num_classes=100)
  v100 = convert_state_dict(wide100.state_dict(), "wrn16_2")
  assert_same_tree(v100, expected_tree("wrn16_2", 100))


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_wrn34_10_shapes_and_parameter_count():
  """WRN-34-10 in TRADES / RobustBench layout, from shapes only (a meta-device torch module)."""
  with torch.device("meta"):
    net = TorchWideResNet(34, 10, 10, sub_block1=True)
  sd = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in net.state_dict().items()}
  variables = convert_state_dict({"state_dict": {"module." + k: v for k, v in sd.items()}},
                                 "wrn34_10")
  assert_same_tree(variables, expected_tree("wrn34_10"))
  assert count_params(variables["params"]) == 46_160_474
  used = sum(v.numel() for k, v in net.named_parameters() if not k.startswith("sub_block1."))
  assert used == 46_160_474


def pyautoattack_examples_dir():
  spec = importlib.util.find_spec("pyautoattack")
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    d = os.path.join(root, "examples")
    if os.path.isfile(os.path.join(d, "model_test.pt")):
      return d
  return None


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_pyautoattack_pretrained_resnet18():
  d = pyautoattack_examples_dir()
  if d is None:
    pytest.skip("pyautoattack (with examples/model_test.pt) is not installed: "
                "pip install pyautoattack==0.2.0")
  ckpt = os.path.join(d, "model_test.pt")
  sd = torch.load(ckpt, map_location="cpu", weights_only=True)
  # the reference module shipped beside the weights, else the rebuilt one (same names, checked)
  ref_file = os.path.join(d, "resnet.py")
  if os.path.isfile(ref_file):
    spec = importlib.util.spec_from_file_location("_pyautoattack_examples_resnet", ref_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.ResNet18()
  else:
    net = TorchResNet18()
  assert set(TorchResNet18().state_dict()) == set(sd)
  net.load_state_dict(sd)
  net.eval()

  model, variables = load_torch_checkpoint(ckpt, "resnet18")
  x = images(3, 4)
  x[0] = 0.5  # a flat grey image as well as noise
  diff, ref = max_logit_diff(net, model, variables, x)
  print(f"pyautoattack model_test.pt (resnet18): max |logit difference| = {diff:.3g}")
  assert diff < TOL
  pred = np.asarray(model.apply(variables, x, train=False)).argmax(-1)
  np.testing.assert_array_equal(pred, ref.argmax(-1))


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("source,target,guess", [
    ("preact_resnet18", "resnet18", "looks like a preact_resnet18, not a resnet18"),
    ("resnet18", "preact_resnet18", "looks like a resnet18, not a preact_resnet18"),
    ("wrn16_2", "wrn34_10", "looks like a wrn16_2, not a wrn34_10"),
    ("resnet18", "wrn16_2", "looks like a resnet18, not a wrn16_2"),
])
def test_wrong_architecture_is_named(source, target, guess, torch_nets, tmp_path):
  path = tmp_path / f"{source}.pt"
  sd = get_net(torch_nets, source).state_dict()
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
  with pytest.raises(ValueError, match="mismatch") as info:
    load_torch_checkpoint(str(path), target)
  msg = str(info.value)
  assert guess in msg and str(path) in msg
  assert "missing key" in msg or "unexpected key" in msg or "shape mismatch" in msg


@requires_torch
@pytest.mark.torch
def test_shape_mismatch_missing_and_unexpected_keys(torch_nets):
  sd = dict(get_net(torch_nets, "preact_resnet18").state_dict())
  pattern = r"shape mismatch.*linear\.weight.*\(10, 512\).*\(100, 512\)"
  with pytest.raises(ValueError, match=pattern):
    convert_state_dict(sd, "preact_resnet18", num_classes=100)
  broken = dict(sd)
  del broken["layer3.1.conv2.weight"]
  broken["layer5.0.conv1.weight"] = sd["conv1.weight"]
  with pytest.raises(ValueError, match="missing key.*layer3.1.conv2.weight") as info:
    convert_state_dict(broken, "preact_resnet18")
  assert "unexpected key(s): layer5.0.conv1.weight" in str(info.value)


def test_unknown_model_and_missing_file(tmp_path):
  for name in ("vgg16", "small_cnn"):
    with pytest.raises(ValueError, match="no PyTorch import.*resnet18"):
      convert_state_dict({}, name)
  with pytest.raises(ValueError, match="6n\\+4"):
    convert_state_dict({}, "wrn33_10")
  missing = tmp_path / "nowhere" / "model.pt"
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_torch_checkpoint(str(missing), "resnet18")


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
  path = tmp_path / "model.pt"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
    load_torch_checkpoint(str(path), "resnet18")


@requires_torch
@pytest.mark.torch
def test_npz_state_dict_loads_without_torch(torch_nets, tmp_path, monkeypatch):
  """A .npz of a state_dict's arrays gives the same model as the .pt, with torch unimportable."""
  net = get_net(torch_nets, "preact_resnet18")
  expected = convert_state_dict(net.state_dict(), "preact_resnet18")
  path = tmp_path / "weights.npz"
  np.savez(path, **{"module." + k: v for k, v in numpy_state_dict(net).items()})
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  model, variables = load_torch_checkpoint(str(path), "preact_resnet18", normalization="cifar10")
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)
  assert model.num_classes == 10
  with pytest.raises(ValueError, match=r"\.npz of state_dict arrays"):
    load_torch_checkpoint(str(bad), "preact_resnet18")


@requires_torch
@pytest.mark.torch
def test_file_that_is_not_a_state_dict(tmp_path):
  path = tmp_path / "list.pt"
  torch.save([1, 2, 3], path)
  with pytest.raises(ValueError, match="state_dict"):
    load_torch_checkpoint(str(path), "resnet18")
