"""AutoAttack (Croce & Hein, ICML 2020): the ensemble run of ``pyautoattack`` 0.2.0 in JAX.

:func:`autoattack` follows ``AutoAttack.run_standard_evaluation`` of the reference:

1. the clean accuracy: the points the model classifies correctly start out robust;
2. the attacks run in order, each only on the points still robust after the previous ones, in
   batches of at most ``batch_size``; a point whose attacked image is misclassified stops being
   robust and that image becomes its ``x_adv`` (robust points keep ``x_adv = x``);
3. the robust accuracy (over all points) after each attack is recorded.

Versions (``norm`` ``"Linf"`` or ``"L2"``; settings as in the reference's ``_set_version``):

* ``standard``: APGD-CE (1 run of 100 iterations), APGD-T (9 target classes, 1 run of 100 each),
  FAB-T (9 target classes, 1 run of 100 iterations each), Square (5000 queries, ``p_init=0.8``).
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square, APGD-T,
  FAB-T.
* ``rand``: APGD-CE and APGD-DLR with 1 run each and EOT over 20 gradient draws, for randomised
  models (``logits_fn`` taking a ``key`` keyword argument).
* ``custom``: the attacks named in ``attacks_to_run``, with the reference's constructor defaults
  (APGD 5 restarts, FAB 5 restarts, FAB-T 1 restart per target, APGD-T 1 run per target).

Unlike the reference, the batches of an attack are padded (by repeating a point, masked out) to a
size from a short fixed ladder (four sizes per octave up to ``batch_size``, see
:mod:`saat_jax.autoattack.batching`), so jit compiles each attack a handful of times in all rather
than once per batch size; inside an attack, each pass (target class, restart, stretch of Square
queries) again runs only on the points it has not fooled yet, as in the reference (padding rows are
never attacked).

The run checks itself (:mod:`saat_jax.autoattack.checks`): before the attacks, the reference's flags
(randomised model, probabilities for logits, zero gradients, dynamic model, target classes) and the
version's iteration/restart counts; after them, Square's drop. Flags go to ``warn``; every record is
in the result's ``checks``. The returned ``x_adv`` is always re-verified: finite, inside ``[0, 1]``,
within ``eps`` of ``x`` (in the attack's norm, with a float32 round-off tolerance), equal to ``x``
where ``robust``, and misclassified where not; a violation raises ``checks.VerificationError`` (a
``RuntimeError``: it would be a bug in an attack, never a property of the model).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from saat_jax import log
from saat_jax.autoattack.apgd import apgd_attack, apgd_targeted_attack
from saat_jax.autoattack import checks
from saat_jax.autoattack.batching import padded_index
from saat_jax.autoattack.common import (NORMS, LogitsFn, accepts_key, attack_unfooled, check_eps, check_norm,
                                        lp_norm_np)

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")

VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}

# Default batch size (the reference's default is 250). The batch size decides which points share
# a sub-batch, hence the random draws, so results are reproducible for a given batch size.
DEFAULT_BATCH_SIZE = 500

# The model checks (randomness, zero gradients, dynamic) run on the first this many points.
CHECK_POINTS = 100


@chex.dataclass(frozen=True, mappable_dataclass=True)
class AutoAttackResult:
  """Outcome of :func:`autoattack`; read as ``res.robust`` or ``res["robust"]``.

  Attributes:
    x_adv: ``(N, H, W, C)`` adversarial images (``x`` itself where robust or clean-misclassified).
    y_adv: ``(N,)`` the model's prediction on ``x_adv``.
    robust: ``(N,)`` bool, correctly classified and no attack succeeded.
    robust_accuracy: ``{"clean": acc, attack: robust accuracy after it, ...}`` in run order,
      fractions of all ``N`` points (attacks left out because no point was robust any more get the
      value of the last one, 0.0).
    times: ``{attack: seconds}`` wall time of each attack (``"clean"``: the clean pass).
    checks: the records of :mod:`saat_jax.autoattack.checks` (JSON-able dicts ``{"check", "status",
      "message", ...}``), in the order they ran; ``status`` is ``"flagged"`` for a warning.
  """

  x_adv: jax.Array
  y_adv: jax.Array
  robust: jax.Array
  robust_accuracy: dict
  times: dict
  checks: list


def attack_settings(version: str, norm: str) -> dict:
  """``{attack: keyword arguments}`` of each attack for ``version`` (as the reference sets them)."""
  del norm  # Linf and L2 use the same settings in the reference.
  if version == "standard":
    apgd_restarts, fab_restarts, eot = 1, 1, 1
  elif version == "plus":
    apgd_restarts, fab_restarts, eot = 5, 5, 1
  elif version == "rand":
    apgd_restarts, fab_restarts, eot = 1, 5, 20
  else:  # custom: the constructors' settings
    apgd_restarts, fab_restarts, eot = 5, 5, 1
  apgd = dict(n_iter=100, n_restarts=apgd_restarts, rho=0.75, eot_iter=eot)
  return {
      "apgd-ce": dict(apgd, loss="ce"),
      "apgd-dlr": dict(apgd, loss="dlr"),
      "apgd-t": dict(n_iter=100, n_restarts=1, n_target_classes=9, rho=0.75, eot_iter=1),
      "fab": dict(targeted=False, n_restarts=fab_restarts, n_iter=100, n_target_classes=9,
                  alpha_max=0.1, eta=1.05, beta=0.9),
      # the reference sets fab.n_restarts = 1 whenever it runs fab-t
      "fab-t": dict(targeted=True, n_restarts=1, n_iter=100, n_target_classes=9, alpha_max=0.1,
                    eta=1.05, beta=0.9),
      "square": dict(n_queries=5000, p_init=0.8, n_restarts=1),
  }


def _resolve_attacks(version, attacks_to_run) -> list[str]:
  if not isinstance(version, str) or version not in VERSIONS:
    raise ValueError(f"unknown AutoAttack version {version!r}; use one of {', '.join(VERSIONS)} "
                     "(version='custom' with attacks_to_run=[...] for your own list)")
  if version != "custom":
    if attacks_to_run is not None:
      raise ValueError(f"attacks_to_run is only used with version='custom' (version={version!r} runs "
                       f"{list(VERSION_ATTACKS[version])}); pass version='custom' to choose the attacks")
    return list(VERSION_ATTACKS[version])
  if attacks_to_run is None or isinstance(attacks_to_run, str) or len(attacks_to_run) == 0:
    raise ValueError("version='custom' needs attacks_to_run, a non-empty list of attack names from "
                     f"{list(ATTACKS)}, e.g. attacks_to_run=['apgd-ce', 'apgd-t']")
  attacks = list(attacks_to_run)
  bad = [a for a in attacks if a not in ATTACKS]
  if bad:
    raise ValueError(f"unknown attack name(s) {bad}; known attacks: {', '.join(ATTACKS)}")
  dup = sorted({a for a in attacks if attacks.count(a) > 1})
  if dup:
    raise ValueError(f"attack(s) {dup} listed more than once in attacks_to_run; list each once")
  return attacks


def _check_inputs(x, y, eps, norm, batch_size):
  eps = check_eps("autoattack", eps)
  check_norm("autoattack", norm)
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim != 4:
    raise ValueError(f"x must be a batch of NHWC images of shape (N, H, W, C), got shape {x.shape}; "
                     "add a batch axis for a single image (x[None])")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"x must be floating point in [0, 1], got dtype {x.dtype}; convert uint8 images "
                     "with x.astype(np.float32) / 255")
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must hold one integer label per image, shape ({x.shape[0]},), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
  if x.shape[0] == 0:
    raise ValueError("x is empty: pass at least one image")
  if not np.all(np.isfinite(x)):
    raise ValueError("x contains NaN or infinite values")
  lo, hi = float(x.min()), float(x.max())
  if lo < 0.0 or hi > 1.0:
    raise ValueError(f"x must lie in [0, 1] (pixels/255, no mean/std normalisation: put that inside "
                     f"logits_fn), got values in [{lo:.4g}, {hi:.4g}]")
  if batch_size is not None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
  return x.astype(np.float32), y.astype(np.int32), eps


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _predict(logits_fn, x):
  logits = logits_fn(x)
  return jnp.argmax(logits, axis=1), logits


def _batched_logits(logits_fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  out = []
  for s in range(0, x.shape[0], batch_size):
    rows, real = padded_index(np.arange(s, min(s + batch_size, x.shape[0])), batch_size)
    out.append(np.asarray(_predict(logits_fn, jnp.asarray(x[rows]))[1])[real])
  return np.concatenate(out, axis=0)


def _run_attack(name, fn, xb, yb, mask, *, eps, norm, seed, settings):
  kw = dict(settings[name])
  if name in ("apgd-ce", "apgd-dlr"):
    return apgd_attack(fn, xb, yb, eps=eps, norm=norm, seed=seed, mask=mask, **kw)
  if name == "apgd-t":
    return apgd_targeted_attack(fn, xb, yb, eps=eps, norm=norm, seed=seed, mask=mask, **kw)
  if name in ("fab", "fab-t"):
    from saat_jax.autoattack.fab import fab_attack
    return fab_attack(fn, xb, yb, eps=eps, norm=norm, seed=seed, mask=mask, **kw)
  if name == "square":
    from saat_jax.autoattack.square import square_attack
    return square_attack(fn, xb, yb, eps=eps, norm=norm, seed=seed, mask=mask, **kw)
  raise ValueError(f"unknown attack {name!r}")  # unreachable: names are validated first


def autoattack(logits_fn: LogitsFn, x, y, *, eps: float, norm: str = "Linf", version: str = "standard",
               seed: int = 0, batch_size: Optional[int] = None,
               attacks_to_run: Optional[Sequence[str]] = None, verbose: bool = False,
               progress: bool = False, warn: Optional[Callable[[str], None]] = None) -> AutoAttackResult:
  """Run AutoAttack on ``(x, y)``; see the module docstring for the versions.

  Args:
    logits_fn: pure, jittable map from a batch of NHWC float32 images in ``[0, 1]`` to logits
      ``(B, K)`` (any normalisation inside it; BatchNorm in inference mode: examples of a batch must
      not interact). Reuse the same function object across calls to reuse the compiled attacks. A
      randomised model takes a ``key`` keyword argument; use ``version="rand"`` for it (other
      versions then call it with one fixed key, i.e. attack one fixed draw of the model).
    x: ``(N, H, W, C)`` images in ``[0, 1]``.
    y: ``(N,)`` integer labels.
    eps: radius of the threat model in pixel units (``8/255`` l_inf, ``0.5`` l_2).
    norm: ``"Linf"`` or ``"L2"``.
    version: ``"standard"``, ``"plus"``, ``"rand"`` or ``"custom"`` (with ``attacks_to_run``).
    seed: seed of every attack's randomness (the same result for the same seed, batch size and
      inputs).
    batch_size: most points an attack runs on at once (default ``min(N, 500)``).
    attacks_to_run: for ``version="custom"``: names from ``apgd-ce, apgd-dlr, apgd-t, fab, fab-t,
      square``, run in the given order.
    verbose: print the robust accuracy after each attack, and the final checks.
    progress: show a tqdm progress bar over the attacks (current batch and robust accuracy shown).
    warn: reports each flagged check of :mod:`saat_jax.autoattack.checks` (randomised model,
      probabilities for logits, zero gradients, dynamic model, fewer iterations than the version,
      clamped target classes, Square below the others); default ``warnings.warn`` with
      ``CheckWarning``. Every check's record is in the result's ``checks``.

  Returns:
    :class:`AutoAttackResult` (``x_adv``, ``y_adv``, ``robust``, ``robust_accuracy``, ``times``,
    ``checks``).

  Raises:
    ValueError: bad inputs (eps negative/NaN, unknown norm, version or attack, ``x`` outside
      ``[0, 1]``, shapes that do not match), each with the fix in the message.
    checks.VerificationError: (a ``RuntimeError``) the re-verification of ``x_adv`` failed: a point
      counted as non-robust whose ``x_adv`` is outside the ball or ``[0, 1]`` or classified correctly
      (a bug in an attack).
  """
  warn = checks.default_warn if warn is None else warn
  attacks = _resolve_attacks(version, attacks_to_run)
  x_np, y_np, eps = _check_inputs(x, y, eps, norm, batch_size)
  n = x_np.shape[0]
  bs = int(min(n, DEFAULT_BATCH_SIZE if batch_size is None else batch_size))
  settings = attack_settings(version, norm)

  # A randomised model: APGD draws fresh keys (EOT); everything else sees one fixed draw.
  randomized = accepts_key(logits_fn)
  if randomized:
    fixed_key = jax.random.fold_in(jax.random.key(seed), 2**20)

    def det_fn(xa):
      return logits_fn(xa, key=fixed_key)
  else:
    det_fn = logits_fn

  t0 = time.time()
  clean_logits = _batched_logits(det_fn, x_np, bs)
  if clean_logits.ndim != 2 or clean_logits.shape[0] != n:
    raise ValueError(f"logits_fn must return logits of shape (B, K), got {clean_logits.shape} for B={n}")
  n_cls = clean_logits.shape[1]
  for name, need in (("apgd-dlr", 3), ("apgd-t", 4)):
    if name in attacks and n_cls < need:
      raise ValueError(f"{name} needs a model with at least {need} classes (DLR loss), this one has {n_cls}; "
                       "use version='custom' with attacks_to_run=['apgd-ce', ...] without it")
  if int(y_np.min()) < 0 or int(y_np.max()) >= n_cls:
    raise ValueError(f"labels y must lie in [0, {n_cls - 1}] for a model with {n_cls} classes, got "
                     f"[{int(y_np.min())}, {int(y_np.max())}]")
  # The reference's flags (saat_jax.autoattack.checks), on the first CHECK_POINTS points.
  xc, yc = x_np[:CHECK_POINTS], y_np[:CHECK_POINTS]
  records = [checks.check_randomized(logits_fn, xc, yc, version=version, warn=warn),
             checks.check_probabilities(clean_logits, warn=warn),
             checks.check_zero_gradients(det_fn, xc, yc, warn=warn),
             checks.check_dynamic(logits_fn, xc, warn=warn)]
  rec, settings = checks.check_n_classes(settings, attacks, n_cls, warn=warn)
  records += [rec, checks.check_settings(version, settings, attacks, n_cls, warn=warn)]

  y_adv = clean_logits.argmax(1).astype(np.int32)
  robust = y_adv == y_np
  x_adv = x_np.copy()
  acc_dict = {"clean": float(robust.mean())}
  times = {"clean": time.time() - t0}
  if verbose:
    log.info(f"AutoAttack {version} ({', '.join(attacks)}), {norm} eps={eps:.5g}, {n} points")
    log.info(f"clean accuracy: {acc_dict['clean']:.2%}")

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(attacks), desc="AutoAttack", unit="attack")

  for name in attacks:
    t_att = time.time()
    idx_all = np.flatnonzero(robust)
    if idx_all.size == 0:
      acc_dict[name] = 0.0
      times[name] = 0.0
      if bar is not None:
        bar.update(1)
      continue
    attack_fn = logits_fn if (randomized and name.startswith("apgd") and version == "rand") else det_fn
    n_batches = math.ceil(idx_all.size / bs)

    def one_batch(rows, mask, name=name, attack_fn=attack_fn):
      xb, yb = x_np[rows], y_np[rows]
      adv = _run_attack(name, attack_fn, jnp.asarray(xb), jnp.asarray(yb), mask, eps=eps, norm=norm,
                        seed=seed, settings=settings)
      adv = np.asarray(adv, np.float32)
      pred = np.asarray(_predict(det_fn, jnp.asarray(adv))[0])
      fooled = (pred != yb) & mask
      y_adv[rows[fooled]] = pred[fooled]
      return adv, fooled

    for b in range(n_batches):
      idx = idx_all[b * bs:(b + 1) * bs]
      x_adv, _, fooled = attack_unfooled(one_batch, x_adv, robust, idx=idx, cap=bs)
      if bar is not None:
        bar.set_postfix_str(f"{name} batch {b + 1}/{n_batches} robust {robust.mean():.2%}")
      if verbose:
        log.info(f"{name} - {b + 1}/{n_batches} - {int(fooled.sum())} out of {idx.size} successfully perturbed")
    acc_dict[name] = float(robust.mean())
    times[name] = time.time() - t_att
    if verbose:
      log.info(f"robust accuracy after {name.upper()}: {acc_dict[name]:.2%} ({times[name]:.1f} s)")
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()

  records.append(checks.check_square(acc_dict, warn=warn))
  # Every point counted as non-robust is re-verified; a failure raises checks.VerificationError.
  records.append(checks.verify_adversarial(det_fn, x_np, y_np, x_adv, robust, eps=eps, norm=norm,
                                           batch_size=bs, check_labels=not randomized or version != "rand"))
  if verbose:
    dist = lp_norm_np(x_adv - x_np, norm)
    log.info(f"max {norm} perturbation: {dist.max():.5f}, nan in x_adv: {int(np.isnan(x_adv).sum())}, "
             f"max: {x_adv.max():.5f}, min: {x_adv.min():.5f}")
    log.info(f"robust accuracy: {robust.mean():.2%}")
  return AutoAttackResult(x_adv=jnp.asarray(x_adv), y_adv=jnp.asarray(y_adv), robust=jnp.asarray(robust),
                          robust_accuracy=acc_dict, times=times, checks=records)


__all__ = ["autoattack", "AutoAttackResult", "attack_settings", "ATTACKS", "NORMS", "VERSIONS",
           "VERSION_ATTACKS", "DEFAULT_BATCH_SIZE"]
