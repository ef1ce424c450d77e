"""Export to PyTorch: every model name exports to the module ``torch_nets.build`` makes of its spec
(``strict=True``, the Flax model's logits in eval mode), JAX -> state_dict -> JAX is exact for the
reference architectures, the CLI on a real run writes what the README's code loads, and every
error says "export" and what to do."""

import json
import re
import shlex
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.models import create_model
from saat_jax.models.torch_export import export_state_dict, save_state_dict
from saat_jax.models.torch_import import convert_state_dict, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import saat_digits_config

try:
  import torch
except ImportError:
  torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install torch==2.13.0)")
SUPPORTED = "resnet18, preact_resnet18, wrn<depth>_<width> (e.g. wrn34_10), small_cnn"

# Every model name (create_model), each with the spec of a run: (name, num_classes, normalization,
# image_shape, kwargs). Tiny instances where the name allows; ResNet-18s at full size (about 5 s each).
MODELS = [
    ("preact_resnet18", 10, "cifar10", (32, 32, 3), {}),
    ("resnet18", 100, "none", (32, 32, 3), {}),
    ("preact_resnet18", 10, "none", (16, 16, 3), {"num_blocks": [1, 1, 1, 1]}),  # global pooling off 32x32
    ("wrn16_2", 10, "cifar100", (32, 32, 3), {}),
    ("wrn10_1", 7, "cifar10", (32, 32, 3), {"drop_rate": 0.3}),  # dropout: the identity in eval mode
    ("small_cnn", 10, "cifar10", (32, 32, 3), {"width": 4}),
    ("small_cnn", 10, "none", (8, 8, 1), {"width": 4, "use_bn": False}),  # the digits network, no BN
    ("small_cnn", 3, "cifar10", (7, 9, 1), {"width": 3}),  # odd, non-square; grey broadcast to 3 channels
]
IDS = [f"{m[0]}-{m[2]}-{'x'.join(map(str, m[3]))}" + ("-" + ",".join(m[4]) if m[4] else "") for m in MODELS]


