"""AWP: weight_perturbation against a literal torch transcription of csdongxian/AWP utils_awp.py
(calc_awp, diff_in_weights, add_into_weights) on the same network, and its invariants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.awp import perturb, weight_perturbation
from saat_jax.losses import cross_entropy, trades_loss
from saat_jax.models import create_model, init_variables


class TinyNet(nn.Module):
  """Conv (with bias) -> BatchNorm -> ReLU -> global average pool -> Dense, NHWC."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    x = nn.relu(x)
    return nn.Dense(4, name="fc")(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def tiny():
  model = TinyNet()
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(6, 5, 5, 2)).astype(np.float32)
  y = rng.integers(0, 4, 6)
  variables = model.init(jax.random.key(0), x, train=False)
  params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.ones_like(p), variables["params"])  # non-zero biases, BN
  batch_stats = variables["batch_stats"]

  def loss_fn(p):  # proxy in train mode: batch statistics, running-stat update discarded
    logits, _ = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(cross_entropy(logits, jnp.asarray(y)))

  return params, loss_fn, x, y


def _torch_tiny(params):
  """The torch twin of TinyNet holding the same weights (OIHW conv kernel, (out, in) linear weight)."""
  import torch
  net = torch.nn.Sequential()
  net.add_module("conv", torch.nn.Conv2d(2, 3, 3, padding=1))
  net.add_module("bn", torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1))
  net.add_module("relu", torch.nn.ReLU())
  net.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
  net.add_module("flat", torch.nn.Flatten())
  net.add_module("fc", torch.nn.Linear(3, 4))
  with torch.no_grad():
    net.conv.weight.copy_(torch.tensor(np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1)))
    net.conv.bias.copy_(torch.tensor(np.asarray(params["conv"]["bias"])))
    net.bn.weight.copy_(torch.tensor(np.asarray(params["bn"]["scale"])))
    net.bn.bias.copy_(torch.tensor(np.asarray(params["bn"]["bias"])))
    net.fc.weight.copy_(torch.tensor(np.asarray(params["fc"]["kernel"]).T))
    net.fc.bias.copy_(torch.tensor(np.asarray(params["fc"]["bias"])))
  return net


def _reference_awp(model, inputs_adv, targets, gamma, lr):
  """utils_awp.py of csdongxian/AWP, line by line: calc_awp, then perturb (add_into_weights)."""
  import copy
  from collections import OrderedDict

  import torch
  import torch.nn.functional as F
  EPS = 1E-20

  def diff_in_weights(model, proxy):
    diff_dict = OrderedDict()
    model_state_dict = model.state_dict()
    proxy_state_dict = proxy.state_dict()
    for (old_k, old_w), (new_k, new_w) in zip(model_state_dict.items(), proxy_state_dict.items()):
      if len(old_w.size()) <= 1:
        continue
      if 'weight' in old_k:
        diff_w = new_w - old_w
        diff_dict[old_k] = old_w.norm() / (diff_w.norm() + EPS) * diff_w
    return diff_dict

  def add_into_weights(model, diff, coeff=1.0):
    names_in_diff = diff.keys()
    with torch.no_grad():
      for name, param in model.named_parameters():
        if name in names_in_diff:
          param.add_(coeff * diff[name])

  proxy = copy.deepcopy(model)
  proxy_optim = torch.optim.SGD(proxy.parameters(), lr=lr)
  proxy.load_state_dict(model.state_dict())
  proxy.train()
  loss = - F.cross_entropy(proxy(inputs_adv), targets)
  proxy_optim.zero_grad()
  loss.backward()
  proxy_optim.step()
  diff = diff_in_weights(model, proxy)
  add_into_weights(model, diff, coeff=1.0 * gamma)
  return diff


@pytest.mark.torch
@pytest.mark.parametrize("gamma, lr", [(5e-3, 0.01), (0.05, 0.1)])
@pytest.mark.slow
def test_weight_perturbation_matches_torch_reference(tiny, gamma, lr):
  torch = pytest.importorskip("torch")
  params, loss_fn, x, y = tiny
  net = _torch_tiny(params)
  # The twin computes the same function (batch statistics in train mode).
  with torch.no_grad():
    net.train()
    out = net(torch.tensor(x.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(float(torch.nn.functional.cross_entropy(out, torch.tensor(y))), float(loss_fn(params)),
                             rtol=1e-5)

  diff = _reference_awp(net, torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y), gamma, lr)
  assert sorted(diff) == ["conv.weight", "fc.weight"]  # biases and BatchNorm are never perturbed

  v = weight_perturbation(loss_fn, params, gamma=gamma, proxy_lr=lr)
  # d = w' - w loses digits to cancellation in float32 (in both), and torch's and XLA's gradients
  # differ in the last bits, so w' may differ by an ulp: compare relative to the perturbation's size.
  for flax_name, torch_name, to_torch in [("conv", "conv.weight", lambda a: a.transpose(3, 2, 0, 1)),
                                          ("fc", "fc.weight", lambda a: a.T)]:
    got = to_torch(np.asarray(v[flax_name]["kernel"]))
    ref = gamma * diff[torch_name].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
  # The perturbed model of the reference (model weights after awp_adversary.perturb).
  new = perturb(params, v)
  sd = {k: t.detach().numpy() for k, t in net.state_dict().items()}
  for flax_name, torch_name, to_torch in [("conv", "conv.weight", lambda a: a.transpose(3, 2, 0, 1)),
                                          ("fc", "fc.weight", lambda a: a.T)]:
    np.testing.assert_allclose(to_torch(np.asarray(new[flax_name]["kernel"])), sd[torch_name],
                               atol=1e-4 * np.abs(np.asarray(v[flax_name]["kernel"])).max() + 1e-7)
  for name, torch_name in [(("conv", "bias"), "conv.bias"), (("bn", "scale"), "bn.weight"),
                           (("bn", "bias"), "bn.bias"), (("fc", "bias"), "fc.bias")]:
    np.testing.assert_array_equal(np.asarray(new[name[0]][name[1]]), sd[torch_name])


@pytest.fixture(scope="module")
def small_cnn():
  """saat_jax's small CNN with BatchNorm, and the TRADES outer loss (TRADES-AWP's calc_awp)."""
  model = create_model("small_cnn", 10, width=4)
  variables = init_variables(model, jax.random.key(1), (8, 8, 1))
  x = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1))
  x_adv = jnp.clip(x + 0.03 * jnp.sign(jax.random.normal(jax.random.key(3), x.shape)), 0.0, 1.0)
  y = jax.random.randint(jax.random.key(4), (8,), 0, 10)

  def loss_fn(p):
    def logits(xx):
      return model.apply({"params": p, "batch_stats": variables["batch_stats"]}, xx, train=True,
                         mutable=["batch_stats"])[0]
    return trades_loss(logits(x), logits(x_adv), y, beta=6.0)

  return variables["params"], jax.jit(loss_fn)


