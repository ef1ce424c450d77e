"""Tests that kill mutants which survived mutation testing of the core modules (docs/mutation.md).

Each test asserts a real property of the algorithm (equality with a slow reference, an invariant,
an exact value) that one or more surviving mutants of ``mutmut run`` broke without a test noticing.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.attack import pgd, sa_pgd, trades_pgd
from saat_jax.awp import perturb, weight_perturbation
from saat_jax.losses import correct, kl_divergence, trades_loss

# --- pgd ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_mlp():
  """A tanh MLP on 4x4x1 images that ignores the first image row: those pixels have a gradient of
  exactly 0, so a step must leave them where they are (``sign(0) = 0``). Examples independent."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
  w1 = 2.0 * jax.random.normal(k1, (16, 12))
  w2 = 1.5 * jax.random.normal(k2, (12, 5))
  mask = jnp.ones((4, 4, 1)).at[0].set(0.0)

  def logits_fn(xa):
    return jnp.tanh((xa * mask).reshape(xa.shape[0], -1) @ w1 - 0.3) @ w2

  def loss_fn(xa, ya):
    return -jax.nn.log_softmax(logits_fn(xa))[jnp.arange(xa.shape[0]), ya]

  x = jnp.clip(jax.random.uniform(k3, (6, 4, 4, 1), minval=-0.2, maxval=1.2), 0.0, 1.0)
  y = jax.random.randint(k4, (6,), 0, 5)
  return loss_fn, x, y, logits_fn


def _slow_pgd(loss_fn, x, y, *, eps, alpha, steps, key, restarts):
  """attack_pgd of Rice et al. (2020), one example at a time in numpy: per restart a start
  ``clip(x + U(-eps, eps))`` (drawn from ``split(key, restarts)``), ``steps`` projected signed
  steps, and the restart with the highest final loss kept (``>=``: a later restart wins a tie)."""
  single = jax.jit(lambda xi, yi: loss_fn(xi[None], yi[None])[0])
  grad = jax.jit(jax.grad(lambda xi, yi: loss_fn(xi[None], yi[None])[0]))
  x, y = np.asarray(x), np.asarray(y)
  uniforms = [np.asarray(jax.random.uniform(k, x.shape, x.dtype, -1.0, 1.0)) for k in jax.random.split(key, restarts)]
  out = []
  for i in range(len(x)):
    best, best_loss = None, -np.inf
    for u in uniforms:
      xa = np.clip(x[i] + u[i] * np.float32(eps), 0.0, 1.0)
      for _ in range(steps):
        g = np.asarray(grad(xa, y[i]))
        xa = np.clip(np.clip(xa + np.float32(alpha) * np.sign(g), x[i] - np.float32(eps), x[i] + np.float32(eps)),
                     0.0, 1.0)
      loss = float(single(xa, y[i]))
      if loss >= best_loss:
        best, best_loss = xa, loss
    out.append(best)
  return np.stack(out)


@pytest.mark.parametrize("restarts", [1, 2, 3])
@pytest.mark.slow
def test_pgd_random_start_and_restarts_equal_slow_reference(masked_mlp, restarts):
  """Catches a wrong start (range of U, sign or scale of the noise, number of restart keys), a
  step that moves zero-gradient pixels, a skipped step, and a restart loop that stops early."""
  loss_fn, x, y, _ = masked_mlp
  kw = dict(eps=0.1, alpha=0.03, steps=4, key=jax.random.key(11))
  got = np.asarray(pgd(loss_fn, x, y, restarts=restarts, **kw))
  ref = _slow_pgd(loss_fn, x, y, restarts=restarts, **kw)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
  # the ignored row never moves from its random start, the others are spread over the ball
  start_spread = np.abs(got[:, 1:] - np.asarray(x)[:, 1:])
  assert np.mean(start_spread > 0.05) > 0.5


