"""Checks that make an AutoAttack evaluation check itself.

The flags of the AutoAttack authors (``autoattack/checks.py`` of the reference code, documented in
its ``flags_doc.md``), ported to JAX models, plus a re-verification of every adversarial example:

* :func:`check_randomized`: two forward passes on the same input differ (a randomised defence:
  use ``version="rand"``). A model taking a ``key`` is called with different keys; any other
  model is called several times un-jitted by this check, so hidden randomness shows.
* :func:`check_probabilities`: the outputs look like probabilities (in ``[0, 1]``, rows summing
  to 1), i.e. a softmax was applied; the attacks' losses need logits.
* :func:`check_zero_gradients`: points whose input gradient of the attack loss (DLR, as in the
  reference's APGD; cross-entropy for fewer than 3 classes) is exactly zero: gradient masking.
* :func:`check_dynamic`: the forward pass itself takes gradients (``jax.grad``, ``jax.vjp``, ...):
  a test-time adaptive ("dynamic") defence, for which AutoAttack may be insufficient.
* :func:`check_settings`: fewer iterations, restarts, target classes, EOT draws or Square queries
  than the reference runs for the version (``standard``, ``plus``, ``rand``).
* :func:`check_n_classes`: more target classes asked than the model has wrong classes.
* :func:`check_square`: Square (gradient-free) lowered the accuracy after the gradient attacks.
* :func:`verify_adversarial`: every point called non-robust has an ``x_adv`` inside the eps-ball
  (with a float32 round-off tolerance), inside ``[0, 1]`` and misclassified by the model; a
  violation raises :class:`VerificationError` (a bug in an attack, never a property of the model).
* :func:`check_accuracy_order`: across an evaluation table, AA <= PGD <= natural accuracy on the
  same points.

Each check returns a *record*, a JSON-able dict ``{"check": name, "status": "ok" | "flagged" |
"skipped", "message": ..., ...details}``; a flagged record is also reported through ``warn``
(default: :func:`warnings.warn` with :class:`CheckWarning`).
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from saat_jax.autoattack.apgd import ce_loss, dlr_loss
from saat_jax.autoattack.common import LogitsFn, accepts_key, lp_norm_np

# Reference thresholds (checks.py of the reference code).
RANDOMIZED_ALPHA = 1e-4     # largest l_2 distance between l_2-normalised outputs of two passes
PROBABILITY_ALPHA = 1e-5    # slack of "in [0, 1] and rows sum to 1"
SQUARE_ALPHA = 0.002        # accuracy Square may take off after the other attacks
# Slack of the eps-ball test of verify_adversarial, for float32 round-off in the projections.
NORM_RTOL = 1e-5
NORM_ATOL = 1e-6

# What the reference's ``set_version`` runs, per version (l_inf and l_2): the least each attack
# must do for the evaluation to be the version it claims. Written out here, independently of
# core.attack_settings, so that the two are checked against each other.
REFERENCE_SETTINGS = {
    "standard": {
        "apgd-ce": dict(n_iter=100, n_restarts=1),
        "apgd-t": dict(n_iter=100, n_restarts=1, n_target_classes=9),
        "fab-t": dict(n_iter=100, n_restarts=1, n_target_classes=9),
        "square": dict(n_queries=5000, n_restarts=1),
    },
    "plus": {
        "apgd-ce": dict(n_iter=100, n_restarts=5),
        "apgd-dlr": dict(n_iter=100, n_restarts=5),
        "fab": dict(n_iter=100, n_restarts=5),
        "square": dict(n_queries=5000, n_restarts=1),
        "apgd-t": dict(n_iter=100, n_restarts=1, n_target_classes=9),
        "fab-t": dict(n_iter=100, n_restarts=1, n_target_classes=9),
    },
    "rand": {
        "apgd-ce": dict(n_iter=100, n_restarts=1, eot_iter=20),
        "apgd-dlr": dict(n_iter=100, n_restarts=1, eot_iter=20),
    },
}


class CheckWarning(UserWarning):
  """A flagged check of the AutoAttack evaluation (see :mod:`saat_jax.autoattack.checks`)."""


class VerificationError(RuntimeError):
  """An ``x_adv`` that AutoAttack counted as adversarial is not (outside the ball or ``[0, 1]``,
  or classified correctly)."""


def default_warn(msg: str) -> None:
  warnings.warn(msg, CheckWarning, stacklevel=3)


def record(check: str, status: str, message: str = "", warn: Optional[Callable[[str], None]] = None,
           **details) -> dict:
  """A check's record; a flagged one is also reported through ``warn``."""
  if status not in ("ok", "flagged", "skipped"):
    raise ValueError(f"record: status must be 'ok', 'flagged' or 'skipped', got {status!r}")
  if status == "flagged" and warn is not None:
    warn(f"AutoAttack check '{check}': {message}")
  return dict(check=check, status=status, message=message, **details)


