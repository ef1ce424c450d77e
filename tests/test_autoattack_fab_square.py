"""FAB and Square (the AutoAttack members in saat_jax.autoattack.fab / .square).

* FAB's hyperplane projections against slow references written here (an LP for l_inf, a bisection on
  the KKT multiplier for l_2);
* Square's p schedule, window sizes and eta blocks against hand-written tables;
* both attacks on a tiny random MLP: threat-model and box constraints, success claims, real success,
  determinism, input validation;
* (``-m torch``) robust accuracy against the reference ``pyautoattack`` 0.2.0 on a small CNN whose
  weights are copied into JAX.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.autoattack.fab import fab_attack, projection_l2, projection_linf
from saat_jax.autoattack.square import eta_block, p_selection, square_attack, square_sizes

# ------------------------------------------------------------------------------------------------
# A tiny model and batch: 8x8x1 images, a random 2-layer MLP, 48 points; every 8th label is wrong
# (clean misclassified points must come back unchanged).

N_POINTS = 48


@functools.cache
def _mlp_params():
  """Made on first use (no JAX work while the module is imported, at collection)."""
  w1, w2 = jax.jit(_mlp_draws)()  # the same bits as drawn one by one; scaled as before
  return w1 * 3.0 / math.sqrt(64), w2 * 3.0 / math.sqrt(32)


def _mlp_draws():
  k1, k2 = jax.random.split(jax.random.key(0))
  return jax.random.normal(k1, (64, 32)), jax.random.normal(k2, (32, 10))



def mlp_logits(x):
  w1, w2 = _mlp_params()
  h = jnp.tanh((x.reshape(x.shape[0], -1) - 0.5) @ w1)
  return h @ w2


@pytest.fixture(scope="module")
def batch():
  x = np.asarray(jax.jit(lambda: jax.random.uniform(jax.random.key(1), (N_POINTS, 8, 8, 1)))())
  pred = np.asarray(jnp.argmax(mlp_logits(x), axis=1))
  y = np.where(np.arange(N_POINTS) % 8 == 7, (pred + 1) % 10, pred)
  return x, y


def _dist(x_adv, x, norm):
  d = np.asarray(x_adv, np.float64).reshape(len(x), -1) - np.asarray(x, np.float64).reshape(len(x), -1)
  return np.abs(d).max(1) if norm == "Linf" else np.sqrt((d ** 2).sum(1))


def _check_attack_output(x, y, x_adv, eps, norm):
  """Box, ball, and: every changed point is misclassified; returns (clean acc, robust acc)."""
  x_adv = np.asarray(x_adv)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert np.isfinite(x_adv).all()
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  dist = _dist(x_adv, x, norm)
  assert dist.max() <= eps * (1 + 1e-5) + 1e-6, dist.max()
  clean_pred = np.asarray(jnp.argmax(mlp_logits(x), axis=1))
  adv_pred = np.asarray(jnp.argmax(mlp_logits(x_adv), axis=1))
  changed = (x_adv != x).reshape(len(x), -1).any(1)
  assert (adv_pred[changed] != y[changed]).all(), "a returned perturbation does not fool the model"
  # Points the attack failed on, and clean-misclassified points, come back exactly as given.
  assert not changed[clean_pred != y].any()
  assert (adv_pred[~changed] == clean_pred[~changed]).all()
  return float((clean_pred == y).mean()), float((adv_pred == y).mean())


# ------------------------------------------------------------------------------------------------
# FAB projections against slow, independent references.


def _random_instances(rng, n, d, *, scale_choices=(0.05, 0.5, 3.0, 30.0)):
  """Points in the box (some on its faces), weights with zeros, offsets near and far (some out
  of reach of the box)."""
  t = rng.uniform(0.0, 1.0, (n, d))
  t[rng.uniform(size=t.shape) < 0.2] = 0.0
  t[rng.uniform(size=t.shape) < 0.1] = 1.0
  w = rng.normal(size=(n, d))
  w[rng.uniform(size=w.shape) < 0.15] = 0.0
  b = (w * t).sum(1) + rng.normal(size=n) * rng.choice(scale_choices, size=n)
  return t.astype(np.float32), w.astype(np.float32), b.astype(np.float32)


def _far_corner(t, w, b):
  """Box point moving w . z furthest from w . t towards b (the answer when b is out of reach)."""
  down = w @ t >= b
  toward_zero = (w > 0) == down
  return np.where(w == 0, t, np.where(toward_zero, 0.0, 1.0))


def test_projection_linf_matches_lp():
  from scipy.optimize import linprog

  rng = np.random.default_rng(0)
  t, w, b = _random_instances(rng, 60, 9)
  d = np.asarray(jax.jit(projection_linf)(t, w, b), np.float64)
  n_feasible = 0
  for i in range(len(t)):
    ti, wi, bi = (v.astype(np.float64) for v in (t[i], w[i], b[i]))
    dim = len(ti)
    # min s  s.t.  |d_j| <= s,  w . d = b - w . t,  0 <= t + d <= 1.
    a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
    res = linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                  A_eq=np.r_[wi, 0.0][None], b_eq=[bi - wi @ ti],
                  bounds=[(-x, 1 - x) for x in ti] + [(0, None)], method="highs")
    z = ti + d[i]
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
    if res.status == 0:
      n_feasible += 1
      assert abs(wi @ z - bi) <= 1e-4 * (1 + np.abs(wi).sum()), i
      assert np.abs(d[i]).max() <= res.fun + 1e-5, (i, np.abs(d[i]).max(), res.fun)
    else:
      assert res.status == 2, res.message  # infeasible: the hyperplane misses the box
      np.testing.assert_allclose(z, _far_corner(ti, wi, bi), atol=1e-6)
  assert 20 <= n_feasible <= 55  # both branches are exercised


def _l2_reference(t, w, b):
  """min |d|_2 s.t. w . (t + d) = b, t + d in the box: d(lam) = clip(-lam w, -t, 1 - t), lam >= 0
  after orienting w so that w . t >= b, with w . d(lam) decreasing in lam; bisection in float64."""
  c = w @ t - b
  if c < 0:
    w, c = -w, -c
  d_of = lambda lam: np.clip(-lam * w, -t, 1 - t)
  if w @ d_of(1e9) + c > 0:  # out of reach: the corner
    return d_of(1e9) * (w != 0)
  lo, hi = 0.0, 1.0
  while w @ d_of(hi) + c > 0:
    hi *= 2
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if w @ d_of(mid) + c > 0 else (lo, mid)
  return d_of(hi)


def test_projection_l2_matches_kkt_bisection():
  rng = np.random.default_rng(1)
  t, w, b = _random_instances(rng, 60, 11)
  d = np.asarray(jax.jit(projection_l2)(t, w, b), np.float64)
  n_inside = 0
  for i in range(len(t)):
    ti, wi, bi = (v.astype(np.float64) for v in (t[i], w[i], b[i]))
    ref = _l2_reference(ti, wi, bi)
    np.testing.assert_allclose(d[i], ref, atol=2e-4, err_msg=f"row {i}")
    n_inside += abs(wi @ (ti + ref) - bi) < 1e-6
  assert 20 <= n_inside <= 55


@pytest.mark.parametrize("proj", [projection_linf, projection_l2])
def test_projection_degenerate_rows(proj):
  """Zero weights: nothing moves; a point already on the hyperplane: no step."""
  t = np.array([[0.2, 0.5, 1.0], [0.3, 0.0, 0.7]], np.float32)
  w = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], np.float32)
  b = np.array([0.7, float(w[1] @ t[1])], np.float32)
  d = np.asarray(jax.jit(proj)(t, w, b))
  np.testing.assert_allclose(d, 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# FAB on the tiny model.


@pytest.fixture(scope="module")
def fab_t_linf(batch):
  x, y = batch
  return fab_attack(mlp_logits, x, y, eps=0.02, norm="Linf", n_target_classes=3, n_iter=40)


@pytest.mark.slow
def test_fab_targeted_linf(batch, fab_t_linf):
  x, y = batch
  clean, robust = _check_attack_output(x, y, fab_t_linf, 0.02, "Linf")
  assert clean == pytest.approx(42 / 48)
  assert 0.0 < robust <= clean - 0.25, (clean, robust)  # a real attack, not a no-op


@pytest.mark.slow
def test_fab_deterministic(batch, fab_t_linf):
  x, y = batch
  again = fab_attack(mlp_logits, x, y, eps=0.02, norm="Linf", n_target_classes=3, n_iter=40)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(fab_t_linf))
  # Random restarts: same seed, same result.
  kw = dict(eps=0.03, norm="L2", targeted=False, n_restarts=2, n_iter=10)
  a = fab_attack(mlp_logits, x, y, seed=3, **kw)
  b = fab_attack(mlp_logits, x, y, seed=3, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("norm,eps", [("Linf", 0.02), ("L2", 0.12)])
@pytest.mark.slow
def test_fab_untargeted(batch, norm, eps):
  x, y = batch
  x_adv = fab_attack(mlp_logits, x, y, eps=eps, norm=norm, targeted=False, n_restarts=2, n_iter=40)
  clean, robust = _check_attack_output(x, y, x_adv, eps, norm)
  assert 0.0 < robust <= clean - 0.25, (clean, robust)


@pytest.mark.slow
def test_fab_targeted_l2(batch):
  x, y = batch
  x_adv = fab_attack(mlp_logits, x, y, eps=0.12, norm="L2", n_target_classes=2, n_iter=40)
  clean, robust = _check_attack_output(x, y, x_adv, 0.12, "L2")
  assert 0.0 < robust <= clean - 0.25, (clean, robust)


@pytest.mark.slow
def test_fab_minimal_norm_monotone_in_eps(batch):
  """Without restarts FAB's search ignores eps (it only filters the result), so a point fooled at a
  small eps is fooled, by the same image, at a larger one."""
  x, y = batch
  small = np.asarray(fab_attack(mlp_logits, x, y, eps=0.02, targeted=False, n_iter=40))
  large = np.asarray(fab_attack(mlp_logits, x, y, eps=0.06, targeted=False, n_iter=40))
  fooled_small = (small != x).reshape(len(x), -1).any(1)
  fooled_large = (large != x).reshape(len(x), -1).any(1)
  assert fooled_small.sum() < fooled_large.sum()
  assert (fooled_large | ~fooled_small).all()
  np.testing.assert_array_equal(small[fooled_small], large[fooled_small])


# ------------------------------------------------------------------------------------------------
# Square: schedule tables.


def test_p_selection_table():
  # iteration -> divisor of p_init, written out from the paper's / reference's schedule.
  table = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16, 1000: 16, 1001: 32,
           2000: 32, 2001: 64, 4000: 64, 4001: 128, 4999: 128, 6000: 128, 6001: 256, 8000: 256,
           8001: 512, 20000: 512}
  for it, div in table.items():
    assert p_selection(it, 0.8) == pytest.approx(0.8 / div), it
  # The reference's default rescaling (off in AutoAttack): iteration 50 of 1000 counts as 500.
  assert p_selection(50, 0.8, n_queries=1000, rescale_schedule=True) == pytest.approx(0.1)
  assert p_selection(51, 0.8, n_queries=1000, rescale_schedule=True) == pytest.approx(0.05)


def test_square_sizes_table():
  # 32x32x3 (CIFAR): s = round(sqrt(p * 1024)), at least 1 (Linf) / odd and at least 3 (L2).
  linf = square_sizes(5000, 0.8, 32, 32, 3, "Linf")
  expect = {0: 29, 10: 29, 11: 20, 51: 14, 201: 10, 501: 7, 1001: 5, 2001: 4, 4001: 3, 4999: 3}
  assert {k: int(linf[k]) for k in expect} == expect
  l2 = square_sizes(5000, 0.8, 32, 32, 3, "L2")
  expect = {0: 29, 11: 21, 51: 15, 201: 11, 501: 7, 1001: 5, 2001: 5, 4001: 3}
  assert {k: int(l2[k]) for k in expect} == expect
  # Never wider than the image.
  assert square_sizes(20, 1.0, 4, 4, 1, "Linf").max() == 4


def test_eta_block_s3():
  # eta(3): rows 0 / 1..2 are the rectangles [1/4, 1 + 1/4, 1/4] and -[[1/4]*3, [1/4, 5/4, 1/4]],
  # each normalised, then the whole block normalised.
  top = np.array([[0.25, 1.25, 0.25]])
  bottom = -np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
  expect = np.concatenate([top / np.linalg.norm(top), bottom / np.linalg.norm(bottom)])
  expect /= np.linalg.norm(expect)
  np.testing.assert_allclose(eta_block(3), expect, rtol=1e-12)
  for s in (3, 5, 8, 13):
    blk = eta_block(s)
    assert np.linalg.norm(blk) == pytest.approx(1.0)
    assert (blk[: s // 2] >= 0).all() and (blk[s // 2:] <= 0).all()


def test_square_windows():
  """Window masks: an s x s block at each example's own offsets; offsets uniform in 0 .. room - 1
  as the reference's random_int(0, h - s) (0 when the window fills the image)."""
  from saat_jax.autoattack.square import offsets, window

  vh, vw = jnp.array([0, 3, 5]), jnp.array([2, 0, 5])
  masks = np.asarray(window(vh, vw, 3, 8, 8))
  for m, r, c in zip(masks, [0, 3, 5], [2, 0, 5]):
    expect = np.zeros((8, 8), bool)
    expect[r:r + 3, c:c + 3] = True
    np.testing.assert_array_equal(m, expect)
  off = np.asarray(offsets(jax.random.key(0), 4000, 5))
  assert set(off.tolist()) == {0, 1, 2, 3, 4}
  assert (np.asarray(offsets(jax.random.key(0), 100, 0)) == 0).all()