def test_pgd_restart_ties_go_to_the_later_restart():
  """attack_pgd keeps a restart whose loss is ``>=`` the best so far: with a constant loss every
  restart ties and the last one is returned."""
  x = jnp.full((3, 2, 2, 1), 0.5)
  y = jnp.zeros((3,), jnp.int32)
  const = lambda xa, ya: jnp.zeros((xa.shape[0],))
  key = jax.random.key(4)
  got = np.asarray(pgd(const, x, y, eps=0.1, alpha=0.02, steps=2, key=key, restarts=3))
  last = jax.random.split(key, 3)[-1]
  expected = np.clip(np.asarray(x) + np.asarray(jax.random.uniform(last, x.shape, x.dtype, -1.0, 1.0)) * 0.1, 0, 1)
  np.testing.assert_allclose(got, expected, atol=1e-7)


@pytest.mark.parametrize("seed,restarts", [(None, 1), (2, 1), (2, 2)])
@pytest.mark.slow
def test_pgd_with_state_counts_its_passes_and_equals_stateless(masked_mlp, seed, restarts):
  """``state=``: ``steps`` gradient passes plus one forward pass per restart with a random start
  (``attack_pgd``'s all_loss pass), each threading the state; the result is the stateless one."""
  loss_fn, x, y, _ = masked_mlp
  key = None if seed is None else jax.random.key(seed)
  counting = lambda xa, ya, st: (loss_fn(xa, ya), st + 1)
  kw = dict(eps=0.1, alpha=0.03, steps=3, key=key, restarts=restarts)
  x_adv, n = pgd(counting, x, y, state=jnp.int32(0), **kw)
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(pgd(loss_fn, x, y, **kw)))
  assert int(n) == (3 if key is None else restarts * (3 + 1))


@pytest.mark.slow
def test_pgd_zero_steps_and_traced_eps(masked_mlp):
  loss_fn, x, y, _ = masked_mlp
  # steps=0 is allowed: no key returns x, a key returns the clipped random start
  np.testing.assert_array_equal(np.asarray(pgd(loss_fn, x, y, eps=0.1, alpha=0.03, steps=0)), np.asarray(x))
  key = jax.random.key(3)
  start = np.clip(np.asarray(x) + np.asarray(jax.random.uniform(jax.random.split(key, 1)[0], x.shape, x.dtype,
                                                                -1.0, 1.0)) * np.float32(0.1), 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(pgd(loss_fn, x, y, eps=0.1, alpha=0.03, steps=0, key=key)), start, atol=1e-7)
  # per-example eps traced under jit (no concrete check may touch it), same as eager
  eps = jnp.linspace(0.02, 0.12, x.shape[0])
  jitted = jax.jit(lambda e: pgd(loss_fn, x, y, eps=e, alpha=0.03, steps=3, key=key))(eps)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(pgd(loss_fn, x, y, eps=eps, alpha=0.03, steps=3, key=key)),
                             atol=1e-6)


def test_pgd_keeps_the_dtype_of_x(masked_mlp):
  loss_fn, x, y, _ = masked_mlp
  x_adv = jax.jit(lambda a: pgd(loss_fn, a, y, eps=0.1, alpha=0.03, steps=1, key=jax.random.key(0)))(
      jnp.asarray(x, jnp.bfloat16))
  assert x_adv.dtype == jnp.bfloat16 and x_adv.shape == x.shape


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=2.5), "steps must be an integer >= 0"),
    (dict(steps=True), "steps must be an integer >= 0"),
    (dict(steps=-1), "steps must be an integer >= 0"),
    (dict(restarts=0, key=0), "restarts must be >= 1"),
    (dict(restarts=2), "restarts > 1 needs a random start"),
    (dict(eps=float("nan")), "eps must be >= 0"),
])
def test_pgd_rejects_bad_arguments(masked_mlp, kwargs, match):
  loss_fn, x, y, _ = masked_mlp
  args = dict(eps=0.1, alpha=0.03, steps=2)
  args.update(kwargs)
  if args.get("key") is not None:
    args["key"] = jax.random.key(args["key"])
  with pytest.raises(ValueError, match=match):
    pgd(loss_fn, x, y, **args)


# --- sa_pgd ---------------------------------------------------------------------------------------