def _call_with_key(logits_fn, x, i):
  return logits_fn(x, key=jax.random.key(i)) if accepts_key(logits_fn) else logits_fn(x)


# ----------------------------------------------------------------------------- model checks


def check_randomized(logits_fn: LogitsFn, x, y, *, version: str, n: int = 5,
                     alpha: float = RANDOMIZED_ALPHA, warn=default_warn) -> dict:
  """``n`` forward passes on ``x``: flagged when the number of correct points changes or the
  l_2-normalised outputs differ by more than ``alpha`` (the reference's ``check_randomized``).
  With ``version="rand"``, which expects a randomised model, it is flagged the other way round: when
  the passes agree (EOT would average identical gradients)."""
  outs, n_correct = [], []
  for i in range(n):
    out = np.asarray(_call_with_key(logits_fn, jnp.asarray(x), i), np.float64)
    n_correct.append(int(np.sum(out.argmax(1) == np.asarray(y))))
    outs.append(out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-10))
  max_diff = max(float(np.linalg.norm(outs[a] - outs[b], axis=1).max())
                 for a in range(n) for b in range(a + 1, n))
  randomized = len(set(n_correct)) > 1 or max_diff > alpha
  if version == "rand":
    if randomized:
      return record("randomized", "ok", f"a randomised model, as version='rand' expects (normalised "
                    f"outputs differ by up to {max_diff:.3g})", max_output_difference=max_diff)
    return record("randomized", "flagged", "version='rand' is meant for randomised models "
                  "(logits_fn(x, key=...)); this logits_fn is deterministic, so EOT averages identical "
                  "gradients", warn, max_output_difference=max_diff)
  if randomized:
    how = ("logits_fn takes a key, so it looks like a randomised model"
           if accepts_key(logits_fn) else "two forward passes on the same input differ: a randomised model")
    return record("randomized", "flagged",
                  f"{how} (normalised outputs differ by up to {max_diff:.3g}, correct points "
                  f"{min(n_correct)}..{max(n_correct)} of {len(outs[0])}): consider "
                  "version='rand' (EOT); this run attacks one fixed draw of the model",
                  warn, max_output_difference=max_diff)
  return record("randomized", "ok", f"{n} forward passes agree (max difference {max_diff:.3g})",
                max_output_difference=max_diff)


def check_probabilities(logits: np.ndarray, *, alpha: float = PROBABILITY_ALPHA, warn=default_warn) -> dict:
  """Flagged when every output lies in ``[0, 1]`` and every row sums to 1 (a softmax output)."""
  logits = np.asarray(logits)
  if (logits.max() < 1 + alpha and logits.min() > -alpha
      and np.all(np.abs(logits.sum(-1) - 1) < alpha)):
    return record("probabilities", "flagged", "logits_fn seems to return probabilities (rows in [0, 1] "
                  "summing to 1): AutoAttack needs the logits (drop the softmax)", warn)
  return record("probabilities", "ok", "the outputs are not a probability distribution")


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _loss_grad(logits_fn, x, y):
  """Input gradient of the summed DLR loss (cross-entropy below 3 classes)."""

  def total(xa):
    logits = logits_fn(xa)
    loss = dlr_loss(logits, y) if logits.shape[1] >= 3 else ce_loss(logits, y)
    return jnp.sum(loss)

  return jax.grad(total)(x)