def random_variables(name, num_classes, normalization, image_shape, kwargs, seed=0):
  """Flax variables of the model with random weights of the scale of its init and non-trivial
  BatchNorm affine parameters and running statistics (so a swapped or transposed leaf shows)."""
  model = create_model(name, num_classes, normalization=normalization, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return rng.normal(0, np.sqrt(2 / fan_in), s.shape)
    return {"scale": lambda: rng.uniform(0.5, 1.5, s.shape), "bias": lambda: rng.uniform(-0.3, 0.3, s.shape),
            "mean": lambda: rng.normal(0, 0.3, s.shape), "var": lambda: rng.uniform(0.5, 2.0, s.shape)}[leaf]()

  variables = jax.tree_util.tree_map_with_path(lambda p, s: draw(p, s).astype(np.float32), dict(shapes))
  return model, variables


def spec_of(name, num_classes, normalization, image_shape, kwargs):
  return {"name": name, "num_classes": num_classes, "normalization": normalization, "kwargs": kwargs,
          "image_shape": list(image_shape)}


def torch_logits(net, x_nhwc):
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def flax_logits(model, variables, x):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_every_model_exports_to_its_torch_module(case, tmp_path):
  """Random Flax variables -> .pt -> build(spec) -> load_state_dict(strict=True) -> the Flax logits."""
  from saat_jax.models.torch_nets import build

  name, num_classes, normalization, image_shape, kwargs = case
  model, variables = random_variables(*case)
  sd = export_state_dict(variables, name, image_shape=image_shape, normalization=normalization, **kwargs)
  path = save_state_dict(sd, str(tmp_path / "m.pt"))
  net = build(spec_of(*case))
  net.load_state_dict(torch.load(path, weights_only=True), strict=True)
  net.eval()
  x = np.random.default_rng(1).uniform(size=(4, *image_shape)).astype(np.float32)
  ref = torch_logits(net, x)
  got = flax_logits(model, variables, x)
  assert ref.shape == (4, num_classes)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  assert np.abs(ref).max() > 0.1 and np.ptp(ref, axis=0).max() > 0.01  # not vacuous: logits vary by image
  # the .npz (written without torch) holds the same arrays
  npz = save_state_dict(sd, str(tmp_path / "m.npz"))
  from_pt = read_state_dict(path)
  assert sorted(read_state_dict(npz)) == sorted(from_pt)
  for k, a in read_state_dict(npz).items():
    np.testing.assert_array_equal(a, from_pt[k].numpy())


@pytest.mark.parametrize("name,num_classes", [("preact_resnet18", 10), ("resnet18", 100), ("wrn16_2", 10)])
def test_round_trip_is_exact(name, num_classes):
  _, v = random_variables(name, num_classes, "none", (32, 32, 3), {})
  sd = export_state_dict(v, name)
  back = convert_state_dict(sd, name)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(v)
  for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sum(k.endswith("num_batches_tracked") for k in sd) == sum(k.endswith("running_var") for k in sd) > 0


@requires_torch
@pytest.mark.torch
def test_build_normalizes_inside_and_the_bare_network_takes_normalized_inputs():
  from saat_jax.models import NORMALIZATIONS
  from saat_jax.models.torch_nets import build

  case = ("small_cnn", 10, "cifar100", (8, 8, 3), {"width": 4})
  _, variables = random_variables(*case)
  sd = {k: torch.from_numpy(v) for k, v in export_state_dict(variables, "small_cnn", width=4,
                                                              image_shape=(8, 8, 3)).items()}
  net, bare = build(spec_of(*case)), build(spec_of(*case), normalize=False)
  for m in (net, bare):
    m.load_state_dict(sd, strict=True)
    m.eval()
  assert set(net.state_dict()) == set(sd)  # mean and std are buffers outside the state_dict
  mean, std = (np.float32(v) for v in NORMALIZATIONS["cifar100"])
  x = np.random.default_rng(2).uniform(size=(3, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(torch_logits(net, x), torch_logits(bare, (x - mean) / std), atol=1e-5)
  assert np.abs(torch_logits(net, x) - torch_logits(bare, x)).max() > 1e-2


def test_export_errors_say_export_and_what_to_do():
  _, preact = random_variables("preact_resnet18", 10, "none", (32, 32, 3), {})
  with pytest.raises(ValueError) as info:
    export_state_dict(preact, "vgg16")
  assert str(info.value) == f"cannot export model 'vgg16' to PyTorch; supported: {SUPPORTED}"
  with pytest.raises(ValueError, match=r"^cannot export model 'wrn33_10' to PyTorch: a Wide ResNet's depth must "
                     r"be 6n\+4"):
    export_state_dict(preact, "wrn33_10")
  with pytest.raises(ValueError, match="^cannot export these variables as a resnet18: they have no final layer"):
    export_state_dict({"params": {"fc": {}}}, "resnet18")
  with pytest.raises(ValueError, match=r"^cannot export these variables as a resnet18 with 10 classes: missing "
                     r"\[.*\], unexpected \[.*\]; export them with the model name and kwargs"):
    export_state_dict(preact, "resnet18")
  with pytest.raises(ValueError, match="^cannot export these variables as a preact_resnet18: export_state_dict "
                     "expects Flax variables"):
    export_state_dict([1, 2], "preact_resnet18")
  _, cnn = random_variables("small_cnn", 10, "none", (8, 8, 1), {"width": 4})
  with pytest.raises(ValueError, match=r"^cannot export these variables as a small_cnn with 10 classes, width=8 on "
                     r"\(8, 8, 1\) images: batch_stats/bn1/mean has shape \(4,\), which does not fit "
                     r"bn1.running_mean \(8,\); export them with the model name and kwargs they were trained with"):
    export_state_dict(cnn, "small_cnn", image_shape=(8, 8, 1), width=8)
  with pytest.raises(ValueError, match=r"on \(32, 32, 3\) images: params/conv1/kernel.*and the image shape"):
    export_state_dict(cnn, "small_cnn", width=4)  # the default image shape is CIFAR's
  # the import side keeps its own wording: small_cnn exports, but has no PyTorch original to import
  with pytest.raises(ValueError, match="^no PyTorch import for model 'small_cnn': the small CNN has no PyTorch "
                     "original"):
    convert_state_dict({}, "small_cnn")


@requires_torch
@pytest.mark.torch
def test_build_errors_say_export_and_what_to_do():
  from saat_jax.models.torch_nets import build, build_torch_model

  with pytest.raises(ValueError) as info:
    build({"name": "small_cnn", "num_classes": 10, "kwargs": {"width": 4, "dropout": 0.5}})
  assert str(info.value) == ("cannot export model 'small_cnn' to PyTorch: its PyTorch module has no counterpart "
                             "of the keyword argument(s) ['dropout']; small_cnn takes ['width', 'use_bn']")
  with pytest.raises(ValueError, match="^cannot export model 'resnet18' to PyTorch: unknown normalization 'imagenet'"):
    build_torch_model("resnet18", normalization="imagenet")
  with pytest.raises(ValueError, match=f"^cannot export model 'vit' to PyTorch; supported: {re.escape(SUPPORTED)}$"):
    build({"name": "vit", "num_classes": 10})
  with pytest.raises(ValueError, match="^cannot build the PyTorch module of an export: the spec must be a mapping "
                     "with at least 'name' and 'num_classes'"):
    build({"name": "resnet18"})
  with pytest.raises(ValueError, match=r"unknown spec key\(s\) \['dtype'\]"):
    build({"name": "resnet18", "num_classes": 10, "dtype": "bfloat16"})


# ------------------------------------------------------------------------------------------------
# The CLI on a real run: small_cnn trained on digits, in runs/saat as the README says
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """``(directory holding runs/saat, work dir)`` of a 1-epoch SAAT small-CNN run on digits."""
  from saat_jax.train import train_and_evaluate

  root = tmp_path_factory.mktemp("export")
  c = saat_digits_config()
  c.progress, c.num_epochs, c.data.num_train, c.eval.num_test = False, 1, 64, 64
  c.eval.batch_size, c.eval.train_subset = 64, 0
  train_and_evaluate(c, str(root / "runs" / "saat"))
  return root, root / "runs" / "saat"


def readme_export_paragraph():
  """The README's export command and the code block after it."""
  text = (ROOT / "README.md").read_text()
  start = text.index("A trained model goes the other way too")
  command = " ".join(re.search(r"`(python -m saat_jax\.export[^`]*)`", text[start:]).group(1).split())
  code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
  return command, code


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_readme_command_and_code_load_a_real_export(digits_run, monkeypatch, capsys):
  from saat_jax.export import main

  root, _ = digits_run
  command, code = readme_export_paragraph()
  assert command.startswith("python -m saat_jax.export ") and "strict=True" in code and "assert_allclose" in code
  monkeypatch.chdir(root)
  assert main(shlex.split(command)[3:]) == 0
  out = capsys.readouterr().out
  assert "written saat_best.pt and saat_best.pt.json: small_cnn, 10 classes" in out
  record = json.loads((root / "saat_best.pt.json").read_text())
  assert record["model"] == {"name": "small_cnn", "num_classes": 10, "normalization": "none", "kwargs": {},
                             "image_shape": [8, 8, 1]}
  assert record["file"] == "saat_best.pt" and record["source"]["checkpoint"] == "best"
  assert record["load"] in out  # the printed PyTorch code is the recorded one
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
  assert namespace["logits"].shape == (8, 10)
  exec(compile(record["load"], "saat_best.pt.json", "exec"), namespace)  # and the recorded snippet
  np.testing.assert_allclose(torch_logits(namespace["net"], namespace["x"]), namespace["logits"], atol=1e-6)


@requires_torch
@pytest.mark.torch
@pytest.mark.slow
def test_load_torch_from_pt_npz_and_workdir(digits_run, tmp_path, capsys, monkeypatch):
  from saat_jax.export import load_torch, main
  from saat_jax.run_state import restore_for_eval

  _, workdir = digits_run
  model, variables, meta, _ = restore_for_eval(str(workdir), "last", "raw")
  x = np.random.default_rng(3).uniform(size=(5, *meta["image_shape"])).astype(np.float32)
  want = flax_logits(model, variables, x)
  assert main(["--workdir", str(workdir), "--checkpoint", "last", "--out", str(tmp_path / "m.npz")]) == 0
  assert "np.load('m.npz')" in capsys.readouterr().out
  namespace = {}
  monkeypatch.chdir(tmp_path)
  exec(json.loads((tmp_path / "m.npz.json").read_text())["load"], namespace)  # noqa: S102 - the recorded code
  np.testing.assert_allclose(torch_logits(namespace["net"], x), want, atol=1e-4)
  for source in (tmp_path / "m.npz", workdir):
    net = load_torch(str(source), checkpoint="last")
    assert not net.training
    np.testing.assert_allclose(torch_logits(net, x), want, atol=1e-4)
  with pytest.raises(FileNotFoundError, match=r"its spec '.*orphan\.pt\.json' is missing \(python -m "
                     r"saat_jax\.export writes both\)"):
    (tmp_path / "orphan.pt").write_bytes(b"x")
    load_torch(str(tmp_path / "orphan.pt"))


@pytest.mark.slow
def test_cli_errors_are_one_line_and_write_nothing(digits_run, tmp_path, capsys, monkeypatch):
  from saat_jax.export import main

  _, workdir = digits_run
  cases = [
      (["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a.npz")],
       rf"error: cannot export {re.escape(str(tmp_path / 'nowhere'))} \(best checkpoint, raw weights\): no 'best' "
       "checkpoint in"),
      (["--workdir", str(workdir), "--weights", "ema", "--out", str(tmp_path / "a.npz")],
       r"error: cannot export .* trained without an EMA of the weights .* \(--weights raw\)"),
      (["--workdir", str(workdir), "--out", str(tmp_path / "missing" / "a.npz")],
       r"error: cannot export to '.*a\.npz': the directory '.*missing' does not exist \(create it first\)"),
  ]
  for argv, pattern in cases:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(pattern, err), err
  assert list(tmp_path.iterdir()) == []
  # without torch the export modules import; a .pt is refused before the checkpoint is read, a .npz
  # (and its spec) is written
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  for name in ("saat_jax.export", "saat_jax.models.torch_export"):
    monkeypatch.delitem(sys.modules, name)
  import importlib
  main = importlib.import_module("saat_jax.export").main
  assert main(["--workdir", str(workdir), "--out", str(tmp_path / "a.pt")]) == 2
  assert re.match(r"error: cannot export to '.*a\.pt': a PyTorch file needs torch \(pip install torch==2\.13\.0, "
                  r"or pip install saat_jax\[torch\]\); or give a path ending in \.npz\n$", capsys.readouterr().err)
  assert list(tmp_path.iterdir()) == []
  assert main(["--workdir", str(workdir), "--out", str(tmp_path / "a.npz")]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "a.npz.json"]
  assert json.loads((tmp_path / "a.npz.json").read_text())["model"]["name"] == "small_cnn"
