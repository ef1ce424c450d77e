"""The shared vocabulary of the AutoAttack files: type aliases, norms, argument checks and the
"gather the points not fooled yet, run, scatter back" driver of every attack's passes.

* :data:`LogitsFn`, :data:`NORMS`: the model type and the threat models (``"Linf"``, ``"L2"``).
* :func:`check_norm`, :func:`check_eps`, :func:`check_int`, :func:`check_batch`: argument checks,
  each raising ``ValueError`` with the name of the calling attack and the fix.
* :func:`lp_norm`, :func:`normalize`, :func:`project`: per-example norms, the reference's
  ``normalize`` and the projection onto the eps-ball and ``[0, 1]``.
* :func:`accepts_key`, :func:`call_model`, :func:`clean_logits`: calling a (possibly randomised)
  model.
* :func:`attack_unfooled`, :func:`target_restart_passes`: the driver. As in the reference PyTorch
  code, each pass (target class, restart, batch of the ensemble) runs only on the points not
  fooled yet; here they are gathered into a sub-batch padded to a bucket size
  (:mod:`saat_jax.autoattack.batching`), attacked, and the points the pass fooled are written back.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from saat_jax.autoattack.batching import padded_index, put_rows

LogitsFn = Callable[..., jax.Array]
"""A pure, jittable map from NHWC float32 images in ``[0, 1]`` to logits ``(B, K)``; a randomised
model takes a ``key`` keyword argument too."""

NORMS = ("Linf", "L2")


# ----------------------------------------------------------------------------- argument checks


def check_norm(name: str, norm) -> str:
  """``norm`` if it is one of :data:`NORMS`, else ``ValueError``."""
  if not isinstance(norm, str) or norm not in NORMS:
    raise ValueError(f"{name}: unknown norm {norm!r}; use norm='Linf' or norm='L2' (L1 is not ported)")
  return norm


def check_eps(name: str, eps) -> float:
  """``eps`` as a float; ``ValueError`` for a non-number, NaN, infinity or a negative value."""
  if isinstance(eps, bool):
    raise ValueError(f"{name}: eps must be a number, got {eps!r}")
  try:
    e = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: eps must be a number (e.g. eps=8/255), got {eps!r}") from None
  if math.isnan(e) or math.isinf(e) or e < 0:
    raise ValueError(f"{name}: eps must be finite and >= 0, in pixel units of [0, 1] images "
                     f"(e.g. eps=8/255 for l_inf, 0.5 for l_2), got {eps!r}")
  return e


def check_int(name: str, v, lo: int) -> int:
  """``v`` as an int if it is an integer (not a bool) ``>= lo``, else ``ValueError``; ``name``
  names the argument, e.g. ``"fab_attack: n_iter"``."""
  try:
    iv = operator.index(v)
  except TypeError:
    iv = None
  if iv is None or isinstance(v, bool) or iv < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(iv)


def check_batch(name: str, x, y, *, images: bool) -> tuple[jax.Array, jax.Array]:
  """``(x, y)`` as float32 / int32 arrays after checking dtypes and shapes: ``x`` floating point of
  shape ``(B, ...)`` (``(B, H, W, C)`` when ``images``), ``y`` integer labels of shape ``(B,)``."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name}: x must be floating point in [0, 1], got dtype {x.dtype} "
                     "(convert uint8 images with x / 255)")
  y = jnp.asarray(y)
  if images and x.ndim != 4:
    raise ValueError(f"{name}: x must be a batch of NHWC images (B, H, W, C), got shape {x.shape}")
  if x.ndim < 2:
    raise ValueError(f"{name}: need x of shape (B, ...), got {x.shape}")
  if y.shape != (x.shape[0],):
    raise ValueError(f"{name}: y must hold one label per image, shape ({x.shape[0]},), got {y.shape}")
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"{name}: y must hold integer class labels, got dtype {y.dtype}")
  return x.astype(jnp.float32), y.astype(jnp.int32)


def check_n_target_classes(name: str, n_target_classes, n_cls: int) -> int:
  """``n_target_classes`` as an int if it is an integer in ``[1, n_cls - 1]``, else ``ValueError``."""
  n = check_int(f"{name}: n_target_classes", n_target_classes, 1)
  if n > n_cls - 1:
    raise ValueError(f"{name}: n_target_classes must lie in [1, {n_cls - 1}] for a model with {n_cls} "
                     f"classes, got {n_target_classes}")
  return n


def target_classes(logits: jax.Array, rank: int) -> jax.Array:
  """The class of rank ``rank`` (1 = largest) of each row of the clean logits: the targeted attacks
  aim at ranks ``2 .. n_target_classes + 1``, the most likely wrong classes first."""
  return jnp.argsort(logits, axis=1)[:, -rank].astype(jnp.int32)