@pytest.mark.slow
def test_weight_perturbation_is_the_rescaled_proxy_step(small_cnn):
  params, loss_fn = small_cnn
  gamma, lr = 5e-3, 0.01
  v = weight_perturbation(loss_fn, params, gamma=gamma, proxy_lr=lr)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(params)
  grads = jax.grad(loss_fn)(params)
  flat_w = jax.tree_util.tree_leaves_with_path(params)
  flat_g = jax.tree_util.tree_leaves(grads)
  flat_v = jax.tree_util.tree_leaves(v)
  n_kernels = 0
  for (path, w), g, vv in zip(flat_w, flat_g, flat_v):
    w, g, vv = np.asarray(w, np.float64), np.asarray(g, np.float64), np.asarray(vv)
    assert vv.shape == w.shape and vv.dtype == np.float32, path
    if w.ndim <= 1:
      np.testing.assert_array_equal(vv, np.zeros_like(vv), err_msg=str(path))
      continue
    n_kernels += 1
    # The rule literally, in float32 as the reference: the proxy's SGD step on -loss, its difference.
    w32, g32 = w.astype(np.float32), g.astype(np.float32)
    d = ((w32 + np.float32(lr) * g32) - w32).astype(np.float64)
    ref = gamma * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-20) * d
    np.testing.assert_allclose(vv, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=str(path))
    # the size of the perturbation is gamma * ||w||, layer by layer
    np.testing.assert_allclose(np.linalg.norm(vv), gamma * np.linalg.norm(w), rtol=1e-5, err_msg=str(path))
  assert n_kernels == 4  # conv1, conv2, fc1, fc2 kernels


@pytest.mark.slow
def test_weight_perturbation_ascends_the_loss(small_cnn):
  params, loss_fn = small_cnn
  v = weight_perturbation(loss_fn, params, gamma=5e-3)
  base = float(loss_fn(params))
  assert float(loss_fn(perturb(params, v))) > base > float(loss_fn(perturb(params, v, -1.0)))


@pytest.mark.slow
def test_gamma_zero_gives_exact_zeros(small_cnn):
  params, loss_fn = small_cnn
  v = weight_perturbation(loss_fn, params, gamma=0.0)
  for leaf in jax.tree_util.tree_leaves(v):
    assert np.all(np.asarray(leaf) == 0.0)
  new = perturb(params, v)
  for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_perturb_then_restore(small_cnn):
  params, loss_fn = small_cnn
  v = weight_perturbation(loss_fn, params, gamma=0.01)
  moved = perturb(params, v)
  back = perturb(moved, v, -1.0)
  changed = 0
  for w, m, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(moved),
                     jax.tree_util.tree_leaves(back)):
    changed += int(np.any(np.asarray(m) != np.asarray(w)))
    np.testing.assert_allclose(np.asarray(b), np.asarray(w), rtol=0, atol=1e-7)
  assert changed == 4


def test_weight_perturbation_jits_with_traced_gamma(small_cnn):
  params, loss_fn = small_cnn
  eager = weight_perturbation(loss_fn, params, gamma=0.01, proxy_lr=0.01)
  jitted = jax.jit(lambda p, g, lr: weight_perturbation(loss_fn, p, gamma=g, proxy_lr=lr))(params, 0.01, 0.01)
  for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(gamma=-0.01), "gamma must be a finite scalar >= 0"),
    (dict(gamma=float("nan")), "gamma must be a finite scalar >= 0"),
    (dict(gamma=0.01, proxy_lr=0.0), "proxy_lr must be a finite scalar > 0"),
    (dict(gamma=0.01, proxy_lr=-0.01), "proxy_lr must be a finite scalar > 0"),
    (dict(gamma=0.01, proxy_lr=float("nan")), "proxy_lr must be a finite scalar > 0"),
])
def test_weight_perturbation_rejects_bad_arguments(kwargs, match):
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match=match):
    weight_perturbation(lambda p: jnp.sum(p["w"] ** 2), params, **kwargs)


def test_perturb_rejects_mismatched_diff():
  with pytest.raises(ValueError, match="structure of params"):
    perturb({"a": jnp.ones(2), "b": jnp.ones((2, 2))}, {"a": jnp.ones(2)})