# ------------------------------------------------------------------------------------------------
# Square on the tiny model.


@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 0.3)])
@pytest.mark.slow
def test_square_attack(batch, norm, eps):
  x, y = batch
  x_adv = square_attack(mlp_logits, x, y, eps=eps, norm=norm, n_queries=150, seed=0)
  clean, robust = _check_attack_output(x, y, x_adv, eps, norm)
  assert 0.0 < robust <= clean - 0.2, (clean, robust)
  again = square_attack(mlp_logits, x, y, eps=eps, norm=norm, n_queries=150, seed=0)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(x_adv))
  other = square_attack(mlp_logits, x, y, eps=eps, norm=norm, n_queries=150, seed=1)
  assert not np.array_equal(np.asarray(other), np.asarray(x_adv))


@pytest.mark.slow
def test_square_linf_stays_on_the_ball_faces(batch):
  """Every pixel of a Linf Square point sits at x +- eps or on the box (the update only ever sets
  pixels to the two faces), and more queries never lose points."""
  x, y = batch
  eps = 0.1
  few = np.asarray(square_attack(mlp_logits, x, y, eps=eps, n_queries=20, seed=0))
  more = np.asarray(square_attack(mlp_logits, x, y, eps=eps, n_queries=150, seed=0))
  changed = (more != x).reshape(len(x), -1).any(1)
  d = np.abs(more - x)[changed]
  on_face = np.isclose(d, eps, atol=1e-6) | np.isclose(more[changed], 0) | np.isclose(more[changed], 1)
  assert on_face.all()
  assert ((few != x).reshape(len(x), -1).any(1) <= changed).all()


