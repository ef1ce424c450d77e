"""APGD and the AutoAttack driver in JAX: invariants, a slow line-by-line APGD, losses, errors.

Everything runs on a tiny pure-jnp CNN (8x8x3 inputs, 10 classes, fixed random weights), so the
file needs neither torch nor data and takes well under a minute on two CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.autoattack import (AutoAttackResult, apgd_attack, apgd_targeted_attack, attack_settings,
                                 autoattack, checkpoint_schedule, dlr_loss, dlr_targeted_loss)
from saat_jax.autoattack import apgd as apgd_mod
from saat_jax.autoattack.apgd import apgd_single_run, ce_loss
from saat_jax.conv_layout import canonicalize_convs

N = 48
EPS_LINF = 3 / 255
EPS_L2 = 0.15


@functools.cache
def params():
  """The model's weights, made on first use (no JAX work while the module is imported, at
  collection), their random draws as one compiled program rather than one per eager operation."""
  w1, w2, w3, b3 = jax.jit(_draws)()  # the same bits as drawn one by one; scaled as before
  return dict(w1=w1 * 0.6, w2=w2 * 0.3, w3=w3 * 0.15, b3=b3 * 0.1)


def _draws():
  k = jax.random.split(jax.random.key(0), 4)
  return [jax.random.normal(k[i], shape) for i, shape in enumerate([(3, 3, 3, 8), (3, 3, 8, 16), (4 * 4 * 16, 10), (10,)])]



def logits_fn(x):
  """conv3x3(8) - relu - conv3x3/2(16) - relu - dense(10), NHWC."""
  dn, p = ("NHWC", "HWIO", "NHWC"), params()
  h = jax.nn.relu(jax.lax.conv_general_dilated(x - 0.5, p["w1"], (1, 1), "SAME", dimension_numbers=dn))
  h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["w2"], (2, 2), "SAME", dimension_numbers=dn))
  return h.reshape(h.shape[0], -1) @ p["w3"] + p["b3"]


@pytest.fixture(scope="module")
def data():
  x = np.asarray(jax.jit(lambda: jax.random.uniform(jax.random.key(1), (N, 8, 8, 3)))(), np.float32)
  pred = np.asarray(jnp.argmax(logits_fn(x), 1)).astype(np.int32)
  y = pred.copy()
  y[::8] = (pred[::8] + 1) % 10  # a few clean mistakes: AutoAttack must leave them alone
  return x, y


def _norm(d, norm):
  d = np.asarray(d, np.float64).reshape(d.shape[0], -1)
  return np.abs(d).max(1) if norm == "Linf" else np.sqrt((d * d).sum(1))


def _robust(x_adv, y):
  return np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), 1)) == y


# ----------------------------------------------------------------------------- schedule and losses


def test_checkpoint_schedule_by_hand():
  # p_j of the paper in the reference's integers: windows 22, 19, 16, 13, 10, 7, then 6 (the minimum)
  assert checkpoint_schedule(100) == [(21, 22), (40, 19), (56, 16), (69, 13), (79, 10), (86, 7), (92, 6),
                                      (98, 6)]
  # n_iter=10: first window max(int(2.2), 1) = 2, then 1 each (min 1, decrement 1)
  assert checkpoint_schedule(10) == [(1, 2)] + [(i, 1) for i in range(2, 10)]
  assert checkpoint_schedule(1) == [(0, 1)]


def test_losses_match_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(64, 10)).astype(np.float32) * 3
  y = rng.integers(0, 10, 64)
  y[:8] = z[:8].argmax(1)  # some rows correctly classified
  t = (y + 1 + rng.integers(0, 9, 64)) % 10
  want_dlr, want_t, want_ce = [], [], []
  for zi, yi, ti in zip(z.astype(np.float64), y, t):
    s = np.sort(zi)[::-1]
    other = max(zi[j] for j in range(10) if j != yi)
    want_dlr.append(-(zi[yi] - other) / (s[0] - s[2] + 1e-12))
    want_t.append(-(zi[yi] - zi[ti]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12))
    want_ce.append(np.log(np.exp(zi).sum()) - zi[yi])
  np.testing.assert_allclose(dlr_loss(jnp.asarray(z), jnp.asarray(y)), want_dlr, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dlr_targeted_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(t)), want_t,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ce_loss(jnp.asarray(z), jnp.asarray(y)), want_ce, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_canonicalize_convs_same_gradient():
  """The CPU layout rewrite changes no value, whatever the convolution's dimension numbers."""
  k = jax.random.split(jax.random.key(3), 3)
  w_nchw = jax.random.normal(k[0], (6, 3, 3, 3))  # OIHW
  w_grp = jax.random.normal(k[1], (3, 3, 3, 6))  # HWIO with 2 groups of 3 -> 6

  def f(x):
    a = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), w_nchw, (2, 1), "SAME",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    b = jax.lax.conv_general_dilated(x[..., :3], w_grp[:, :, :, :], (1, 1), "VALID", rhs_dilation=(2, 1),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    c = jax.lax.conv_general_dilated(jnp.concatenate([x, x], -1), w_grp, (1, 1), "SAME",
                                     feature_group_count=2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(a)) + jnp.sum(b ** 2) + jnp.sum(jax.nn.relu(c))

  x = jax.random.uniform(k[2], (4, 9, 7, 3))
  g = jax.grad(f)
  np.testing.assert_allclose(jax.jit(canonicalize_convs(g))(x), jax.jit(g)(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- a slow APGD


def slow_apgd(x, y, x0, *, eps, norm, loss, n_iter, y_target=None, rho=0.75):
  """``attack_single_run`` of the reference, statement by statement, in numpy float32."""
  f32 = np.float32

  @jax.jit
  def vg(xa):
    def s(xi):
      z = logits_fn(xi)
      if loss == "ce":
        l = ce_loss(z, y)
      elif loss == "dlr":
        l = dlr_loss(z, y)
      else:
        l = dlr_targeted_loss(z, y, y_target)
      return l.sum(), (l, z)
    (_, (l, z)), g = jax.value_and_grad(s, has_aux=True)(xa)
    return l, z, g

  def grad_at(xa):
    l, z, g = vg(jnp.asarray(xa))
    return np.array(l), np.array(z), np.array(g)

  def l2(v):
    return np.sqrt((v.astype(f32) ** 2).reshape(v.shape[0], -1).sum(1)).reshape(-1, 1, 1, 1)

  def normalize(v):
    if norm == "Linf":
      t = np.abs(v).reshape(v.shape[0], -1).max(1).reshape(-1, 1, 1, 1)
    else:
      t = l2(v)
    return v / (t + f32(1e-12))

  def proj(v):
    if norm == "Linf":
      return np.clip(np.minimum(np.maximum(v, x - f32(eps)), x + f32(eps)), 0, 1)
    return np.clip(x + normalize(v - x) * np.minimum(f32(eps), l2(v - x)), 0, 1)

  n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(
      int(0.03 * n_iter), 1)
  x_adv = np.clip(x0, 0, 1).astype(f32)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((n_iter, x.shape[0]), f32)
  l, z, grad = grad_at(x_adv)
  grad_best = grad.copy()
  acc = z.argmax(1) == y
  loss_best = l.copy()
  step = np.full((x.shape[0], 1, 1, 1), 2 * f32(eps), f32)
  x_adv_old = x_adv.copy()
  k, counter3 = n_iter_2, 0
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(x.shape[0], bool)
  n_halved = 0
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = f32(0.75) if i > 0 else f32(1.0)
    if norm == "Linf":
      x1 = proj(x_adv + step * np.sign(grad))
    else:
      x1 = proj(x_adv + step * normalize(grad))
    x_adv = proj(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
    l, z, grad = grad_at(x_adv)
    pred = z.argmax(1) == y
    acc = np.minimum(acc, pred)
    x_best_adv[~pred] = x_adv[~pred]
    loss_steps[i] = l
    ind = l > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], l[ind]
    counter3 += 1
    if counter3 == k:
      t = np.zeros(x.shape[0])
      for c in range(k):
        t += loss_steps[i - c] > loss_steps[i - c - 1]  # i - c - 1 = -1 reads the last row
      fl = (t <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      step[fl] /= 2
      x_adv[fl], grad[fl] = x_best[fl], grad_best[fl]
      n_halved += int(fl.sum())
      k, counter3 = max(k - size_decr, n_iter_min), 0
  return x_best, acc, loss_best, x_best_adv, n_halved


# (L2 with the untargeted DLR is left out: once a point is fooled it drives z_pi1 - z_pi3 towards 0,
# where the loss is ill-conditioned and float32 round-off in the l_2 norms changes the trajectory.)
@pytest.mark.parametrize("norm,loss,eps", [("Linf", "ce", EPS_LINF), ("L2", "ce", EPS_L2),
                                           ("Linf", "dlr", EPS_LINF), ("L2", "dlr-targeted", EPS_L2)])
@pytest.mark.slow
def test_single_run_matches_slow_reference(data, norm, loss, eps):
  x, y = data
  n_iter = 30
  rng = np.random.default_rng(5)
  if norm == "Linf":
    x0 = np.clip(x + eps * rng.uniform(-1, 1, x.shape), 0, 1).astype(np.float32)
  else:
    g = rng.normal(size=x.shape)
    x0 = np.clip(x + eps * g / np.sqrt((g ** 2).reshape(N, -1).sum(1)).reshape(-1, 1, 1, 1), 0, 1)
    x0 = x0.astype(np.float32)
  y_target = np.asarray(apgd_mod.target_classes(logits_fn(x), 2))
  want = slow_apgd(x, y, x0, eps=eps, norm=norm, loss=loss, n_iter=n_iter, y_target=y_target)
  assert want[1].any() and want[4] > 0, "the case must keep robust points and halve some step sizes"
  got = apgd_single_run(logits_fn, jnp.asarray(x), jnp.asarray(y), jnp.asarray(y_target), jax.random.key(0),
                        eps, jnp.ones(N, bool), jnp.asarray(x0), norm=norm, loss=loss, n_iter=n_iter,
                        rho=0.75)
  x_best, acc, loss_best, x_best_adv, _ = (np.asarray(v) for v in got)
  np.testing.assert_array_equal(acc, want[1])
  np.testing.assert_allclose(loss_best, want[2], rtol=1e-4, atol=1e-5)
  atol = 1e-5 if norm == "Linf" else 1e-4  # l_2 norms: a different float32 summation order
  np.testing.assert_allclose(x_best, want[0], atol=atol)
  np.testing.assert_allclose(x_best_adv, want[3], atol=atol)


# ----------------------------------------------------------------------------- attacks


def pgd_baseline(x, y, *, eps, steps, seed):
  """Plain l_inf PGD on the cross-entropy: random start, step eps/4, sign gradient, any-iterate success."""
  y = jnp.asarray(y)
  g = jax.grad(lambda xa: ce_loss(logits_fn(xa), y).sum())

  @jax.jit
  def run(x0):
    xa = jnp.clip(x0 + jax.random.uniform(jax.random.key(seed), x0.shape, minval=-eps, maxval=eps), 0, 1)

    def body(_, c):
      xa, fooled = c
      xa = jnp.clip(jnp.clip(xa + eps / 4 * jnp.sign(g(xa)), x0 - eps, x0 + eps), 0, 1)
      return xa, fooled | (jnp.argmax(logits_fn(xa), 1) != y)

    return jax.lax.fori_loop(0, steps, body, (xa, jnp.argmax(logits_fn(xa), 1) != y))[1]

  return ~np.asarray(run(jnp.asarray(x)))


@pytest.mark.parametrize("norm,eps", [("Linf", EPS_LINF), ("L2", EPS_L2)])
@pytest.mark.slow
def test_apgd_valid_and_strong(data, norm, eps):
  x, y = data
  clean = _robust(x, y)
  x_ce = np.asarray(apgd_attack(logits_fn, x, y, eps=eps, norm=norm, n_iter=100))
  x_t = np.asarray(apgd_targeted_attack(logits_fn, x, y, eps=eps, norm=norm, n_iter=100, n_target_classes=3))
  for xa in (x_ce, x_t):
    assert xa.shape == x.shape and xa.dtype == np.float32
    assert np.all(_norm(xa - x, norm) <= eps * (1 + 1e-5) + 1e-6)
    assert xa.min() >= 0 and xa.max() <= 1
    rob = _robust(xa, y)
    assert np.all(rob <= clean)  # never worse than no attack
    np.testing.assert_array_equal(xa[~clean], x[~clean])  # clean mistakes returned unchanged
    np.testing.assert_array_equal(xa[rob], x[rob])  # points not fooled come back as x
  rob_ce = _robust(x_ce, y)
  assert 0 < rob_ce.sum() < clean.sum(), "eps should give a mid-range robust accuracy"
  if norm == "Linf":
    # at least as strong as plain PGD with the same number of iterations
    rob_pgd = pgd_baseline(x, y, eps=eps, steps=100, seed=0) & clean
    assert rob_ce.sum() <= rob_pgd.sum(), (rob_ce.sum(), rob_pgd.sum())


@pytest.mark.slow
def test_restarts_only_help(data):
  x, y = data
  one = _robust(np.asarray(apgd_attack(logits_fn, x, y, eps=EPS_LINF, loss="dlr", n_iter=20, n_restarts=1)), y)
  three = _robust(np.asarray(apgd_attack(logits_fn, x, y, eps=EPS_LINF, loss="dlr", n_iter=20, n_restarts=3)), y)
  assert np.all(three <= one)  # the first run of both is the same; later runs only add successes


# ----------------------------------------------------------------------------- the driver


@pytest.fixture(scope="module")
def aa_linf(data):
  x, y = data
  return autoattack(logits_fn, x, y, eps=EPS_LINF, version="custom", attacks_to_run=["apgd-ce", "apgd-t"],
                    batch_size=32)


@pytest.mark.slow
def test_autoattack_result_valid(data, aa_linf):
  x, y = data
  res = aa_linf
  assert isinstance(res, AutoAttackResult)
  assert res["robust"] is res.robust and res["x_adv"] is res.x_adv
  assert list(res.robust_accuracy) == ["clean", "apgd-ce", "apgd-t"]
  clean = _robust(x, y)
  assert res.robust_accuracy["clean"] == pytest.approx(clean.mean())
  accs = list(res.robust_accuracy.values())
  assert all(a >= b for a, b in zip(accs, accs[1:])), accs  # monotone non-increasing
  robust = np.asarray(res.robust)
  assert res.robust_accuracy["apgd-t"] == pytest.approx(robust.mean())
  xa = np.asarray(res.x_adv)
  assert np.all(_norm(xa - x, "Linf") <= EPS_LINF * (1 + 1e-5) + 1e-6) and xa.min() >= 0 and xa.max() <= 1
  np.testing.assert_array_equal(_robust(xa, y), robust)
  np.testing.assert_array_equal(np.asarray(res.y_adv), np.asarray(jnp.argmax(logits_fn(xa), 1)))
  assert np.all(robust <= clean) and 0 < robust.sum() < clean.sum()


@pytest.mark.slow
def test_autoattack_deterministic(data, aa_linf):
  x, y = data
  again = autoattack(logits_fn, x, y, eps=EPS_LINF, version="custom", attacks_to_run=["apgd-ce", "apgd-t"],
                     batch_size=32)
  np.testing.assert_array_equal(np.asarray(again.x_adv), np.asarray(aa_linf.x_adv))
  np.testing.assert_array_equal(np.asarray(again.robust), np.asarray(aa_linf.robust))
  assert again.robust_accuracy == aa_linf.robust_accuracy


@pytest.mark.slow
def test_autoattack_l2_and_eps_zero(data, capsys):
  x, y = data
  clean = _robust(x, y)
  res = autoattack(logits_fn, x, y, eps=EPS_L2, norm="L2", version="custom", attacks_to_run=["apgd-dlr"])
  xa = np.asarray(res.x_adv)
  assert np.all(_norm(xa - x, "L2") <= EPS_L2 * (1 + 1e-5) + 1e-6) and xa.min() >= 0 and xa.max() <= 1
  assert np.asarray(res.robust).sum() < clean.sum()
  zero = autoattack(logits_fn, x, y, eps=0.0, version="custom", attacks_to_run=["apgd-ce"], verbose=True,
                    progress=True)
  out = capsys.readouterr().out
  assert "clean accuracy" in out and "robust accuracy after APGD-CE" in out
  np.testing.assert_array_equal(np.asarray(zero.robust), clean)
  np.testing.assert_array_equal(np.asarray(zero.x_adv), x)
  assert zero.robust_accuracy["apgd-ce"] == zero.robust_accuracy["clean"]


def test_version_settings():
  # the reference's _set_version / constructor defaults
  std = attack_settings("standard", "Linf")
  assert std["apgd-ce"]["n_restarts"] == 1 and std["apgd-ce"]["n_iter"] == 100
  assert std["apgd-t"]["n_target_classes"] == 9 and std["apgd-t"]["n_restarts"] == 1
  assert std["fab-t"]["n_target_classes"] == 9 and std["fab-t"]["n_restarts"] == 1
  assert std["square"]["n_queries"] == 5000 and std["square"]["p_init"] == 0.8
  plus = attack_settings("plus", "L2")
  assert plus["apgd-ce"]["n_restarts"] == 5 and plus["apgd-dlr"]["n_restarts"] == 5
  assert plus["fab"]["n_restarts"] == 5 and not plus["fab"]["targeted"]
  rand = attack_settings("rand", "Linf")
  assert rand["apgd-ce"]["eot_iter"] == 20 and rand["apgd-ce"]["n_restarts"] == 1


@pytest.mark.slow
def test_randomized_model_eot(data):
  """A model taking ``key`` gets fresh draws inside APGD (version='rand'), and results stay valid."""
  x, y = data

  def noisy(xa, key):
    return logits_fn(xa) + 0.05 * jax.random.normal(key, (xa.shape[0], 10))

  with pytest.warns(UserWarning, match="randomised"):  # a large eps: every point falls at once
    autoattack(noisy, x[:4], y[:4], eps=0.5, version="custom", attacks_to_run=["apgd-ce"])
  stats = {}
  xa = apgd_attack(noisy, x[:8], y[:8], eps=EPS_LINF, n_iter=5, eot_iter=3, stats=stats)
  assert np.all(_norm(np.asarray(xa) - x[:8], "Linf") <= EPS_LINF * (1 + 1e-5) + 1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-0.1), "eps must be finite and >= 0"),
    (dict(eps=float("nan")), "eps must be finite and >= 0"),
    (dict(eps="big"), "eps must be a number"),
    (dict(eps=0.1, norm="L1"), "use norm='Linf' or norm='L2'"),
    (dict(eps=0.1, version="fast"), "unknown AutoAttack version"),
    (dict(eps=0.1, attacks_to_run=["apgd-ce"]), "only used with version='custom'"),
    (dict(eps=0.1, version="custom"), "needs attacks_to_run"),
    (dict(eps=0.1, version="custom", attacks_to_run=["apgd-ce", "pgd"]), r"unknown attack name\(s\) \['pgd'\]"),
    (dict(eps=0.1, version="custom", attacks_to_run=["apgd-ce", "apgd-ce"]), "more than once"),
    (dict(eps=0.1, batch_size=0), "batch_size must be a positive integer"),
])
def test_autoattack_bad_arguments(data, kwargs, match):
  x, y = data
  with pytest.raises(ValueError, match=match):
    autoattack(logits_fn, x[:4], y[:4], **kwargs)


def test_autoattack_bad_inputs(data):
  x, y = data
  with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*inside logits_fn"):
    autoattack(logits_fn, x[:4] * 2 - 0.5, y[:4], eps=0.1)
  with pytest.raises(ValueError, match=r"one integer label per image, shape \(4,\)"):
    autoattack(logits_fn, x[:4], y[:3], eps=0.1)
  with pytest.raises(ValueError, match="NHWC"):
    autoattack(logits_fn, x[0], y[:1], eps=0.1)
  with pytest.raises(ValueError, match="x.astype"):
    autoattack(logits_fn, (x[:4] * 255).astype(np.uint8), y[:4], eps=0.1)
  with pytest.raises(ValueError, match="integer class labels"):
    autoattack(logits_fn, x[:4], y[:4].astype(np.float32), eps=0.1)
  with pytest.raises(ValueError, match=r"labels y must lie in \[0, 9\]"):
    autoattack(logits_fn, x[:4], y[:4] + 10, eps=0.1)
  with pytest.raises(ValueError, match="NaN"):
    autoattack(logits_fn, np.full_like(x[:4], np.nan), y[:4], eps=0.1)


def test_apgd_bad_arguments(data):
  x, y = data
  with pytest.raises(ValueError, match="unknown loss"):
    apgd_attack(logits_fn, x, y, eps=0.1, loss="hinge")
  with pytest.raises(ValueError, match="needs y_target"):
    apgd_attack(logits_fn, x, y, eps=0.1, loss="dlr-targeted")
  with pytest.raises(ValueError, match="n_iter must be an integer >= 1"):
    apgd_attack(logits_fn, x, y, eps=0.1, n_iter=0)
  with pytest.raises(ValueError, match=r"n_target_classes must lie in \[1, 9\]"):
    apgd_targeted_attack(logits_fn, x, y, eps=0.1, n_target_classes=10)
  with pytest.raises(ValueError, match="at least 3 classes"):
    apgd_attack(lambda xa: logits_fn(xa)[:, :2], x, y % 2, eps=0.1, loss="dlr")


def test_final_check_catches_a_broken_attack(data, monkeypatch):
  """An attack that leaves the eps-ball must make autoattack raise, not report a low accuracy."""
  from saat_jax.autoattack import core

  x, y = data

  def broken(name, fn, xb, yb, mask, **kw):
    return jnp.clip(xb + 0.2 * jnp.sign(jnp.asarray(xb) - 0.5), 0, 1)

  monkeypatch.setattr(core, "_run_attack", broken)
  with pytest.raises(RuntimeError, match="outside the Linf ball"):
    autoattack(logits_fn, x, y, eps=EPS_LINF, version="custom", attacks_to_run=["apgd-ce"])