def test_sa_pgd_leaves_zero_gradient_pixels_at_x(masked_mlp):
  """Algorithm 1 line 10 steps by ``alpha * sign(grad)``: a pixel the loss ignores never moves."""
  loss_fn, x, y, _ = masked_mlp
  x_adv, stats = jax.jit(lambda a, b: sa_pgd(loss_fn, a, b, rho=float("inf"), eps_max=0.1, tau=0.05, k=2,
                                             alpha=0.03))(x, y)
  x_adv, xn = np.asarray(x_adv), np.asarray(x)
  assert np.all(np.asarray(stats.steps) == 4)
  np.testing.assert_array_equal(x_adv[:, 0], xn[:, 0])
  assert np.mean(np.abs(x_adv[:, 1:] - xn[:, 1:]) > 0.05) > 0.5


# --- trades_pgd -----------------------------------------------------------------------------------


def test_trades_pgd_eps_zero_returns_x_and_rejects_infinite_alpha(masked_mlp):
  _, x, _, logits_fn = masked_mlp
  np.testing.assert_array_equal(np.asarray(trades_pgd(logits_fn, x, eps=0.0, alpha=0.01, steps=2,
                                                      key=jax.random.key(0))), np.asarray(x))
  with pytest.raises(ValueError, match="alpha .* must be finite and > 0"):
    trades_pgd(logits_fn, x, eps=0.03, alpha=float("inf"), steps=2, key=jax.random.key(0))


def test_trades_pgd_leaves_zero_gradient_pixels_at_their_start(masked_mlp):
  """``sign(0) = 0``: a pixel the KL does not depend on stays at its start ``x + 0.001 N(0, 1)``."""
  _, x, _, logits_fn = masked_mlp
  key, eps = jax.random.key(5), 0.03
  got = np.asarray(trades_pgd(logits_fn, x, eps=eps, alpha=0.01, steps=3, key=key))
  xn = np.asarray(x)
  start = xn + np.float32(0.001) * np.asarray(jax.random.normal(key, x.shape, x.dtype))
  expected = np.clip(np.clip(start, xn - np.float32(eps), xn + np.float32(eps)), 0.0, 1.0)
  np.testing.assert_allclose(got[:, 0], expected[:, 0], atol=1e-7)  # the ignored row
  assert np.mean(np.abs(got[:, 1:] - xn[:, 1:]) > 0.005) > 0.5  # the rest moved


def test_trades_pgd_keeps_the_dtype_of_x(masked_mlp):
  _, x, _, logits_fn = masked_mlp
  x_adv = jax.jit(lambda a: trades_pgd(logits_fn, a, eps=0.03, alpha=0.01, steps=1, key=jax.random.key(0)))(
      jnp.asarray(x, jnp.bfloat16))
  assert x_adv.dtype == jnp.bfloat16 and x_adv.shape == x.shape


# --- awp ------------------------------------------------------------------------------------------


def _quadratic_problem(dtype):
  params = {"dense": {"kernel": jnp.asarray(np.linspace(-1.0, 2.0, 12).reshape(3, 4), dtype),
                      "bias": jnp.asarray(np.linspace(0.5, 1.0, 4), dtype)}}
  target = jnp.asarray(np.arange(12.0).reshape(3, 4) / 7.0, jnp.float32)

  def loss_fn(p):
    k = p["dense"]["kernel"].astype(jnp.float32)
    return jnp.sum(jnp.sin(3.0 * k) * target) + jnp.sum(p["dense"]["bias"].astype(jnp.float32) ** 2)

  return params, loss_fn


def test_weight_perturbation_default_proxy_lr_is_the_references_0_01():
  """AT-AWP's proxy SGD uses lr=0.01; the rescaling hides lr except through rounding, so compare
  bit for bit with an explicit proxy_lr=0.01 (and see that another lr does round differently)."""
  params, loss_fn = _quadratic_problem(jnp.float32)
  default = weight_perturbation(loss_fn, params, gamma=0.01)["dense"]["kernel"]
  explicit = weight_perturbation(loss_fn, params, gamma=0.01, proxy_lr=0.01)["dense"]["kernel"]
  other = weight_perturbation(loss_fn, params, gamma=0.01, proxy_lr=1.01)["dense"]["kernel"]
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
  assert np.any(np.asarray(other) != np.asarray(explicit))


