"""The self-checks of the AutoAttack evaluation (saat_jax/autoattack/checks.py): each flag fires on a
model built to have the flagged property and stays quiet on a plain one, the re-verification of the
adversarial examples raises on corrupted ones, and the accuracy-order check reports PGD above
natural. Tiny models (SmallCNN of saat_jax.models, width 4, on 8x8 grey images): a few seconds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.autoattack import VERSION_ATTACKS, attack_settings, autoattack, checks, core
from saat_jax.models.small import SmallCNN

N = 24
EPS = 0.1

MODEL = SmallCNN(num_classes=10, width=4, use_bn=False)


@functools.lru_cache(maxsize=1)
def variables():
  """Built on first use, not at import: mutation testing forks workers from a process that has
  imported this module, and XLA's threads do not survive a fork (docs/mutation.md)."""
  with jax.ensure_compile_time_eval():  # concrete arrays even when first called inside a jit trace
    return MODEL.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


@jax.jit
def logits_fn(x):
  return MODEL.apply(variables(), x, train=False)


@pytest.fixture(scope="module")
def data():
  x = np.asarray(jax.random.uniform(jax.random.key(1), (N, 8, 8, 1)), np.float32)
  y = np.asarray(jnp.argmax(logits_fn(x), 1)).astype(np.int32)
  y[::6] = (y[::6] + 1) % 10  # a few clean mistakes
  return x, y


def _by_name(records):
  return {r["check"]: r for r in records}


def _collect():
  msgs = []
  return msgs, msgs.append


def _apgd_ce(fn, x, y, eps=0.5):
  """AutoAttack with one short APGD-CE run (10 iterations, no restart: the flags do not depend on
  the attack's strength), reporting flags into a list."""
  msgs, warn = _collect()
  full = core.attack_settings

  def short(version, norm):
    s = full(version, norm)
    s["apgd-ce"].update(n_iter=10, n_restarts=1)
    return s

  core.attack_settings = short
  try:
    res = autoattack(fn, x, y, eps=eps, version="custom", attacks_to_run=["apgd-ce"], warn=warn)
  finally:
    core.attack_settings = full
  return res, _by_name(res.checks), msgs


@pytest.fixture(scope="module")
def plain(data):
  x, y = data
  return _apgd_ce(logits_fn, x, y, eps=EPS)


@pytest.mark.slow
def test_plain_model_passes_every_check(plain):
  res, recs, msgs = plain
  assert msgs == []
  for name in ("randomized", "probabilities", "zero_gradients", "dynamic", "n_classes", "verification"):
    assert recs[name]["status"] == "ok", recs[name]
  assert recs["settings"]["status"] == "skipped"   # 'custom' has no reference counts
  assert recs["verification"]["n_verified"] == int(np.sum(~np.asarray(res.robust))) > 0
  assert recs["verification"]["max_distance"] <= EPS * (1 + 1e-5)
  assert recs["zero_gradients"]["n_checked"] == N


@pytest.mark.slow
def test_randomised_model_is_flagged(data):
  x, y = data

  def noisy(xa, key):  # a noise defence: every call draws fresh noise (the same for every point of a
    return logits_fn(xa + 0.05 * jax.random.normal(key, (1,) + xa.shape[1:]))  # batch, of any size)

  res, recs, msgs = _apgd_ce(noisy, x, y)
  assert recs["randomized"]["status"] == "flagged" and recs["randomized"]["max_output_difference"] > 1e-4
  assert any("randomized" in m and "version='rand'" in m for m in msgs)
  # without a key argument: hidden randomness shows as different outputs of un-jitted calls
  rng = np.random.default_rng(0)
  rec = checks.check_randomized(lambda xa: logits_fn(xa) + rng.normal(size=(xa.shape[0], 10)), x, y,
                                version="standard", warn=None)
  assert rec["status"] == "flagged"
  # a deterministic model under version='rand' is flagged the other way round
  rec = checks.check_randomized(logits_fn, x, y, version="rand", warn=None)
  assert rec["status"] == "flagged" and "deterministic" in rec["message"]
  assert checks.check_randomized(noisy, x, y, version="rand", warn=None)["status"] == "ok"


@pytest.mark.slow
def test_probabilities_are_flagged(data):
  x, y = data
  res, recs, msgs = _apgd_ce(jax.jit(lambda xa: jax.nn.softmax(logits_fn(xa))), x, y)
  assert recs["probabilities"]["status"] == "flagged"
  assert any("probabilities" in m for m in msgs)


