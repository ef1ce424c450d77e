"""TRADES: the KL term and loss against a literal torch transcription of yaodongyu/TRADES trades.py,
and the TRADES inner maximisation (trades_pgd) against a slow per-example loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.attack import trades_pgd
from saat_jax.losses import cross_entropy, kl_divergence, trades_loss

B, C = 7, 10


def _logits(seed, scale=4.0):
  rng = np.random.default_rng(seed)
  nat = (scale * rng.standard_normal((B, C))).astype(np.float32)
  adv = (nat + 2.0 * rng.standard_normal((B, C))).astype(np.float32)
  labels = rng.integers(0, C, B)
  return nat, adv, labels


def _torch_kl_per_example(nat, adv):
  """criterion_kl = KLDivLoss(size_average=False) of trades.py, one example at a time."""
  import torch
  import torch.nn.functional as F
  criterion_kl = torch.nn.KLDivLoss(reduction="sum")
  return torch.stack([criterion_kl(F.log_softmax(adv[i:i + 1], dim=1), F.softmax(nat[i:i + 1], dim=1))
                      for i in range(nat.shape[0])])


def _torch_trades_loss(nat, adv, y, beta):
  """The last lines of trades_loss in trades.py, on given logits."""
  import torch
  import torch.nn.functional as F
  criterion_kl = torch.nn.KLDivLoss(reduction="sum")
  batch_size = len(nat)
  loss_natural = F.cross_entropy(nat, y)
  loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(adv, dim=1), F.softmax(nat, dim=1))
  return loss_natural + beta * loss_robust


@pytest.mark.torch
def test_kl_divergence_matches_torch_value_and_gradients():
  torch = pytest.importorskip("torch")
  nat, adv, _ = _logits(0)
  tn = torch.tensor(nat, dtype=torch.float64, requires_grad=True)
  ta = torch.tensor(adv, dtype=torch.float64, requires_grad=True)
  ref = _torch_kl_per_example(tn, ta)
  # A weighted sum, so that a per-example mix-up would show in the gradients.
  w = np.linspace(0.5, 2.0, B)
  (ref * torch.tensor(w)).sum().backward()

  got = kl_divergence(jnp.asarray(nat), jnp.asarray(adv))
  assert got.shape == (B,)
  np.testing.assert_allclose(np.asarray(got), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
  g_nat, g_adv = jax.grad(lambda a, b: jnp.sum(kl_divergence(a, b) * w), argnums=(0, 1))(nat, adv)
  np.testing.assert_allclose(np.asarray(g_nat), tn.grad.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_adv), ta.grad.numpy(), atol=1e-5)
  # Both gradients are non-trivial: the natural target is not detached.
  assert np.abs(np.asarray(g_nat)).max() > 1e-2


def test_kl_divergence_is_safe_for_extreme_logits():
  # A softmax that underflows to exactly 0 must not give 0 * log 0 = NaN.
  nat = jnp.array([[200.0, -200.0, 0.0]])
  adv = jnp.array([[-200.0, 200.0, 0.0]])
  kl, grads = jax.value_and_grad(lambda a, b: kl_divergence(a, b)[0], argnums=(0, 1))(nat, adv)
  assert np.isfinite(float(kl)) and float(kl) == pytest.approx(400.0, rel=1e-6)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert float(kl_divergence(nat, nat)[0]) == 0.0


@pytest.mark.torch
@pytest.mark.parametrize("beta", [6.0, 1.0])
def test_trades_loss_matches_torch_value_and_gradients(beta):
  torch = pytest.importorskip("torch")
  nat, adv, labels = _logits(1)
  tn = torch.tensor(nat, dtype=torch.float64, requires_grad=True)
  ta = torch.tensor(adv, dtype=torch.float64, requires_grad=True)
  ref = _torch_trades_loss(tn, ta, torch.tensor(labels), beta)
  ref.backward()

  value, (g_nat, g_adv) = jax.value_and_grad(
      lambda a, b: trades_loss(a, b, jnp.asarray(labels), beta=beta), argnums=(0, 1))(nat, adv)
  assert value.shape == ()
  np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_nat), tn.grad.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_adv), ta.grad.numpy(), atol=1e-5)


def test_trades_loss_beta_zero_is_cross_entropy():
  nat, adv, labels = _logits(2)
  got = trades_loss(jnp.asarray(nat), jnp.asarray(adv), jnp.asarray(labels), beta=0.0)
  np.testing.assert_allclose(float(got), float(jnp.mean(cross_entropy(jnp.asarray(nat), labels))), rtol=1e-7)
  # and the KL term is really there for beta > 0, scaled by beta over the batch size
  got6 = trades_loss(jnp.asarray(nat), jnp.asarray(adv), jnp.asarray(labels), beta=6.0)
  kl_sum = float(jnp.sum(kl_divergence(jnp.asarray(nat), jnp.asarray(adv))))
  np.testing.assert_allclose(float(got6) - float(got), 6.0 * kl_sum / B, rtol=1e-5)


@pytest.mark.parametrize("beta", [-1.0, float("nan"), np.array([1.0, 2.0])])
def test_trades_loss_rejects_bad_beta(beta):
  nat, adv, labels = _logits(3)
  with pytest.raises(ValueError, match="beta must be"):
    trades_loss(jnp.asarray(nat), jnp.asarray(adv), jnp.asarray(labels), beta=beta)


def test_kl_divergence_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same shape"):
    kl_divergence(jnp.zeros((3, 10)), jnp.zeros((3, 9)))


# --- trades_pgd -----------------------------------------------------------------------------------

IMG = (4, 4, 1)


@pytest.fixture(scope="module")
def mlp():
  """A small tanh MLP on 4x4x1 images (examples independent) and a batch with pixels at 0 and 1."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  w1 = 1.5 * jax.random.normal(k1, (16, 24))
  w2 = jax.random.normal(k2, (24, 5))

  def logits_fn(xa):
    return jnp.tanh(xa.reshape(xa.shape[0], -1) @ w1 - 0.7) @ w2

  x = jax.random.uniform(k3, (8, *IMG), minval=-0.3, maxval=1.3)
  x = jnp.clip(x, 0.0, 1.0)  # a good share of the pixels sit exactly at 0 or 1
  return logits_fn, x