def check_zero_gradients(logits_fn: LogitsFn, x, y, *, warn=default_warn) -> dict:
  """Flagged when some point's input gradient of the attack loss is exactly zero (the DLR loss as
  the reference checks in APGD-DLR/APGD-T; cross-entropy for a model with fewer than 3 classes)."""
  grad = np.asarray(_loss_grad(logits_fn, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)))
  zero = np.abs(grad.reshape(grad.shape[0], -1)).sum(1) == 0
  n_zero = int(zero.sum())
  if n_zero:
    return record("zero_gradients", "flagged",
                  f"{n_zero} of {zero.size} points have an all-zero input gradient: gradient masking "
                  "makes gradient-based attacks unreliable (see the Square column and try an adaptive "
                  "attack)", warn, n_zero=n_zero, n_checked=int(zero.size))
  return record("zero_gradients", "ok", f"no zero gradient on {zero.size} points", n_zero=0,
                n_checked=int(zero.size))


def _gradient_api_codes() -> set:
  codes = set()
  for name in ("grad", "value_and_grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian"):
    fn = inspect.unwrap(getattr(jax, name))
    if hasattr(fn, "__code__"):
      codes.add(fn.__code__)
  return codes


def check_dynamic(logits_fn: LogitsFn, x, *, warn=default_warn) -> dict:
  """Flagged when tracing one forward pass calls JAX's differentiation API (the reference's
  ``check_dynamic`` looks for ``backward``/``grad`` calls in PyTorch): a test-time adaptive model."""
  fn = inspect.unwrap(logits_fn)            # a jax.jit-wrapped model is traced afresh here
  codes = _gradient_api_codes()
  calls = []

  def profiler(frame, event, arg):
    if event == "call" and frame.f_code in codes:
      calls.append(frame.f_code.co_name)

  if sys.getprofile() is not None:   # e.g. cProfile: one profile hook at a time, and it cannot be re-set
    return record("dynamic", "skipped", "a profiler is active, so the forward pass's calls cannot be watched")
  sys.setprofile(profiler)
  try:
    jax.make_jaxpr(lambda xa: _call_with_key(fn, xa, 0))(jnp.asarray(x[:1], jnp.float32))
  finally:
    sys.setprofile(None)
  if calls:
    return record("dynamic", "flagged", f"the forward pass calls {', '.join(sorted(set(calls)))}: it seems "
                  "to be a dynamic (test-time adaptive) defence, for which AutoAttack may be insufficient",
                  warn, calls=sorted(set(calls)))
  return record("dynamic", "ok", "the forward pass takes no gradients")


def check_n_classes(settings: dict, attacks, n_cls: int, *, warn=default_warn) -> tuple[dict, dict]:
  """Clamps the target classes of APGD-T / FAB-T to the ``n_cls - 1`` possible ones; flagged
  when it had to. Returns ``(record, settings)``."""
  settings = {k: dict(v) for k, v in settings.items()}
  clamped = []
  for name in ("apgd-t", "fab-t"):
    if name in attacks and settings[name]["n_target_classes"] > n_cls - 1:
      clamped.append(f"{name}: {settings[name]['n_target_classes']} target classes asked, only "
                     f"{n_cls - 1} possible with {n_cls} classes; using {n_cls - 1}")
      settings[name]["n_target_classes"] = n_cls - 1
  if clamped:
    return record("n_classes", "flagged", "; ".join(clamped), warn, n_classes=n_cls), settings
  return record("n_classes", "ok", f"{n_cls} classes", n_classes=n_cls), settings


