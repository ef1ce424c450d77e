"""SA-PGD (Algorithm 1) and PGD: equality with a slow per-example reference, invariants, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax import attack
from saat_jax.attack import budget_schedule, pgd, sa_pgd
from saat_jax.losses import ce_loss_fn
from saat_jax.models import create_model

EPS_MAX, TAU, K, ALPHA = 24 / 255, 4 / 255, 3, 3 / 255


@pytest.fixture(scope="module")
def problem():
  """A small CNN without BatchNorm (examples independent) on fixed 8x8x1 inputs in [0, 1]."""
  model = create_model("small_cnn", 10, use_bn=False, width=8)
  x = jax.random.uniform(jax.random.key(1), (48, 8, 8, 1))
  params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]  # the eager init's bits, one compilation
  # Larger weights make the loss depend strongly on the input; half of the labels are the model's
  # own prediction (low clean loss), so a batch mixes all three outcomes of Algorithm 1.
  params = jax.tree_util.tree_map(lambda p: p * 3.5 if p.ndim > 1 else p, params)
  logits_fn = lambda xa: model.apply({"params": params}, xa - 0.5)
  pred = jnp.argmax(logits_fn(x), -1)
  y = jnp.where(jnp.arange(48) % 2 == 0, pred, jax.random.randint(jax.random.key(2), (48,), 0, 10))
  return ce_loss_fn(logits_fn), np.asarray(x), np.asarray(y)


def slow_sa_pgd(loss_fn, x, y, *, rho, eps_max, tau, k, alpha, x_init=None, eps_init=0.0):
  """Algorithm 1, line by line, one example at a time, in plain Python control flow."""
  value_and_grad = jax.jit(jax.value_and_grad(lambda xi, yi: loss_fn(xi[None], yi[None])[0]))
  out_x, out_eps, out_steps, out_loss = [], [], [], []
  for i in range(len(x)):
    xi, yi = x[i], y[i]
    xp = xi if x_init is None else x_init[i]  # line 3: x' <- x
    eps = eps_init                             # line 3: eps <- 0
    steps = 0
    loss, grad = value_and_grad(xp, yi)
    loss = float(loss)
    if not loss >= rho:                        # line 4
      stop = False
      while eps < eps_max and not stop:        # line 7
        eps = min(eps + tau, eps_max)          # line 8 (never beyond eps_max)
        for _ in range(k):                     # line 9
          xp = np.clip(np.clip(xp + alpha * np.sign(np.asarray(grad)), xi - eps, xi + eps), 0.0, 1.0)  # line 10
          steps += 1
          loss, grad = value_and_grad(xp, yi)
          loss = float(loss)
          if loss >= rho:                      # lines 11-12
            stop = True
            break
    out_x.append(np.asarray(xp))
    out_eps.append(eps)
    out_steps.append(steps)
    out_loss.append(loss)
  return np.stack(out_x), np.array(out_eps), np.array(out_steps), np.array(out_loss)


def run(loss_fn, x, y, **kw):
  fn = jax.jit(lambda x, y: sa_pgd(loss_fn, x, y, **kw))
  x_adv, stats = fn(x, y)
  return np.asarray(x_adv), jax.tree_util.tree_map(np.asarray, stats)


@pytest.mark.parametrize("rho", [1.5, 2.5, 4.0])
@pytest.mark.slow
def test_sa_pgd_equals_slow_reference(problem, rho):
  loss_fn, x, y = problem
  kw = dict(rho=rho, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  x_adv, stats = run(loss_fn, x, y, **kw)
  rx, reps, rsteps, rloss = slow_sa_pgd(loss_fn, x, y, **kw)
  np.testing.assert_array_equal(stats.steps, rsteps)
  np.testing.assert_allclose(stats.eps, reps, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(stats.satisfied, rloss >= rho)
  np.testing.assert_allclose(stats.loss, rloss, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(x_adv, rx, rtol=0, atol=1e-6)
  # the batch really mixes the three outcomes for the middle rho
  if rho == 4.0:
    assert (stats.steps == 0).any() and stats.satisfied[stats.steps > 0].any() and (~stats.satisfied).any()


@pytest.mark.slow
def test_sa_pgd_warm_start_equals_slow_reference(problem):
  """The released code's start point: a PGD-10 example at 8/255, budget grown from there."""
  loss_fn, x, y = problem
  x0 = np.asarray(pgd(loss_fn, jnp.asarray(x), jnp.asarray(y), eps=8 / 255, alpha=2 / 255, steps=10,
                      key=jax.random.key(3)))
  kw = dict(rho=2.0, eps_max=14 / 255, tau=2 / 255, k=3, alpha=2 / 255, eps_init=8 / 255)
  x_adv, stats = run(loss_fn, x, y, x_init=jnp.asarray(x0), **kw)
  rx, reps, rsteps, rloss = slow_sa_pgd(loss_fn, x, y, x_init=x0, **kw)
  np.testing.assert_array_equal(stats.steps, rsteps)
  np.testing.assert_allclose(stats.eps, reps, atol=1e-7)
  np.testing.assert_allclose(x_adv, rx, atol=1e-6)
  assert set(np.round(stats.eps * 255, 4)) <= {8.0, 10.0, 12.0, 14.0}
  assert np.abs(x_adv - x).max() <= 14 / 255 + 1e-6


