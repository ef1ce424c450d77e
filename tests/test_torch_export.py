"""Export to PyTorch: JAX -> state_dict -> JAX is exact, and the exported reference network gives
the Flax model's logits (torch eval mode vs Flax train=False)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.models import create_model, init_variables
from saat_jax.models.torch_export import export_state_dict, save_state_dict
from saat_jax.models.torch_import import convert_state_dict, read_state_dict


def _random_variables(name, num_classes=10):
  model = create_model(name, num_classes)
  v = init_variables(model, jax.random.key(0), (32, 32, 3))
  # non-trivial BatchNorm statistics and affine parameters, so a mixed-up leaf shows
  leaves, tree = jax.tree_util.tree_flatten(v)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [l + 0.1 * jax.random.uniform(k, l.shape) for l, k in zip(leaves, keys)]
  return model, jax.tree_util.tree_unflatten(tree, leaves)


@pytest.mark.parametrize("name,num_classes", [("preact_resnet18", 10), ("resnet18", 100), ("wrn16_2", 10)])
def test_round_trip_is_exact(name, num_classes):
  _, v = _random_variables(name, num_classes)
  sd = export_state_dict(v, name)
  back = convert_state_dict(sd, name)
  for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sum(k.endswith("num_batches_tracked") for k in sd) == sum(k.endswith("running_var") for k in sd) > 0


@pytest.mark.torch
@pytest.mark.parametrize("name,normalization", [("preact_resnet18", "cifar10"), ("wrn16_2", "cifar100"),
                                                ("resnet18", "none")])
def test_exported_torch_model_gives_the_flax_logits(tmp_path, name, normalization):
  torch = pytest.importorskip("torch")
  from saat_jax.testing.torch_reference import build_torch_model

  _, v = _random_variables(name)
  model = create_model(name, 10, normalization=normalization)
  path = save_state_dict(export_state_dict(v, name), str(tmp_path / "m.pt"))
  net = build_torch_model(name, 10, normalization=normalization)
  inner = net.model if hasattr(net, "model") else net
  inner.load_state_dict(torch.load(path, weights_only=True), strict=True)
  net.eval()
  x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(model.apply(v, jnp.asarray(x), train=False))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  # and read back through the importer (the .pt path and the .npz path agree)
  npz = save_state_dict(export_state_dict(v, name), str(tmp_path / "m.npz"))
  for k, a in read_state_dict(npz).items():
    np.testing.assert_array_equal(a, read_state_dict(path)[k])


def test_bad_export_requests_are_named():
  _, v = _random_variables("preact_resnet18")
  with pytest.raises(ValueError, match="no PyTorch import for model 'small_cnn'"):
    export_state_dict(v, "small_cnn")
  with pytest.raises(ValueError, match="not a resnet18|do not fit resnet18"):
    export_state_dict(v, "resnet18")
  with pytest.raises(ValueError, match="expects Flax variables"):
    export_state_dict([1, 2], "preact_resnet18")


def test_export_cli_refuses_a_model_without_a_reference(tmp_path, capsys):
  import sys
  from pathlib import Path
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from configs import saat_digits
  from saat_jax.export import main
  from saat_jax.train import train_and_evaluate

  c = saat_digits.get_config()
  c.progress, c.num_epochs, c.data.num_train, c.eval.num_test = False, 1, 64, 64
  c.eval.batch_size, c.eval.train_subset = 64, 0
  train_and_evaluate(c, str(tmp_path / "run"))
  assert main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "x.npz")]) == 2
  assert "small_cnn" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