# ------------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize("attack", [fab_attack, square_attack])
def test_invalid_arguments(batch, attack):
  x, y = batch
  with pytest.raises(ValueError, match="eps"):
    attack(mlp_logits, x, y, eps=-0.1)
  with pytest.raises(ValueError, match="unknown norm 'L1'"):
    attack(mlp_logits, x, y, eps=0.1, norm="L1")
  with pytest.raises(ValueError, match="NHWC"):
    attack(mlp_logits, x[0], y, eps=0.1)
  with pytest.raises(ValueError, match="one label per image"):
    attack(mlp_logits, x, y[:3], eps=0.1)


def test_invalid_attack_specific_arguments(batch):
  x, y = batch
  with pytest.raises(ValueError, match="n_target_classes"):
    fab_attack(mlp_logits, x, y, eps=0.1, n_target_classes=10)
  with pytest.raises(ValueError, match="p_init"):
    square_attack(mlp_logits, x, y, eps=0.1, p_init=0.0)
  with pytest.raises(ValueError, match="at least 5x5"):
    square_attack(mlp_logits, x[:, :4, :4], y, eps=0.1, norm="L2")


# ------------------------------------------------------------------------------------------------
# Against the reference implementation (pyautoattack 0.2.0, PyTorch).


@pytest.fixture(scope="module")
def torch_problem():
  try:
    import torch
  except ImportError:
    pytest.skip("torch is not importable (pip install torch==2.13.0 for the reference comparison)")
  try:
    import pyautoattack  # noqa: F401
  except ImportError:  # torch is there, so the comparison is expected to run: fail, do not skip
    pytest.fail("torch is installed but pyautoattack (the reference AutoAttack) is not: "
                "pip install -e '.[torch]' (pyautoattack==0.2.0)")
  from jax import lax

  torch.manual_seed(0)
  torch.set_num_threads(1)  # tiny model; threads only contend on a loaded machine
  h = w = 8
  net = torch.nn.Sequential(
      torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
      torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
      torch.nn.Flatten(), torch.nn.Linear(16 * (h // 2) * (w // 2), 10)).eval()
  c1w, c1b, c2w, c2b, fw, fb = (jnp.asarray(p.detach().numpy()) for p in net.parameters())

  def conv(x, k, bias, stride):  # torch OIHW kernels -> HWIO
    return lax.conv_general_dilated(x, jnp.transpose(k, (2, 3, 1, 0)), (stride, stride),
                                    ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias

  def logits_fn(x):
    a = jax.nn.relu(conv(x, c1w, c1b, 1))
    a = jax.nn.relu(conv(a, c2w, c2b, 2))
    a = jnp.transpose(a, (0, 3, 1, 2)).reshape(a.shape[0], -1)  # torch flattens C, H, W
    return a @ fw.T + fb

  x = np.random.default_rng(0).uniform(0, 1, (200, h, w, 3)).astype(np.float32)
  x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    logits_t = net(x_t).numpy()
  np.testing.assert_allclose(np.asarray(logits_fn(x)), logits_t, atol=1e-4)
  y = logits_t.argmax(1)  # clean accuracy 100%: every point is attacked

  def robust_torch(adv_t):
    with torch.no_grad():
      return net(adv_t).argmax(1).numpy() == y[: len(adv_t)]

  def robust_jax(adv):
    return np.asarray(jnp.argmax(logits_fn(adv), axis=1)) == y[: len(adv)]

  return torch, net, logits_fn, x, x_t, y, robust_torch, robust_jax


@pytest.mark.torch
@pytest.mark.parametrize("norm,eps,targeted", [("Linf", 0.015, True), ("L2", 0.2, True),
                                               ("Linf", 0.015, False)])
@pytest.mark.slow
def test_fab_matches_reference(torch_problem, norm, eps, targeted):
  """FAB-T with AutoAttack's standard settings (9 targets, 1 restart, 100 iterations), and
  untargeted FAB with one restart. Without random restarts FAB is deterministic, so the two agree
  point by point up to float32 rounding; allow 2 of 100 points to flip."""
  from pyautoattack.fab_pt import FABAttack_PT

  torch, net, logits_fn, x, x_t, y, robust_torch, robust_jax = torch_problem
  n = 100
  ref = FABAttack_PT(net, norm=norm, eps=eps, seed=0, targeted=targeted)
  ref.n_target_classes, ref.n_restarts, ref.n_iter = 9, 1, 100  # AutoAttack's _set_version('standard')
  rob_ref = robust_torch(ref.perturb(x_t[:n], torch.from_numpy(y[:n])))
  x_adv = fab_attack(logits_fn, x[:n], y[:n], eps=eps, norm=norm, targeted=targeted)
  rob = robust_jax(x_adv)
  assert (_dist(x_adv, x[:n], norm) <= eps * (1 + 1e-5)).all()
  print(f"FAB{'-T' if targeted else ''} {norm} eps={eps}: robust accuracy reference "
        f"{rob_ref.mean():.3f}, ours {rob.mean():.3f}, {(rob != rob_ref).sum()} points differ")
  assert 0.2 <= rob_ref.mean() <= 0.8  # mid-range, so the comparison is informative
  assert (rob != rob_ref).sum() <= 2


@pytest.mark.torch
@pytest.mark.parametrize("norm,eps", [("Linf", 0.04), ("L2", 0.4)])
@pytest.mark.slow
def test_square_matches_reference(torch_problem, norm, eps):
  """Square (300 queries, p_init 0.8, no schedule rescaling as in AutoAttack) on 200 points, 4
  seeds each; the random streams differ, so only the statistics can agree. Measured over 12 seeds
  on this problem, one run's robust accuracy has std 0.013 in either implementation (reference
  0.428 +- 0.013 Linf, 0.500 +- 0.013 L2; ours 0.420 +- 0.012, 0.499 +- 0.012). The mean of 4
  seeds then has std ~0.0065 and the difference of the two means ~0.009, so 0.03 (6 of 200 points)
  is a ~3.3-sigma bound that a wrong schedule, window placement or acceptance rule would exceed."""
  from pyautoattack.square import SquareAttack

  torch, net, logits_fn, x, x_t, y, robust_torch, robust_jax = torch_problem
  y_t = torch.from_numpy(y)
  n_queries, seeds = 300, range(4)
  acc_ref, acc = [], []
  for seed in seeds:
    ref = SquareAttack(net, norm=norm, n_queries=n_queries, eps=eps, p_init=0.8, n_restarts=1,
                       seed=seed, resc_schedule=False)
    acc_ref.append(robust_torch(ref.perturb(x_t, y_t)).mean())
    x_adv = square_attack(logits_fn, x, y, eps=eps, norm=norm, n_queries=n_queries, seed=seed)
    assert (_dist(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    acc.append(robust_jax(x_adv).mean())
  print(f"Square {norm} eps={eps}: robust accuracy reference {np.round(acc_ref, 3)} (mean "
        f"{np.mean(acc_ref):.3f}), ours {np.round(acc, 3)} (mean {np.mean(acc):.3f})")
  assert 0.2 <= np.mean(acc_ref) <= 0.8
  assert abs(np.mean(acc) - np.mean(acc_ref)) <= 0.03