# ----------------------------------------------------------------------------- norms


def lp_norm(v: jax.Array, norm: str, keepdims: bool = False) -> jax.Array:
  """Per-example l_inf / l_2 norm of ``v`` over every axis but the first."""
  axes = tuple(range(1, v.ndim))
  if norm == "Linf":
    return jnp.max(jnp.abs(v), axis=axes, keepdims=keepdims)
  return jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=keepdims))


def lp_norm_np(v: np.ndarray, norm: str) -> np.ndarray:
  """:func:`lp_norm` on the host, in float64 (for the final checks of ``x_adv``)."""
  flat = np.asarray(v).reshape(v.shape[0], -1).astype(np.float64)
  if norm == "Linf":
    return np.abs(flat).max(axis=1)
  return np.sqrt(np.sum(flat * flat, axis=1))


def normalize(v: jax.Array, norm: str) -> jax.Array:
  """``v / (||v|| + 1e-12)`` per example (the reference's ``normalize``)."""
  return v / (lp_norm(v, norm, keepdims=True) + 1e-12)


def project(x_new: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """Onto the eps-ball around ``x`` (l_inf: clip; l_2: rescale) and then into ``[0, 1]``."""
  if norm == "Linf":
    return jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)
  d = x_new - x
  return jnp.clip(x + normalize(d, "L2") * jnp.minimum(eps, lp_norm(d, "L2", keepdims=True)), 0.0, 1.0)


# ----------------------------------------------------------------------------- the model


def accepts_key(fn) -> bool:
  """Whether ``fn`` takes a ``key`` keyword argument (a randomised model)."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  p = params.get("key")
  return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def call_model(logits_fn: LogitsFn, x, key=None):
  """``logits_fn(x, key=key)`` for a randomised model (one that takes a key), else ``logits_fn(x)``."""
  return logits_fn(x, key=key) if accepts_key(logits_fn) else logits_fn(x)


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def clean_logits(logits_fn: LogitsFn, x, key=None):
  """The logits on ``x`` (one compiled program per model and shape)."""
  return call_model(logits_fn, x, key)


# ----------------------------------------------------------------------------- the driver


def attack_unfooled(attack: Callable, x_adv, robust: np.ndarray, *, idx: Optional[np.ndarray] = None,
                    cap: Optional[int] = None):
  """One pass on the points not fooled yet: gather, run, scatter back.

  The rows ``idx`` (default: every row where ``robust`` holds) are padded to a bucket size (at most
  ``cap``, default ``len(robust)``) by repeating the first one; ``attack(rows, real)`` gets the
  padded row indices and the mask of real rows and returns ``(adv, fooled)`` on that sub-batch.
  Real rows it fooled have their ``adv`` written into ``x_adv`` (a JAX or numpy array) and stop
  being ``robust`` (updated in place). Returns ``(x_adv, rows, fooled)``, ``fooled`` over the
  padded sub-batch (``False`` on padding rows).
  """
  idx = np.flatnonzero(robust) if idx is None else np.asarray(idx)
  rows, real = padded_index(idx, robust.size if cap is None else cap)
  adv, fooled = attack(rows, real)
  fooled = real & np.asarray(fooled, bool)
  robust[rows[fooled]] = False
  return put_rows(x_adv, rows, fooled, adv), rows, fooled


def target_restart_passes(attack: Callable, x_adv, robust: np.ndarray, *, seed: int, n_targets: int,
                          n_restarts: int):
  """The passes of an attack with target classes and restarts, as the reference's ``perturb``.

  For each target ``t < n_targets`` and restart ``r < n_restarts``, while some point is still
  ``robust``: :func:`attack_unfooled` with ``attack(t, r, key, rows, real)``, where ``key`` is
  ``fold_in(fold_in(key(seed), t), r)``. ``robust`` is updated in place; returns ``x_adv``.
  """
  base_key = jax.random.key(seed)
  for t in range(n_targets):
    for r in range(n_restarts):
      if not robust.any():
        return x_adv
      key = jax.random.fold_in(jax.random.fold_in(base_key, t), r)
      x_adv = attack_unfooled(functools.partial(attack, t, r, key), x_adv, robust)[0]
  return x_adv


__all__ = ["LogitsFn", "NORMS", "check_norm", "check_eps", "check_int", "check_batch",
           "check_n_target_classes", "target_classes", "lp_norm",
           "lp_norm_np", "normalize", "project", "accepts_key", "call_model", "clean_logits",
           "attack_unfooled", "target_restart_passes"]