def _slow_trades_pgd(logits_fn, x, *, eps, alpha, steps, key):
  """The l_inf loop of trades.py, one example at a time, in numpy (gradients by jax.grad)."""
  noise = np.asarray(jax.random.normal(key, x.shape, x.dtype))
  x = np.asarray(x)
  eps = np.broadcast_to(np.asarray(eps, np.float32), (len(x),))
  out = []
  for i in range(len(x)):
    x_natural = x[i]
    p_nat = jax.nn.softmax(logits_fn(x_natural[None]), axis=1)  # the model's natural softmax target

    def loss_kl(xa):  # KLDivLoss(size_average=False)(log_softmax(model(x_adv)), softmax(model(x)))
      log_q = jax.nn.log_softmax(logits_fn(xa[None]), axis=1)
      return jnp.sum(p_nat * (jnp.log(p_nat) - log_q))

    x_adv = x_natural + np.float32(0.001) * noise[i]  # no clip at the start
    for _ in range(steps):
      grad = np.asarray(jax.grad(loss_kl)(jnp.asarray(x_adv)))
      x_adv = x_adv + np.float32(alpha) * np.sign(grad)
      x_adv = np.minimum(np.maximum(x_adv, x_natural - eps[i]), x_natural + eps[i])
      x_adv = np.clip(x_adv, 0.0, 1.0)
    out.append(np.clip(x_adv, 0.0, 1.0))
  return np.stack(out)


@pytest.mark.slow
def test_trades_pgd_matches_slow_loop(mlp):
  logits_fn, x = mlp
  key = jax.random.key(5)
  eps = np.linspace(0.01, 0.05, len(x)).astype(np.float32)  # per-example budgets
  got = trades_pgd(logits_fn, x, eps=eps, alpha=0.007, steps=6, key=key)
  ref = _slow_trades_pgd(logits_fn, x, eps=eps, alpha=0.007, steps=6, key=key)
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)
  # jittable with traced budgets, same result
  jitted = jax.jit(lambda xx, e, a: trades_pgd(logits_fn, xx, eps=e, alpha=a, steps=6, key=key))
  np.testing.assert_allclose(np.asarray(jitted(x, eps, 0.007)), ref, atol=1e-6)
  # and the attack moved: most pixels went more than the start noise away from x
  assert np.mean(np.abs(ref - np.asarray(x)) > 0.005) > 0.5


@pytest.mark.slow
def test_trades_pgd_invariants(mlp):
  logits_fn, x = mlp
  eps = 0.031
  x_adv = np.asarray(trades_pgd(logits_fn, x, eps=eps, alpha=0.007, steps=10, key=jax.random.key(1)))
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  assert np.max(np.abs(x_adv - np.asarray(x))) <= eps + 1e-7
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


@pytest.mark.slow
def test_trades_pgd_more_steps_increase_kl(mlp):
  logits_fn, x = mlp
  nat = logits_fn(x)

  def mean_kl(steps):
    x_adv = trades_pgd(logits_fn, x, eps=0.031, alpha=0.007, steps=steps, key=jax.random.key(2))
    return float(jnp.mean(kl_divergence(nat, logits_fn(x_adv))))

  kls = [mean_kl(s) for s in (0, 1, 3, 10)]
  assert kls[0] < kls[1] < kls[2] < kls[3], kls
  assert kls[3] > 10 * kls[0]


def test_trades_pgd_zero_steps_returns_clipped_start(mlp):
  logits_fn, x = mlp
  key = jax.random.key(3)
  got = np.asarray(trades_pgd(logits_fn, x, eps=0.031, alpha=0.007, steps=0, key=key))
  start = np.asarray(x) + 0.001 * np.asarray(jax.random.normal(key, x.shape, x.dtype))
  np.testing.assert_allclose(got, np.clip(start, 0.0, 1.0), atol=1e-7)
  assert np.any(got != np.asarray(x))  # the start is x + noise, not x


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps must be an integer >= 0"),
    (dict(steps=2.5), "steps must be an integer >= 0"),
    (dict(steps=True), "steps must be an integer >= 0"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(eps=float("nan")), "eps must be >= 0"),
    (dict(alpha=0.0), "alpha .* must be finite and > 0"),
    (dict(alpha=np.array([0.007, -0.007])), "alpha .* must be finite and > 0"),
    (dict(alpha=float("nan")), "alpha .* must be finite and > 0"),
    (dict(key=None), "key is needed"),
])
def test_trades_pgd_rejects_bad_arguments(mlp, kwargs, match):
  logits_fn, x = mlp
  args = dict(eps=0.031, alpha=0.007, steps=2, key=jax.random.key(0))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    trades_pgd(logits_fn, x[:2], **args)