def test_weight_perturbation_keeps_the_dtypes_of_params():
  params, loss_fn = _quadratic_problem(jnp.bfloat16)
  v = weight_perturbation(loss_fn, params, gamma=0.01)
  assert v["dense"]["kernel"].dtype == jnp.bfloat16 and v["dense"]["bias"].dtype == jnp.bfloat16
  assert np.any(np.asarray(v["dense"]["kernel"], np.float32) != 0.0)


# --- losses ---------------------------------------------------------------------------------------


def test_kl_divergence_of_one_example_without_a_batch_axis():
  """The class axis is the last one: 1-D logits are one example (a scalar KL), equal to the batch of one."""
  p = jnp.array([1.0, -0.5, 2.0, 0.0])
  q = jnp.array([0.2, 0.3, -1.0, 1.5])
  one = kl_divergence(p, q)
  assert one.shape == ()
  np.testing.assert_allclose(float(one), float(kl_divergence(p[None], q[None])[0]), rtol=1e-6)
  lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
  np.testing.assert_allclose(float(one), float(jnp.sum(jnp.exp(lp) * (lp - lq))), rtol=1e-6)


def test_correct_is_the_arg_max_over_classes():
  logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.2, 0.1], [1.0, 1.5, 4.0]])
  labels = jnp.array([1, 1, 1, 2])
  np.testing.assert_array_equal(np.asarray(correct(logits, labels)), [True, False, True, True])
  # the class axis is the last one: one example's logits without a batch axis
  assert bool(correct(logits[3], labels[3])) and not bool(correct(logits[1], labels[1]))


# --- methods --------------------------------------------------------------------------------------

SAAT_KW = dict(rho=2.5, eps_max=0.2, tau=0.05, k=2, alpha=0.03)


def _method_config(method, *, stop_loss="ce", **saat):
  """What the methods read of a training config (configs/ builds the same fields)."""
  from ml_collections import ConfigDict
  c = ConfigDict(dict(
      method=method,
      at=dict(eps=0.1, alpha=0.03, steps=3),
      trades=dict(eps=0.1, alpha=0.03, steps=3, beta=6.0),
      saat=dict(SAAT_KW, start="zero", start_eps=0.1, start_alpha=0.03, start_steps=3),
      sa_trades=dict(stop_loss=stop_loss)))
  c.saat.update(saat)
  return c


@pytest.fixture(scope="module")
def cnn():
  """A small CNN with BatchNorm and its twin without (examples independent), on 12 8x8x1 images
  (a share of the pixels exactly 0 or 1) whose labels are half the model's prediction: the SA-PGD
  settings above mix all outcomes."""
  from saat_jax.methods import AttackNet
  from saat_jax.models import create_model, init_variables
  model = create_model("small_cnn", 10, use_bn=False, width=4)
  params = jax.tree_util.tree_map(lambda a: a * 3.0 if a.ndim > 1 else a,
                                  init_variables(model, jax.random.key(0), (8, 8, 1))["params"])
  x = jnp.clip(jax.random.uniform(jax.random.key(1), (12, 8, 8, 1), minval=-0.2, maxval=1.2), 0.0, 1.0)
  net = AttackNet(model.apply, {"params": params})
  pred = jnp.argmax(net.logits(x), -1)
  y = jnp.where(jnp.arange(12) % 2 == 0, pred, (pred + 1 + jnp.arange(12) % 9) % 10)
  bn_model = create_model("small_cnn", 10, width=4)
  bn_vars = init_variables(bn_model, jax.random.key(0), (8, 8, 1))
  return net, x, y, bn_model, bn_vars


def _same_adversarial(adv, x_adv, eps, steps, satisfied):
  np.testing.assert_allclose(np.asarray(adv.x_adv), np.asarray(x_adv), atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv.eps), np.asarray(eps), atol=1e-7)
  np.testing.assert_array_equal(np.asarray(adv.steps), np.asarray(steps))
  np.testing.assert_array_equal(np.asarray(adv.satisfied), np.asarray(satisfied))