def check_settings(version: str, settings: dict, attacks, n_cls: int, *, warn=default_warn) -> dict:
  """Flagged when an attack runs fewer iterations, restarts, target classes, EOT draws or queries
  than :data:`REFERENCE_SETTINGS` of ``version`` (or fewer of the version's attacks); target
  classes count as enough when all ``n_cls - 1`` wrong classes are attacked."""
  if version not in REFERENCE_SETTINGS:
    return record("settings", "skipped", f"version={version!r} has no reference settings")
  want = REFERENCE_SETTINGS[version]
  short = [f"{a} is not run" for a in want if a not in attacks]
  for name, counts in want.items():
    if name not in attacks:
      continue
    for key, need in counts.items():
      if key == "n_target_classes":
        need = min(need, n_cls - 1)
      have = settings[name].get(key, 1 if key == "eot_iter" else 0)
      if have < need:
        short.append(f"{name} {key}={have} < {need}")
  if short:
    return record("settings", "flagged", f"fewer iterations/restarts than AutoAttack '{version}' runs: "
                  + "; ".join(short) + "; the reported accuracy is not that of the version", warn,
                  shortfalls=short)
  return record("settings", "ok", f"the '{version}' counts of the reference")


def check_square(robust_accuracy: dict, *, alpha: float = SQUARE_ALPHA, warn=default_warn) -> dict:
  """Flagged when Square lowered the robust accuracy by more than ``alpha`` below the best of the
  attacks before it (the reference's ``check_square_sr``)."""
  if "square" not in robust_accuracy or len(robust_accuracy) <= 2:
    return record("square", "skipped", "Square did not run after another attack")
  best_other = min(v for k, v in robust_accuracy.items() if k != "square")
  drop = best_other - robust_accuracy["square"]
  if drop > alpha:
    return record("square", "flagged", f"Square Attack lowered the robust accuracy by {drop:.2%} after the "
                  "gradient-based attacks: the evaluation may be unreliable (gradient masking?); "
                  "consider more Square queries/restarts or an adaptive attack", warn, drop=float(drop))
  return record("square", "ok", f"Square lowered the accuracy by {max(drop, 0.0):.2%}",
                drop=float(max(drop, 0.0)))


# ----------------------------------------------------------------------------- verification


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _margin(logits_fn, x, y):
  """The margin ``z_y - max_{k != y} z_k`` of the true class and the largest ``|z_k|`` per row."""
  logits = _call_with_key(logits_fn, x, 0)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  return z_y - jnp.max(others, axis=1), jnp.max(jnp.abs(logits), axis=1)