def test_budget_schedule_matches_released_code_and_paper():
  assert np.allclose(np.array(budget_schedule(14 / 255, 2 / 255, 8 / 255)) * 255, [8, 10, 12, 14])
  assert np.allclose(np.array(budget_schedule(14 / 255, 2 / 255)) * 255, [0, 2, 4, 6, 8, 10, 12, 14])
  # never beyond eps_max
  assert np.allclose(np.array(budget_schedule(5 / 255, 2 / 255)) * 255, [0, 2, 4, 5])
  assert budget_schedule(0.0, 2 / 255) == [0.0]


def test_budget_typed_as_a_rounded_decimal_adds_no_stage():
  """14/255 typed on the command line as 0.054902 (or 0.0549) gives stages 10, 12, 14/255, not a
  fourth stage a hair above 14/255; the last stage is the eps_max given."""
  for typed in (0.054902, 0.0549019, 0.05490196, 14 / 255):
    b = budget_schedule(typed, 2 / 255, 8 / 255)
    assert len(b) == 4, (typed, b)
    np.testing.assert_allclose(np.array(b) * 255, [8, 10, 12, 14], atol=1e-3)
    assert b[-1] == typed
    b0 = budget_schedule(typed, 2 / 255, 0.0)  # Algorithm 1's zero start: 7 stages
    assert len(b0) == 8 and b0[-1] == typed, b0
  # a genuinely different eps_max still gets its own (partial) last stage
  assert len(budget_schedule(14.5 / 255, 2 / 255, 8 / 255)) == 5


def _exact_problem():
  """A loss that float32 computes exactly: the sum of 4 pixels on a 1/64 grid, so rho can be set
  to a loss value exactly and ``loss >= rho`` tells ``>=`` from ``>``."""
  x = jnp.asarray(np.arange(8 * 4).reshape(8, 2, 2, 1) % 7 / 64.0, jnp.float32)
  loss_fn = lambda xa, y: jnp.sum(xa, axis=(1, 2, 3))
  return loss_fn, x, jnp.zeros((8,), jnp.int32)


def test_loss_equal_to_rho_counts_as_reached_at_line_4():
  loss_fn, x, y = _exact_problem()
  clean = np.asarray(loss_fn(x, y))
  i = 3
  x_adv, st = sa_pgd(loss_fn, x, y, rho=float(clean[i]), eps_max=4 / 64, tau=1 / 64, k=2, alpha=1 / 64)
  assert int(st.steps[i]) == 0 and bool(st.satisfied[i]) and float(st.eps[i]) == 0.0
  np.testing.assert_array_equal(np.asarray(x_adv[i]), np.asarray(x[i]))