def test_methods_are_named_as_configured_and_unknown_names_list_the_known():
  from saat_jax.methods import METHODS, get_method
  for name in METHODS:
    assert get_method(_method_config(name)).name == name
  with pytest.raises(ValueError, match=re.escape("method='pgd' is unknown; use one of "
                                                 "('natural', 'at', 'saat', 'trades', 'sa_trades')")):
    get_method(_method_config("pgd"))


@pytest.mark.parametrize("method,eps,steps", [("natural", 0.0, 0), ("at", 0.1, 3), ("trades", 0.1, 3)])
@pytest.mark.slow
def test_fixed_budget_adversaries_report_per_example_statistics(cnn, method, eps, steps):
  """One budget and step count for every example: (B,) float32 eps, int32 steps, boolean
  ``satisfied`` all True, and BatchNorm's running statistics passed through untouched."""
  from saat_jax.methods import AttackNet, get_method
  _, x, y, bn_model, bn_vars = cnn
  net = AttackNet(bn_model.apply, bn_vars, bn="eval" if method == "trades" else "train")
  adv = get_method(_method_config(method)).adversary(net, x, y, jax.random.key(0))
  b = x.shape[0]
  assert adv.eps.shape == adv.steps.shape == adv.satisfied.shape == (b,)
  assert adv.eps.dtype == jnp.float32 and adv.steps.dtype == jnp.int32 and adv.satisfied.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(adv.eps), np.full(b, eps, np.float32))
  np.testing.assert_array_equal(np.asarray(adv.steps), np.full(b, steps))
  assert np.all(np.asarray(adv.satisfied))
  assert adv.batch_stats is bn_vars["batch_stats"]
  if method == "natural":
    np.testing.assert_array_equal(np.asarray(adv.x_adv), np.asarray(x))


def test_fixed_budget_statistics_keep_their_dtypes_with_64_bit_jax():
  """float32 eps and int32 steps, the types every adversary reports (the test above), also where
  JAX's defaults are 64-bit (``jax_enable_x64``), not whatever ``jnp.full`` would choose."""
  from saat_jax.methods.base import fixed_budget

  with jax.enable_x64(True):
    adv = fixed_budget(jnp.zeros((3, 2, 2, 1), jnp.float32), {}, eps=0.5, steps=10)
    assert (adv.eps.dtype, adv.steps.dtype, adv.satisfied.dtype) == (jnp.float32, jnp.int32, jnp.bool_)
  np.testing.assert_array_equal(adv.eps, [0.5] * 3)
  np.testing.assert_array_equal(adv.steps, [10] * 3)


@pytest.mark.parametrize("bn, train", [("train", True), ("train_update", True), ("eval", False)])
def test_attack_net_without_batch_norm_passes_its_mode_to_the_model(bn, train):
  """A model without BatchNorm statistics is still called in the attack's mode (``train=True`` unless
  ``bn='eval'``), as PyTorch's attacks on ``model.train()`` run it: what would matter for dropout."""
  from saat_jax.methods import AttackNet

  calls = []

  def apply_fn(variables, x, **kwargs):
    calls.append(kwargs)
    return x

  AttackNet(apply_fn, {"params": {}}, bn=bn).logits(jnp.zeros((1, 2)))
  AttackNet(apply_fn, {"params": {}}, bn="train").logits(jnp.zeros((1, 2)), bn="eval" if train else "train")
  assert calls == [{"train": train}, {"train": not train}]


