"""Model architectures: parameter counts of the reference networks, shapes, BatchNorm modes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.models import count_params, create_model, init_variables


def n_params(name, num_classes=10, shape=(32, 32, 3), **kw):
  model = create_model(name, num_classes, **kw)
  v = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, *shape)), train=False), jax.random.key(0))
  return count_params(v["params"])


@pytest.mark.parametrize("name,classes,expected", [
    ("preact_resnet18", 10, 11_172_170),   # Rice et al. PreActResNet18 (with its final BN): 11.17M
    ("resnet18", 10, 11_173_962),          # kuangliu / AutoAttack examples ResNet-18
    ("wrn34_10", 10, 46_160_474),          # WRN-34-10: 46.16M
    ("wrn34_1", 10, 466_714),
    ("preact_resnet18", 100, 11_218_340),  # CIFAR-100 head: 512 * 90 more weights + 90 biases
])
def test_reference_parameter_counts(name, classes, expected):
  assert n_params(name, classes) == expected


@pytest.mark.slow
def test_forward_shapes_and_bn_modes():
  model = create_model("preact_resnet18", 10, normalization="cifar10")
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
  v = init_variables(model, jax.random.key(1), (32, 32, 3))
  assert set(v) == {"params", "batch_stats"}
  logits = model.apply(v, x, train=False)
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
  # train mode uses batch statistics and returns updated running statistics
  logits_t, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(logits_t, logits)
  before = jax.tree_util.tree_leaves(v["batch_stats"])
  after = jax.tree_util.tree_leaves(upd["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.slow
def test_normalization_inside_model_equals_normalized_input():
  from saat_jax.models.layers import CIFAR10_MEAN, CIFAR10_STD
  plain = create_model("small_cnn", 10, use_bn=False)
  normed = create_model("small_cnn", 10, use_bn=False, normalization="cifar10")
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  params = plain.init(jax.random.key(1), x)["params"]
  a = normed.apply({"params": params}, x)
  b = plain.apply({"params": params}, (x - jnp.array(CIFAR10_MEAN)) / jnp.array(CIFAR10_STD))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pytorch_default_initialisation_bounds():
  model = create_model("small_cnn", 10, use_bn=False)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  k = params["conv2"]["kernel"]  # fan_in = 3*3*32
  bound = 1 / np.sqrt(3 * 3 * 32)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
  b = params["fc2"]["bias"]
  assert np.abs(b).max() <= 1 / np.sqrt(128)


@pytest.mark.parametrize("name", ["resnet50", "wrn35_10", "vit"])
def test_unknown_model_name(name):
  with pytest.raises(ValueError, match="unknown model"):
    create_model(name, 10)
