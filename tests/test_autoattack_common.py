"""The shared pieces of the AutoAttack files (saat_jax/autoattack/common.py): argument checks, norms
and projection, and the "gather the points not fooled yet, run, scatter back" driver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.autoattack.batching import bucket
from saat_jax.autoattack.common import (attack_unfooled, check_batch, check_eps, check_int, check_norm,
                                        lp_norm, lp_norm_np, project, target_restart_passes)


def test_checks():
  assert check_eps("f", 0.5) == 0.5 and check_norm("f", "L2") == "L2" and check_int("f: n", 3, 0) == 3
  for bad in (-1.0, float("nan"), float("inf"), True, "x"):
    with pytest.raises(ValueError, match="f: eps"):
      check_eps("f", bad)
  with pytest.raises(ValueError, match="f: unknown norm 'L1'"):
    check_norm("f", "L1")
  for bad in (-1, 1.5, True, None):
    with pytest.raises(ValueError, match=r"f: n must be an integer >= 0"):
      check_int("f: n", bad, 0)
  x, y = check_batch("f", np.zeros((2, 3, 3, 1), np.float64), np.array([0, 1], np.int64), images=True)
  assert x.dtype == jnp.float32 and y.dtype == jnp.int32
  with pytest.raises(ValueError, match="NHWC"):
    check_batch("f", np.zeros((2, 9)), np.array([0, 1]), images=True)
  with pytest.raises(ValueError, match="floating point"):
    check_batch("f", np.zeros((2, 9), np.uint8), np.array([0, 1]), images=False)
  with pytest.raises(ValueError, match="integer class labels"):
    check_batch("f", np.zeros((2, 9)), np.array([0.0, 1.0]), images=False)


def test_norms_and_projection():
  v = np.asarray(jax.random.normal(jax.random.key(0), (5, 4, 4, 3)))
  np.testing.assert_allclose(np.asarray(lp_norm(jnp.asarray(v), "Linf")), np.abs(v).reshape(5, -1).max(1),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(lp_norm(jnp.asarray(v), "L2")), np.linalg.norm(v.reshape(5, -1), axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(lp_norm_np(v, "L2"), np.linalg.norm(v.reshape(5, -1).astype(np.float64), axis=1),
                             rtol=1e-12)
  x = np.full((5, 4, 4, 3), 0.5, np.float32)
  for norm, eps in (("Linf", 0.1), ("L2", 0.3)):
    p = np.asarray(project(jnp.asarray(x + v), jnp.asarray(x), eps, norm))
    assert np.all(lp_norm_np(p - x, norm) <= eps * (1 + 1e-5)) and p.min() >= 0 and p.max() <= 1
    # a point inside the ball and the box is left where it is
    inside = x + 0.01 * v / np.abs(v).max()
    np.testing.assert_allclose(np.asarray(project(jnp.asarray(inside), jnp.asarray(x), eps, norm)), inside,
                               atol=1e-7)


def test_attack_unfooled_gathers_runs_and_scatters_back():
  n = 11
  x = jnp.arange(n, dtype=jnp.float32)[:, None]
  robust = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
  seen = {}

  def attack(rows, real):
    seen["rows"], seen["real"] = rows.copy(), real.copy()
    # fools the rows of odd index (padding rows claim to be fooled too: they must be ignored)
    return jnp.asarray(-100.0 - rows, jnp.float32)[:, None], (rows % 2 == 1) | ~real

  before = robust.copy()
  x_adv, rows, fooled = attack_unfooled(attack, x, robust)
  want = np.flatnonzero(before)
  assert len(seen["rows"]) == bucket(want.size)
  np.testing.assert_array_equal(seen["rows"][seen["real"]], want)
  assert np.all(seen["rows"][~seen["real"]] == want[0])
  hit = want[want % 2 == 1]
  np.testing.assert_array_equal(np.flatnonzero(before & ~robust), hit)
  expect = np.arange(n, dtype=np.float32)
  expect[hit] = -100.0 - hit
  np.testing.assert_array_equal(np.asarray(x_adv)[:, 0], expect)
  np.testing.assert_array_equal(rows[fooled], hit)
  # numpy arrays are updated in place, and idx restricts the gathered rows
  x_np = np.zeros((n, 1), np.float32)
  robust = before.copy()
  out, _, _ = attack_unfooled(attack, x_np, robust, idx=np.array([3, 5]), cap=4)
  assert out is x_np and x_np[3, 0] == -103.0 and x_np[5, 0] == -105.0 and np.count_nonzero(x_np) == 2
  assert not robust[3] and not robust[5] and robust[6]


def test_target_restart_passes_order_keys_and_early_stop():
  robust = np.ones(6, bool)
  calls = []

  def attack(t, r, key, rows, real):
    calls.append((t, r, jax.random.key_data(key).tolist(), int(real.sum())))
    fooled = np.zeros(len(rows), bool)
    fooled[:2] = True                                  # two more points fall per pass
    return jnp.zeros((len(rows), 1)), fooled

  target_restart_passes(attack, jnp.ones((6, 1)), robust, seed=7, n_targets=3, n_restarts=2)
  base = jax.random.key(7)
  keys = [jax.random.key_data(jax.random.fold_in(jax.random.fold_in(base, t), r)).tolist()
          for t, r in ((0, 0), (0, 1), (1, 0))]
  assert calls == [(0, 0, keys[0], 6), (0, 1, keys[1], 4), (1, 0, keys[2], 2)]
  assert not robust.any()