def test_the_method_sections_defaults_are_the_papers_and_the_references():
  """What a config inherits when it sets none of a method's values. SAAT: rho 1.5 (Sec. 4.2's fixed
  rho, Table 1's SAAT_down and the eps_max rows), eps_max 14/255 (the headline SAAT_up), tau = alpha
  = 2/255, K = 3, Algorithm 1's zero start, and the released code's PGD-10 warm start at 8/255 when
  asked for. AT: PGD-10 at 8/255, step 2/255 (Rice et al.). TRADES: beta 6, eps 0.031, step 0.007,
  10 steps (train_trades_cifar10.py). SA-TRADES stops on Eq. 5's cross-entropy."""
  from saat_jax.methods import method_sections

  sections = method_sections()
  s, a, t = sections["saat"], sections["at"], sections["trades"]
  assert (s.rho, s.eps_max, s.tau, s.k, s.alpha) == (1.5, 14 / 255, 2 / 255, 3, 2 / 255)
  assert (s.start, s.start_eps, s.start_alpha, s.start_steps) == ("zero", 8 / 255, 2 / 255, 10)
  assert (a.eps, a.alpha, a.steps) == (8 / 255, 2 / 255, 10)
  assert (t.beta, t.eps, t.alpha, t.steps) == (6.0, 0.031, 0.007, 10)
  assert sections["sa_trades"].stop_loss == "ce"


@pytest.mark.slow
def test_saat_zero_start_is_algorithm_1_on_the_cross_entropy(cnn):
  from saat_jax.attack import sa_pgd
  from saat_jax.losses import ce_loss_fn
  from saat_jax.methods import get_method
  net, x, y, _, _ = cnn
  adv = get_method(_method_config("saat")).adversary(net, x, y, jax.random.key(5))
  x_ref, st = sa_pgd(ce_loss_fn(net.logits), x, y, **SAAT_KW)
  _same_adversarial(adv, x_ref, st.eps, st.steps, st.satisfied)
  assert float(adv.x_adv.min()) >= 0.0 and float(adv.x_adv.max()) <= 1.0  # the noisy start too
  steps = np.asarray(st.steps)
  assert (steps == 0).any() and (steps > 0).any() and not np.asarray(st.satisfied).all()


@pytest.mark.slow
def test_saat_pgd_start_grows_the_budget_from_start_eps(cnn):
  """The released code: PGD (start_steps of start_alpha at start_eps, random start), then SA-PGD
  from there with eps_init = start_eps; the steps reported include the PGD ones."""
  from saat_jax.attack import pgd, sa_pgd
  from saat_jax.losses import ce_loss_fn
  from saat_jax.methods import get_method
  net, x, y, _, _ = cnn
  key = jax.random.key(5)
  kw = dict(SAAT_KW, rho=3.0, eps_max=0.25)
  adv = get_method(_method_config("saat", start="pgd", rho=3.0, eps_max=0.25)).adversary(net, x, y, key)
  x0 = pgd(ce_loss_fn(net.logits), x, y, eps=0.1, alpha=0.03, steps=3, key=key)
  x_ref, st = sa_pgd(ce_loss_fn(net.logits), x, y, x_init=x0, eps_init=0.1, **kw)
  _same_adversarial(adv, x_ref, st.eps, st.steps + 3, st.satisfied)
  assert np.asarray(adv.eps).min() >= 0.1 - 1e-7 and np.asarray(st.steps).max() > 0


@pytest.mark.parametrize("stop_loss,rho", [("ce", 2.5), ("kl", 1.0)])
@pytest.mark.slow
def test_sa_trades_zero_start_ascends_the_kl_from_trades_noise(cnn, stop_loss, rho):
  """SA-TRADES' zero start: SA-PGD from ``clip(x + 0.001 N(0, 1))`` at budget 0, the steps ascending
  KL(f(x) || f(x')), each example stopping when its stopping loss (CE or the KL) reaches rho."""
  from saat_jax.attack import sa_pgd
  from saat_jax.losses import cross_entropy
  from saat_jax.methods import get_method
  net, x, y, _, _ = cnn
  key = jax.random.key(5)
  adv = get_method(_method_config("sa_trades", stop_loss=stop_loss, rho=rho)).adversary(net, x, y, key)
  nat = net.logits(x)

  def pair(xa, ya):
    logits = net.logits(xa)
    kl = kl_divergence(nat, logits)
    return kl, (cross_entropy(logits, ya) if stop_loss == "ce" else kl)

  x_noise = jnp.clip(x + 0.001 * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)
  x_ref, st = sa_pgd(pair, x, y, x_init=x_noise, eps_init=0.0, **dict(SAAT_KW, rho=rho))
  _same_adversarial(adv, x_ref, st.eps, st.steps, st.satisfied)
  assert float(adv.x_adv.min()) >= 0.0 and float(adv.x_adv.max()) <= 1.0  # the noisy start too
  steps = np.asarray(st.steps)
  assert (steps > 0).any() and (stop_loss == "ce" or steps.min() > 0)  # KL(start) < rho: all step