@pytest.mark.slow
def test_zero_gradients_are_flagged(data):
  x, y = data
  res, recs, msgs = _apgd_ce(jax.jit(lambda xa: logits_fn(jax.lax.stop_gradient(xa))), x, y)
  assert recs["zero_gradients"]["status"] == "flagged" and recs["zero_gradients"]["n_zero"] == N
  assert any("zero input gradient" in m for m in msgs)
  # a quantised input: the model is piecewise constant, its gradient is zero almost everywhere
  rec = checks.check_zero_gradients(jax.jit(lambda xa: logits_fn(jnp.round(xa * 4) / 4)), x, y, warn=None)
  assert rec["status"] == "flagged" and rec["n_zero"] == N
  # masking on a few points only is counted as such
  some = jax.jit(lambda xa: jnp.where((jnp.arange(xa.shape[0]) < 3)[:, None],
                                      logits_fn(jax.lax.stop_gradient(xa)), logits_fn(xa)))
  assert checks.check_zero_gradients(some, x, y, warn=None)["n_zero"] == 3


@pytest.mark.slow
def test_dynamic_model_is_flagged(data):
  x, y = data

  def adaptive(xa):  # test-time adaptation: one gradient step on the input's entropy, then classify
    def entropy(z):
      p = jax.nn.softmax(logits_fn(z))
      return -jnp.sum(p * jnp.log(p + 1e-12))
    return logits_fn(xa - 0.01 * jax.grad(entropy)(xa))

  rec = checks.check_dynamic(jax.jit(adaptive), x, warn=None)
  assert rec["status"] == "flagged" and "grad" in rec["calls"]
  assert checks.check_dynamic(logits_fn, x, warn=None)["status"] == "ok"
  # under another profiler (cProfile) the check steps aside and leaves that profiler in place
  import cProfile
  prof = cProfile.Profile()
  prof.enable()
  try:
    rec = checks.check_dynamic(jax.jit(adaptive), x, warn=None)
  finally:
    prof.disable()
  assert rec["status"] == "skipped"


def test_settings_against_the_reference_counts():
  for version in ("standard", "plus", "rand"):
    s = attack_settings(version, "Linf")
    rec = checks.check_settings(version, s, VERSION_ATTACKS[version], 10, warn=None)
    assert rec["status"] == "ok", (version, rec)
  s = attack_settings("standard", "Linf")
  s["apgd-t"]["n_iter"] = 20
  s["square"]["n_queries"] = 1000
  msgs, warn = _collect()
  rec = checks.check_settings("standard", s, VERSION_ATTACKS["standard"], 10, warn=warn)
  assert rec["status"] == "flagged"
  assert rec["shortfalls"] == ["apgd-t n_iter=20 < 100", "square n_queries=1000 < 5000"]
  assert len(msgs) == 1
  rec = checks.check_settings("standard", attack_settings("standard", "Linf"), ["apgd-ce", "apgd-t"], 10,
                              warn=None)
  assert rec["shortfalls"] == ["fab-t is not run", "square is not run"]
  # fewer target classes than 9 are enough when they are all the wrong classes there are
  s = attack_settings("standard", "Linf")
  s["apgd-t"]["n_target_classes"] = s["fab-t"]["n_target_classes"] = 4
  assert checks.check_settings("standard", s, VERSION_ATTACKS["standard"], 5, warn=None)["status"] == "ok"
  assert checks.check_settings("standard", s, VERSION_ATTACKS["standard"], 10, warn=None)["status"] == "flagged"
  rec, clamped = checks.check_n_classes(attack_settings("standard", "Linf"), VERSION_ATTACKS["standard"], 5,
                                        warn=None)
  assert rec["status"] == "flagged" and clamped["apgd-t"]["n_target_classes"] == 4


def test_square_flag():
  assert checks.check_square({"clean": 0.9, "apgd-ce": 0.5, "square": 0.45}, warn=None)["status"] == "flagged"
  assert checks.check_square({"clean": 0.9, "apgd-ce": 0.5, "square": 0.499}, warn=None)["status"] == "ok"
  assert checks.check_square({"clean": 0.9, "square": 0.4}, warn=None)["status"] == "skipped"


# ----------------------------------------------------------------------------- verification