def verify_adversarial(logits_fn: LogitsFn, x, y, x_adv, robust, *, eps: float, norm: str,
                       batch_size: int = 500, check_labels: bool = True) -> dict:
  """Re-verify every point AutoAttack calls non-robust; raise :class:`VerificationError` if any fails.

  For each point with ``robust`` False: ``x_adv`` finite, inside ``[0, 1]``, within ``eps`` of ``x``
  in ``norm`` (slack ``eps * 1e-5 + 1e-6`` for float32 round-off), and misclassified by
  ``logits_fn`` (the model in evaluation mode; a tie within float32 round-off of the logits counts
  as misclassified). Robust points must have ``x_adv == x``. ``check_labels=False`` skips the
  classification test (a randomised model attacked with EOT). Returns the ``verification`` record.
  """
  x = np.asarray(x, np.float32)
  x_adv = np.asarray(x_adv, np.float32)
  y = np.asarray(y)
  robust = np.asarray(robust, bool)
  bad = ~robust
  problems = []
  finite = np.isfinite(x_adv.reshape(x_adv.shape[0], -1)).all(1)
  if np.any(bad & ~finite):
    problems.append(f"{int(np.sum(bad & ~finite))} points with non-finite values")
  flat = np.nan_to_num(x_adv.reshape(x_adv.shape[0], -1), nan=0.5)
  out_lo, out_hi = -flat.min(1), flat.max(1) - 1.0
  box = np.maximum(out_lo, out_hi)
  if np.any(bad & (box > 0)):
    problems.append(f"{int(np.sum(bad & (box > 0)))} points outside [0, 1] (largest excess "
                    f"{box[bad].max():.6g})")
  dist = lp_norm_np(np.nan_to_num(x_adv - x), norm)
  tol = eps * (1 + NORM_RTOL) + NORM_ATOL
  if np.any(bad & (dist > tol)):
    problems.append(f"{int(np.sum(bad & (dist > tol)))} points outside the {norm} ball of radius "
                    f"{eps:.6g} (largest distance {dist[bad].max():.6g})")
  moved = robust & np.any(x_adv.reshape(x.shape[0], -1) != x.reshape(x.shape[0], -1), axis=1)
  if np.any(moved):
    problems.append(f"{int(moved.sum())} robust points whose x_adv differs from x")
  idx = np.flatnonzero(bad & finite)
  if check_labels and idx.size:
    margins = []
    for s in range(0, idx.size, batch_size):
      rows = idx[s:s + batch_size]
      m, scale = _margin(logits_fn, jnp.asarray(x_adv[rows]), jnp.asarray(y[rows], jnp.int32))
      # a float tie could round either way between batch shapes; anything clearer is wrong
      margins.append(np.asarray(m) - 1e-5 * (1 + np.asarray(scale)))
    margin = np.concatenate(margins)
    if np.any(margin > 0):
      problems.append(f"{int(np.sum(margin > 0))} points counted as fooled are classified correctly at "
                      f"x_adv (largest margin of the true class {margin.max():.6g})")
  if problems:
    raise VerificationError(f"AutoAttack verification failed for {int(bad.sum())} non-robust points: "
                            + "; ".join(problems) + ". This is a bug in an attack (or a model that changes "
                            "between calls); the reported accuracy would be wrong.")
  return record("verification", "ok", f"{int(bad.sum())} non-robust points re-verified: inside the {norm} "
                f"ball (largest distance {float(dist[bad].max()) if bad.any() else 0.0:.6g} <= {eps:.6g}), "
                "inside [0, 1]" + (", misclassified" if check_labels else ""),
                n_verified=int(bad.sum()), max_distance=float(dist[bad].max()) if bad.any() else 0.0,
                labels_checked=bool(check_labels))


# ----------------------------------------------------------------------------- the table


def check_accuracy_order(row: dict, *, order=("aa", "pgd20", "natural"), num_points: Optional[int] = None,
                         warn=default_warn) -> dict:
  """Flagged when a stronger attack's accuracy exceeds a weaker one's on the same points: AA <=
  PGD-20 <= natural (keys of ``row`` in ``order``, strongest first; missing ones are left out)."""
  present = [k for k in order if k in row and row[k] is not None]
  if len(present) < 2:
    return record("accuracy_order", "skipped", "fewer than two of " + ", ".join(order) + " were evaluated")
  bad = [(a, b) for i, a in enumerate(present) for b in present[i + 1:] if row[a] > row[b]]
  if bad:
    pts = "" if num_points is None else " ({:d} points)"
    parts = [f"{a} {row[a]:.2%} > {b} {row[b]:.2%}"
             + (pts.format(round((row[a] - row[b]) * num_points)) if pts else "") for a, b in bad]
    return record("accuracy_order", "flagged", "a stronger attack is less accurate than a weaker one "
                  "on the same points: " + "; ".join(parts) + " (a weak attack, a randomised or "
                  "inconsistent model, or a bug)", warn, violations=[f"{a} > {b}" for a, b in bad])
  return record("accuracy_order", "ok", " <= ".join(present))


__all__ = ["CheckWarning", "VerificationError", "REFERENCE_SETTINGS", "record", "check_randomized",
           "check_probabilities", "check_zero_gradients", "check_dynamic", "check_n_classes",
           "check_settings", "check_square", "verify_adversarial", "check_accuracy_order"]