@pytest.mark.parametrize("bn", ["train", "train_update"])
@pytest.mark.slow
def test_saat_updates_running_statistics_only_with_train_update(cnn, bn):
  """attack_bn='train' attacks on batch statistics and returns the running ones untouched;
  'train_update' threads them through every SA-PGD pass (one per loop iteration, plus line 4)."""
  from saat_jax.attack import sa_pgd
  from saat_jax.losses import cross_entropy
  from saat_jax.methods import AttackNet, get_method
  _, x, y, bn_model, bn_vars = cnn
  net = AttackNet(bn_model.apply, bn_vars, bn=bn)
  adv = get_method(_method_config("saat", rho=float("inf"))).adversary(net, x, y, jax.random.key(5))
  if bn == "train":
    assert adv.batch_stats is bn_vars["batch_stats"]
    return
  _, _, bs = sa_pgd(net.stateful_loss(cross_entropy), x, y, state=bn_vars["batch_stats"],
                    **dict(SAAT_KW, rho=float("inf")))
  for a, b, before in zip(jax.tree_util.tree_leaves(adv.batch_stats), jax.tree_util.tree_leaves(bs),
                          jax.tree_util.tree_leaves(bn_vars["batch_stats"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert np.any(np.asarray(a) != np.asarray(before))


# --- error messages -------------------------------------------------------------------------------

# (built lazily: nothing in this module runs JAX at import, so that mutmut's fork server, which
# imports the tests, never starts XLA's threads before it forks)
_W = lambda: {"w": jnp.ones((2, 2))}
_SQ = lambda p: jnp.sum(p["w"] ** 2)
_X = lambda: jnp.full((2, 2, 2, 1), 0.5)
_Y = lambda: jnp.zeros((2,), jnp.int32)
_LOSS = lambda xa, ya: jnp.sum(xa, axis=(1, 2, 3))
_LOGITS = lambda xa: xa.reshape(xa.shape[0], -1)


@pytest.mark.parametrize("call, hint", [
    (lambda: pgd(_LOSS, _X(), _Y(), eps=0.1, alpha=0.01, steps=1, restarts=2), "pass key=jax.random.key(seed)"),
    (lambda: trades_pgd(_LOGITS, _X(), eps=0.03, alpha=0.0, steps=1, key=jax.random.key(0)),
     "(TRADES uses alpha=0.007)"),
    (lambda: trades_pgd(_LOGITS, _X(), eps=0.03, alpha=0.01, steps=1, key=None), "0.001 * N(0, 1) start"),
    (lambda: sa_pgd(_LOSS, _X(), _Y(), rho=float("nan"), eps_max=0.1, tau=0.05, k=1, alpha=0.01),
     "(e.g. rho=1.5; rho<=0 means natural training, rho=inf climbs to eps_max)"),
    (lambda: weight_perturbation(_SQ, _W(), gamma=-1.0), "; gamma is the perturbation size relative to ||w|| "
     "(e.g. 5e-3 for TRADES-AWP; 0 disables AWP)"),
    (lambda: weight_perturbation(_SQ, _W(), gamma=0.01, proxy_lr=0.0),
     "; the reference's proxy uses SGD with lr=0.01 (AT-AWP)"),
    (lambda: perturb(_W(), {"v": jnp.ones((2, 2))}), "pass the pytree returned by weight_perturbation"),
    (lambda: trades_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), _Y(), beta=-1.0), "TRADES uses beta=6"),
    (lambda: kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4))), "the adversarial logits of the same batch"),
])
def test_errors_tell_the_fix(call, hint):
  """A bad argument's error names the fix (the setting the reference uses, the call to make)."""
  with pytest.raises(ValueError, match=re.escape(hint)):
    call()