@pytest.mark.slow
def test_verification_raises_on_corrupted_examples(data, plain):
  x, y = data
  x_adv, robust = np.asarray(plain[0].x_adv), np.asarray(plain[0].robust)
  fooled = np.flatnonzero(~robust & np.any(x_adv != x, axis=(1, 2, 3)))
  assert fooled.size >= 3
  ok = checks.verify_adversarial(logits_fn, x, y, x_adv, robust, eps=EPS, norm="Linf")
  assert ok["status"] == "ok"

  outside = x_adv.copy()
  outside[fooled[:2]] = np.clip(x[fooled[:2]] + 1.5 * EPS * np.sign(x_adv[fooled[:2]] - x[fooled[:2]]), 0, 1)
  dist = np.abs(outside - x).reshape(N, -1).max(1)[~robust].max()
  with pytest.raises(checks.VerificationError, match=rf"2 points outside the Linf ball .*{dist:.6g}"):
    checks.verify_adversarial(logits_fn, x, y, outside, robust, eps=EPS, norm="Linf")

  not_fooled = x_adv.copy()
  not_fooled[fooled[0]] = x[fooled[0]]      # a correctly classified clean point counted as fooled
  with pytest.raises(checks.VerificationError, match="1 points counted as fooled are classified correctly"):
    checks.verify_adversarial(logits_fn, x, y, not_fooled, robust, eps=EPS, norm="Linf")

  off_box = x_adv.copy()
  off_box[fooled[0], 0, 0, 0] = 1.02
  with pytest.raises(checks.VerificationError, match=r"outside \[0, 1\] \(largest excess 0.02"):
    checks.verify_adversarial(logits_fn, x, y, off_box, robust, eps=1.0, norm="Linf")

  moved = robust.copy()
  moved[fooled[0]] = True                    # a robust point must keep x_adv == x
  with pytest.raises(checks.VerificationError, match="robust points whose x_adv differs"):
    checks.verify_adversarial(logits_fn, x, y, x_adv, moved, eps=EPS, norm="Linf")
  # the tolerance is a float32 round-off, not more: l_2 ball just too small by 0.1% fails
  d2 = np.sqrt(((x_adv - x).reshape(N, -1).astype(np.float64) ** 2).sum(1))[~robust].max()
  checks.verify_adversarial(logits_fn, x, y, x_adv, robust, eps=d2, norm="L2")
  with pytest.raises(checks.VerificationError, match="outside the L2 ball"):
    checks.verify_adversarial(logits_fn, x, y, x_adv, robust, eps=d2 * 0.999, norm="L2")


@pytest.mark.slow
def test_autoattack_raises_when_its_bookkeeping_is_wrong(data, monkeypatch):
  """An attack loop that believes a wrong prediction counts points as fooled that are not: the
  final re-verification with the model itself must catch it, naming how many."""
  x, y = data
  real_predict = core._predict

  def lying_predict(fn, xa):
    pred, logits = real_predict(fn, xa)
    return (pred + 1) % logits.shape[1], logits  # every attacked point "changes class"

  monkeypatch.setattr(core, "_predict", lying_predict)
  with pytest.raises(checks.VerificationError, match=r"\d+ points counted as fooled are classified correctly"):
    autoattack(logits_fn, x, y, eps=1e-4, version="custom", attacks_to_run=["apgd-ce"], warn=lambda m: None)


# ----------------------------------------------------------------------------- the table


def test_accuracy_order():
  msgs, warn = _collect()
  rec = checks.check_accuracy_order({"natural": 0.8, "pgd20": 0.85, "aa": 0.4}, num_points=200, warn=warn)
  assert rec["status"] == "flagged" and rec["violations"] == ["pgd20 > natural"]
  assert "(10 points)" in msgs[0]
  rec = checks.check_accuracy_order({"natural": 0.8, "pgd20": 0.5, "aa": 0.55}, warn=None)
  assert rec["violations"] == ["aa > pgd20"]
  assert checks.check_accuracy_order({"natural": 0.8, "pgd20": 0.5, "aa": 0.5}, warn=None)["status"] == "ok"
  assert checks.check_accuracy_order({"natural": 0.8}, warn=None)["status"] == "skipped"
  assert checks.check_accuracy_order({"natural": 0.8, "aa": 0.9}, warn=None)["violations"] == ["aa > natural"]