def test_loss_equal_to_rho_counts_as_reached_at_line_11():
  loss_fn, x, y = _exact_problem()
  clean = np.asarray(loss_fn(x, y))
  i = int(np.argmin(clean))
  rho = float(clean[i] + 4 / 64)  # exactly the loss after one step of 1/64 on each of 4 pixels
  assert clean[i] < rho
  x_adv, st = sa_pgd(loss_fn, x, y, rho=rho, eps_max=4 / 64, tau=1 / 64, k=2, alpha=1 / 64)
  assert int(st.steps[i]) == 1 and bool(st.satisfied[i]) and float(st.loss[i]) == rho
  np.testing.assert_array_equal(np.asarray(x_adv[i]), np.asarray(x[i]) + 1 / 64)


@pytest.mark.slow
def test_sa_pgd_pair_loss_ascends_one_and_stops_on_the_other(problem):
  """``loss_fn -> (ascent, stop)``: the steps follow ``ascent``; lines 4/11 test ``stop``."""
  loss_fn, x, y = problem
  kw = dict(rho=2.5, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  pair = lambda xa, ya: (loss_fn(xa, ya), loss_fn(xa, ya))
  a, sa = run(pair, x, y, **kw)
  b, sb = run(loss_fn, x, y, **kw)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sa.steps, sb.steps)
  # descending the loss while stopping on it: nobody reaches a rho far above, all take every step,
  # and the returned loss is no higher than the clean one
  neg = lambda xa, ya: (-loss_fn(xa, ya), loss_fn(xa, ya))
  _, sn = run(neg, x, y, rho=1e9, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  clean = np.asarray(loss_fn(jnp.asarray(x), jnp.asarray(y)))
  assert (sn.loss <= clean + 1e-5).all() and (sn.steps == K * len(budget_schedule(EPS_MAX, TAU)[1:])).all()


@pytest.mark.parametrize("rho", [1.0, float("inf"), 0.0, -1.0])
@pytest.mark.slow
def test_sa_pgd_invariants(problem, rho):
  loss_fn, x, y = problem
  x_adv, stats = run(loss_fn, x, y, rho=rho, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  dist = np.abs(x_adv - x).reshape(len(x), -1).max(1)
  assert np.all(dist <= stats.eps + 1e-6)
  assert np.all(stats.eps <= EPS_MAX + 1e-7)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  np.testing.assert_array_equal(stats.satisfied, stats.loss >= rho)
  direct = np.asarray(loss_fn(jnp.asarray(x_adv), jnp.asarray(y)))
  np.testing.assert_allclose(stats.loss, direct, rtol=1e-4, atol=1e-5)
  n_stages = len(budget_schedule(EPS_MAX, TAU)) - 1
  if rho <= 0:  # natural training: x unchanged
    np.testing.assert_array_equal(x_adv, x)
    assert np.all(stats.steps == 0) and np.all(stats.eps == 0) and np.all(stats.satisfied)
  if math.isinf(rho):  # climbs to eps_max with every step
    assert np.allclose(stats.eps, EPS_MAX) and np.all(stats.steps == n_stages * K)
    assert not stats.satisfied.any()
  # an unsatisfied example ran out of budget: it is at eps_max with all steps taken
  unsat = ~stats.satisfied
  assert np.allclose(stats.eps[unsat], EPS_MAX) and np.all(stats.steps[unsat] == n_stages * K)


def test_sa_pgd_one_value_and_grad_per_iteration():
  """rho=inf: 1 pass for line 4 + exactly one pass per step, n_stages * K steps."""
  calls = []
  w = jax.random.normal(jax.random.key(0), (12, 4))

  def loss_fn(x, y):
    jax.debug.callback(lambda: calls.append(1))
    logits = x.reshape(x.shape[0], -1) @ w
    return -jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y]

  x = jax.random.uniform(jax.random.key(1), (6, 2, 2, 3))
  y = jnp.arange(6) % 4
  _, stats = jax.jit(lambda x, y: sa_pgd(loss_fn, x, y, rho=float("inf"), eps_max=14 / 255, tau=2 / 255,
                                         k=3, alpha=2 / 255))(x, y)
  jax.block_until_ready(stats.eps)
  assert int(stats.steps[0]) == 21
  assert len(calls) == 1 + 21


def test_sa_pgd_stats_readable_as_keys_and_attributes(problem):
  loss_fn, x, y = problem
  _, stats = run(loss_fn, x[:4], y[:4], rho=1.0, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  for name in ("eps", "steps", "loss", "satisfied"):
    np.testing.assert_array_equal(stats[name], getattr(stats, name))
    assert getattr(stats, name).shape == (4,)


@pytest.mark.parametrize("kw,match", [
    (dict(eps_max=-1 / 255), "eps_max"),
    (dict(tau=0.0), "tau"),
    (dict(tau=-2 / 255), "tau"),
    (dict(k=0), "k"),
    (dict(k=2.5), "k"),
    (dict(alpha=0.0), "alpha"),
    (dict(rho=float("nan")), "rho is NaN"),
    (dict(eps_init=-0.01), "eps_init must be finite and >= 0"),
    (dict(eps_init=float("inf")), "eps_init must be finite and >= 0"),
    (dict(alpha=float("inf")), "alpha .* must be finite and > 0"),
    (dict(eps_max="big"), "eps_max must be a number"),
    (dict(tau="small"), "tau must be a number"),
    (dict(eps_init="zero"), "eps_init must be a number"),
    (dict(eps_max=1.0, tau=1e-7), r"eps_max/tau = 1e\+07 budget stages is unreasonable"),
])
def test_sa_pgd_rejects_impossible_hyperparameters(problem, kw, match):
  loss_fn, x, y = problem
  args = dict(rho=1.0, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    sa_pgd(loss_fn, jnp.asarray(x[:2]), jnp.asarray(y[:2]), **args)


@pytest.mark.slow
def test_pgd_invariants_and_strength(problem):
  loss_fn, x, y = problem
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  eps = 8 / 255
  x_adv = np.asarray(jax.jit(lambda a, b: pgd(loss_fn, a, b, eps=eps, alpha=2 / 255, steps=10,
                                               key=jax.random.key(0)))(xj, yj))
  assert np.abs(x_adv - x).max() <= eps + 1e-6
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  clean = np.asarray(loss_fn(xj, yj))
  adv = np.asarray(loss_fn(jnp.asarray(x_adv), yj))
  assert (adv >= clean - 1e-5).mean() > 0.95 and adv.mean() > clean.mean()
  # same key, same result; restarts keep the per-example best
  x_again = np.asarray(pgd(loss_fn, xj, yj, eps=eps, alpha=2 / 255, steps=10, key=jax.random.key(0)))
  np.testing.assert_allclose(x_adv, x_again, atol=1e-7)
  x_r = pgd(loss_fn, xj, yj, eps=eps, alpha=2 / 255, steps=10, key=jax.random.key(0), restarts=3)
  assert np.all(np.asarray(loss_fn(x_r, yj)) >= adv - 1e-5)
  # no key: deterministic start at x; eps = 0 returns x
  np.testing.assert_array_equal(np.asarray(pgd(loss_fn, xj, yj, eps=0.0, alpha=2 / 255, steps=5)), x)
  with pytest.raises(ValueError, match="eps"):
    pgd(loss_fn, xj, yj, eps=-1.0, alpha=2 / 255, steps=5)


# --- from mutation testing (docs/mutation.md) -----------------------------------------------------


@pytest.mark.parametrize("eps_max,k", [(TAU, K), (EPS_MAX, 1)])
def test_sa_pgd_single_stage_and_k1_equal_slow_reference(problem, eps_max, k):
  """One budget stage (eps_max = tau: no example is done before it steps) and K = 1 (a legal K)."""
  loss_fn, x, y = problem
  kw = dict(rho=3.0, eps_max=eps_max, tau=TAU, k=k, alpha=ALPHA)
  x_adv, stats = run(loss_fn, x, y, **kw)
  rx, reps, rsteps, _ = slow_sa_pgd(loss_fn, x, y, **kw)
  np.testing.assert_array_equal(stats.steps, rsteps)
  np.testing.assert_allclose(stats.eps, reps, atol=1e-7)
  np.testing.assert_allclose(x_adv, rx, atol=1e-6)
  assert rsteps.max() == k * (len(budget_schedule(eps_max, TAU)) - 1) and (rsteps > 0).any()


def test_sa_pgd_eps_max_zero_returns_x_without_a_step(problem):
  """eps_max = 0 (no budget stage) is legal: every example is done at once, unperturbed."""
  loss_fn, x, y = problem
  x_adv, stats = run(loss_fn, x, y, rho=float("inf"), eps_max=0.0, tau=TAU, k=K, alpha=ALPHA)
  np.testing.assert_array_equal(x_adv, x)
  assert np.all(stats.steps == 0) and np.all(stats.eps == 0) and not stats.satisfied.any()


def test_sa_pgd_with_state_counts_its_passes_and_equals_stateless(problem):
  """``state=``: one pass for line 4 and one per loop iteration, each threading the state; the
  adversarial examples and statistics are those of the stateless call."""
  loss_fn, x, y = problem
  kw = dict(rho=2.5, eps_max=EPS_MAX, tau=TAU, k=K, alpha=ALPHA)
  counting = lambda xa, ya, st: (loss_fn(xa, ya), st + 1)
  x_s, stats_s, n = jax.jit(lambda a, b: sa_pgd(counting, a, b, state=jnp.int32(0), **kw))(x, y)
  x_adv, stats = run(loss_fn, x, y, **kw)
  np.testing.assert_array_equal(np.asarray(x_s), x_adv)
  np.testing.assert_array_equal(np.asarray(stats_s.steps), stats.steps)
  assert int(n) == 1 + int(stats.steps.max()) and stats.steps.max() > 0


def test_sa_pgd_takes_traced_rho_and_alpha(problem):
  """rho and alpha may be traced (only the loop bounds must be Python numbers)."""
  loss_fn, x, y = problem
  kw = dict(eps_max=EPS_MAX, tau=TAU, k=K)
  x_j, st_j = jax.jit(lambda r, a: sa_pgd(loss_fn, x, y, rho=r, alpha=a, **kw))(2.5, ALPHA)
  x_e, st_e = run(loss_fn, x, y, rho=2.5, alpha=ALPHA, **kw)
  np.testing.assert_allclose(np.asarray(x_j), x_e, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(st_j.steps), st_e.steps)
  with pytest.raises(ValueError, match="eps_max must be a Python number"):
    jax.jit(lambda e: sa_pgd(loss_fn, x, y, rho=2.5, eps_max=e, tau=TAU, k=K, alpha=ALPHA))(EPS_MAX)


def test_sa_pgd_keeps_the_dtype_of_x_for_a_warm_start_of_another_dtype(problem):
  loss_fn, x, y = problem
  xb, y = jnp.asarray(x[:4], jnp.bfloat16), y[:4]
  x_adv, _ = jax.jit(lambda a, b, c: sa_pgd(loss_fn, a, b, rho=2.5, eps_max=2 * TAU, tau=TAU, k=1, alpha=ALPHA,
                                            x_init=c))(xb, y, jnp.asarray(x[:4], jnp.float32))
  assert x_adv.dtype == jnp.bfloat16


def test_check_sa_pgd_hparams_stage_limit_is_one_million():
  """At most 1e6 budget stages (eps_max / tau); checked without building the schedule."""
  ok = dict(rho=1.0, k=1, alpha=0.1)
  attack.check_sa_pgd_hparams(eps_max=1.0, tau=1e-6, **ok)  # exactly 1e6 stages: allowed
  with pytest.raises(ValueError, match="unreasonable"):
    attack.check_sa_pgd_hparams(eps_max=1.0, tau=1 / 1000000.5, **ok)


def test_budget_schedule_tolerance_boundaries_agree():
  """A start exactly ``BUDGET_RTOL * tau`` below eps_max counts as eps_max (no stage), and a stage
  landing exactly there becomes eps_max: the loop test and the clip test use the same tolerance."""
  eps_max, tau = 14 / 255, 2 / 255
  tol = attack.BUDGET_RTOL * tau
  assert budget_schedule(eps_max, tau, eps_max - tol) == [eps_max - tol]
  start = (eps_max - tol) - tau
  assert start + tau == eps_max - tol  # the stage lands on the boundary, in floats
  assert budget_schedule(eps_max, tau, start) == [start, eps_max]
