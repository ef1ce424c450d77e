"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), as used by AutoAttack.

A JAX port of the reference PyTorch code (``pyautoattack`` 0.2.0: ``fab_base.py``, ``fab_pt.py``,
``fab_projections.py``) for the l_inf and l_2 threat models:

* :func:`fab_attack` -- ``FABAttack_PT.perturb``: the targeted variant (``targeted=True``, AutoAttack's
  ``fab-t``) attacks, for each target rank ``2 .. n_target_classes + 1`` of the clean logits, the
  points not fooled yet; the untargeted one (``fab`` of the ``plus`` version) linearises every
  class boundary and steps towards the closest one. A point counts as fooled when the returned image
  is misclassified and its perturbation norm is at most ``eps``; other points come back unchanged.
* :func:`projection_linf`, :func:`projection_l2` -- the projection of a point onto a hyperplane
  inside the box ``[0, 1]^d`` (minimal l_inf / l_2 step; when the hyperplane cannot be reached
  inside the box, the box corner that moves furthest towards it), batched over rows and sort-based.

The ``n_iter`` FAB iterations of one run are a single ``lax.fori_loop`` in one ``jax.jit``, over the
whole batch at once (examples must not interact through the model, e.g. no BatchNorm on batch
statistics). Target classes and restarts are a short Python loop around it; as in the reference,
each run attacks only the points not fooled yet, gathered into a sub-batch padded to a size from a
short ladder (:mod:`saat_jax.autoattack.batching`), so each size compiles once. ``eps`` is used as
in the reference: the radius of the random starts of restarts ``> 0`` and the bound a perturbation
must satisfy to count.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saat_jax.autoattack.common import (NORMS, LogitsFn, check_batch, check_eps, check_int,
                                        check_n_target_classes, check_norm, clean_logits, lp_norm,
                                        target_classes, target_restart_passes)
from saat_jax.conv_layout import canonicalize_on_cpu, input_grad

# The reference marks "no adversarial example found yet" with this distance.
_NOT_FOUND = 1e10


def _take(a: jax.Array, idx: jax.Array) -> jax.Array:
  """``a[i, idx[i]]`` for a 2-D ``a`` and 1-D ``idx``."""
  return jnp.take_along_axis(a, idx[:, None], axis=1)[:, 0]


def _sort_rows(v: jax.Array) -> jax.Array:
  """Ascending sort of each row of a float32 array.

  Sorts the order-preserving int32 image of the floats (``bits`` for ``v >= +0``, ``bits ^ 0x7fffffff``
  below): a single integer operand takes XLA's fast sort path, several times faster on CPU than a
  float sort or an argsort carrying payloads.
  """
  bits = lax.bitcast_convert_type(v, jnp.int32)
  flip = jnp.int32(0x7FFFFFFF)
  keys = jnp.sort(jnp.where(bits < 0, bits ^ flip, bits), axis=1)
  return lax.bitcast_convert_type(jnp.where(keys < 0, keys ^ flip, keys), v.dtype)


def _binary_search(n_dim: int, go_right: Callable[[jax.Array], jax.Array], n_rows: int, dtype):
  """The reference's fixed-length bisection over positions ``0 .. n_dim - 1`` (float bounds).

  Starts from ``lb = 0, ub = n_dim - 1`` and runs ``ceil(log2(n_dim))`` halvings, moving ``lb`` up
  where ``go_right(mid)`` holds and ``ub`` down elsewhere; returns ``lb`` as int32.
  """
  lb = jnp.zeros((n_rows,), dtype)
  ub = jnp.full((n_rows,), n_dim - 1, dtype)
  for _ in range(math.ceil(math.log2(n_dim)) if n_dim > 1 else 0):
    mid = jnp.floor((lb + ub) / 2)
    right = go_right(mid.astype(jnp.int32))
    lb = jnp.where(right, mid, lb)
    ub = jnp.where(right, ub, mid)
  return lb.astype(jnp.int32)


def projection_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """Step ``d`` of minimal l_inf norm with ``w . (points + d) = b`` and ``points + d`` in ``[0, 1]``.

  Rows are independent: ``points`` and ``w`` are ``(N, D)``, ``b`` is ``(N,)``. With the hyperplane
  oriented so that ``w . points >= b``, coordinate ``i`` can move by at most ``p_i`` (to 0 where
  ``w_i > 0``, to 1 where ``w_i < 0``), and a step of l_inf radius ``lam`` changes ``w . x`` by
  ``G(lam) = -sum_i |w_i| min(lam, p_i)``, piecewise linear with breakpoints at the ``p_i``.

  As in the reference (``fab_projections.projection_linf``): if the required change is reached
  before the smallest breakpoint, every coordinate moves by ``lam``; if it is beyond ``G(max p)``
  the hyperplane is out of reach and the row gets the box corner ``(w < 0) - points``; otherwise a
  bisection over the breakpoints sorted in decreasing order (same start, same number of halvings,
  same decisions) finds the segment, and ``lam`` follows in closed form from the free and saturated
  coordinates. The reference evaluates ``G`` at a breakpoint from cumulative sums of ``|w|`` permuted
  by an argsort; ``G`` is evaluated here directly as a masked reduction, which needs only the sorted
  breakpoint values (the same numbers, and independent of how ties are ordered). Coordinates with
  ``w_i == 0`` never move.
  """
  t = points
  n_dim = t.shape[1]
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1.0, -1.0).astype(t.dtype)
  w = w * sign[:, None]
  b = b * sign

  a = (w < 0).astype(t.dtype)           # 1 where the helpful direction is towards 1
  nonzero = (w != 0).astype(t.dtype)
  d = (a - t) * nonzero                 # the furthest box corner
  p = a - t * (2 * a - 1)               # room left in the helpful direction, per coordinate
  aw = jnp.abs(w)
  b = b - jnp.sum(w * t, axis=1)        # required change of w . x (<= 0)
  b0 = jnp.sum(w * d, axis=1)           # change reached at the corner, G(max p)

  def change(lam):                      # G(lam), one lam per row
    return -jnp.sum(aw * jnp.minimum(p, lam[:, None]), axis=1)

  q = _sort_rows(p)                     # breakpoints, ascending; position k of the search is q[D-1-k]
  all_free = b - change(q[:, 0]) > 0    # solution before any coordinate saturates
  inside = (b - b0 > 0) & ~all_free     # reachable, some coordinates saturate

  lb = _binary_search(n_dim, lambda k: b - change(_take(q, n_dim - 1 - k)) > 0, t.shape[0], t.dtype)
  free = p >= _take(q, n_dim - 1 - lb)[:, None]       # the lb + 1 largest breakpoints
  lam = (b + jnp.sum(jnp.where(free, 0.0, aw * p), axis=1)) / -jnp.sum(jnp.where(free, aw, 0.0), axis=1)
  lam = jnp.maximum(lam, 0.0)[:, None]
  d_inside = jnp.minimum(lam, d) * a + jnp.maximum(-lam, d) * (1 - a)
  lam_all = jnp.maximum(b / -jnp.sum(aw, axis=1), 0.0)[:, None]
  d = jnp.where(all_free[:, None], (2 * a - 1) * lam_all, jnp.where(inside[:, None], d_inside, d))
  return d * nonzero


def projection_l2(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """Step ``d`` of minimal l_2 norm with ``w . (points + d) = b`` and ``points + d`` in ``[0, 1]``.

  Same shapes as :func:`projection_linf`. With the hyperplane oriented so that ``c = w . points - b
  >= 0``, the minimiser is ``d_i = -lam w_i`` clipped at the box; coordinate ``i`` saturates at
  ``lam = r_i`` and ``w . d(lam) = H(lam) = -sum_i w_i^2 min(lam, r_i)``. As in the reference
  (``fab_projections.projection_l2``): the plain projection ``-c w / |w|^2`` when it stays before
  the first breakpoint, the corner ``-r w`` when even that misses the hyperplane, otherwise the
  reference's bisection over the sorted breakpoints (``H`` evaluated directly, see
  :func:`projection_linf`) and ``lam`` in closed form. Coordinates with ``|w_i| < 1e-8`` never move
  (breakpoint ``1e12``, as in the reference).
  """
  t = points
  n_dim = t.shape[1]
  big = jnp.asarray(1e12, t.dtype)
  c = jnp.sum(w * t, axis=1) - b
  sign = jnp.where(c >= 0, 1.0, -1.0).astype(t.dtype)
  w = w * sign[:, None]
  c = c * sign                                   # >= 0: w . d must reach -c

  tiny = jnp.abs(w) < 1e-8
  r = jnp.clip(jnp.maximum(t / w, (t - 1) / w), -big, big)   # NaN/inf where w == 0, replaced below
  r = jnp.where(tiny, big, r)
  r = jnp.where(r == -big, big, r)               # saturation radius of each coordinate
  w2 = w * w
  d = jnp.where(tiny, 0.0, -(r * w))             # the furthest corner along -w
  corner = jnp.sum(d * w, axis=1)

  def dot_at(lam):                               # H(lam); the corner for lam = 1e12 (never-saturating)
    return jnp.where(lam == big, corner, -jnp.sum(w2 * jnp.minimum(r, lam[:, None]), axis=1))

  q = _sort_rows(r)                              # breakpoints, ascending
  q0 = jnp.where(q[:, 0] == big, 0.0, q[:, 0])
  w2_total = jnp.sum(w2, axis=1)
  unconstrained = -w2_total * q0 + c < 0
  unreachable = corner + c > 0
  inside = ~(unconstrained | unreachable)

  lb = _binary_search(n_dim, lambda k: dot_at(_take(q, k)) + c > 0, t.shape[0], t.dtype)
  q_lb = _take(q, lb)
  free_w2 = jnp.sum(jnp.where(r > q_lb[:, None], w2, 0.0), axis=1)
  lam = (dot_at(q_lb) + c) / free_w2 + jnp.where(q_lb == big, 0.0, q_lb)
  lam = jnp.where(free_w2 == 0, 0.0, lam)[:, None]
  d_inside = jnp.where(lam > r, d, -lam * w)
  d_unc = -(c / w2_total)[:, None] * w
  d = jnp.where(unconstrained[:, None], d_unc, jnp.where(inside[:, None], d_inside, d))
  return jnp.where(tiny, 0.0, d)


def _diff_logits_grads(logits_fn, x1, y, la_target, targeted):
  """Logit differences to the true class and their input gradients, ``(B, K')`` and ``(B, K', D)``.

  Targeted: the single difference ``f_target - f_y`` (``K' = 1``), differentiated as one summed
  scalar (one backward pass). Untargeted: all ``f_k - f_y`` from the full Jacobian, one VJP per class
  (as the reference's per-class ``backward``) run by ``lax.map`` inside the compiled loop, so memory
  stays that of one backward pass (a vmap over classes would hold K of them at once); the true class
  gets difference ``1e10`` so it is never the closest boundary.
  """
  batch = x1.shape[0]
  # On CPU the backward convolutions go through the canonical layout (saat_jax.conv_layout: inside
  # this fori_loop XLA would otherwise run them as naive loops); same values.
  if targeted:
    def summed(xx):
      logits = logits_fn(xx)
      diff = _take(logits, la_target) - _take(logits, y)
      return jnp.sum(diff), diff

    grad, diff = input_grad(summed, has_aux=True)(x1)
    return diff[:, None], grad.reshape(batch, 1, -1)

  logits, vjp = jax.vjp(logits_fn, x1)
  n_cls = logits.shape[1]
  cot = jnp.broadcast_to(jnp.eye(n_cls, dtype=logits.dtype)[:, None, :], (n_cls, batch, n_cls))
  # The per-class input gradients of one vjp: the pullback itself is what gets the CPU layout.
  grads = lax.map(canonicalize_on_cpu(lambda ct: vjp(ct)[0]), cot)  # (K, B, ...)
  grads = jnp.swapaxes(grads.reshape(n_cls, batch, -1), 0, 1)      # (B, K, D)
  onehot = jax.nn.one_hot(y, n_cls, dtype=bool)
  df = logits - _take(logits, y)[:, None]
  dg = grads - jnp.take_along_axis(grads, y[:, None, None], axis=1)
  df = jnp.where(onehot, _NOT_FOUND, df)
  return df, dg


@functools.partial(
    jax.jit,
    static_argnames=("logits_fn", "norm", "targeted", "n_iter", "alpha_max", "eta", "beta"))
def _fab_single_run(logits_fn, x, y, la_target, key, eps, use_rand_start, *, norm, targeted,
                    n_iter, alpha_max, eta, beta):
  """``FABAttack.attack_single_run`` on a whole batch: the closest adversarial point found, else x."""
  batch = x.shape[0]
  shape = x.shape
  x0 = x.reshape(batch, -1)
  correct = jnp.argmax(logits_fn(x), axis=1) == y
  project = projection_linf if norm == "Linf" else projection_l2

  # Random start (restarts > 0): half of eps, in the direction of uniform (Linf) / Gaussian (L2) noise.
  if norm == "Linf":
    noise = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  else:
    noise = jax.random.normal(key, x0.shape, x0.dtype)
  noise = noise / lp_norm(noise, norm)[:, None]
  x_rand = jnp.clip(x0 + eps * noise * 0.5, 0.0, 1.0)
  x1 = jnp.where(use_rand_start, x_rand, x0)

  def body(_, state):
    x1, adv, best = state
    df, dg = _diff_logits_grads(logits_fn, x1.reshape(shape), y, la_target, targeted)
    if norm == "Linf":
      dual = jnp.sum(jnp.abs(dg), axis=-1)
    else:
      dual = jnp.sqrt(jnp.sum(dg * dg, axis=-1))
    dist = jnp.abs(df) / (1e-12 + dual)
    closest = jnp.argmin(dist, axis=1)
    w = jnp.take_along_axis(dg, closest[:, None, None], axis=1)[:, 0]
    b = -_take(df, closest) + jnp.sum(w * x1, axis=1)

    d3 = project(jnp.concatenate([x1, x0], 0), jnp.concatenate([w, w], 0),
                 jnp.concatenate([b, b], 0))
    d1, d2 = d3[:batch], d3[batch:]
    a0 = jnp.maximum(lp_norm(d3, norm), 1e-8)
    a1, a2 = a0[:batch], a0[batch:]
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
    x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha, 0.0, 1.0)

    is_adv = jnp.argmax(logits_fn(x1.reshape(shape)), axis=1) != y
    dist_adv = lp_norm(x1 - x0, norm)
    better = is_adv & (dist_adv < best)
    adv = jnp.where(better[:, None], x1, adv)
    best = jnp.where(better, dist_adv, best)
    x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)   # step back towards x
    return x1, adv, best

  best0 = jnp.full((batch,), _NOT_FOUND, x0.dtype)
  _, adv, best = lax.fori_loop(0, n_iter, body, (x1, x0, best0))
  found = correct & (best < _NOT_FOUND)
  return jnp.where(found[:, None], adv, x0).reshape(shape)


@functools.partial(jax.jit, static_argnames=("logits_fn", "norm"))
def _still_robust(logits_fn, x, x_adv, y, eps, *, norm):
  """Correctly classified at ``x_adv``, or ``x_adv`` farther than ``eps`` from ``x``."""
  dist = lp_norm((x_adv - x).reshape(x.shape[0], -1), norm)
  return (jnp.argmax(logits_fn(x_adv), axis=1) == y) | (dist > eps)


def check_common(name, x, y, eps, norm, n_restarts):
  """The checks FAB and Square share: ``(x, y, eps)`` as float32 NHWC images, int32 labels and a
  float, or ``ValueError``."""
  check_norm(name, norm)
  eps = check_eps(name, eps)
  x, y = check_batch(name, x, y, images=True)
  check_int(f"{name}: n_restarts", n_restarts, 0)
  return x, y, eps


def fab_attack(logits_fn: LogitsFn, x, y, *, eps: float, norm: str = "Linf", targeted: bool = True,
               n_target_classes: int = 9, n_restarts: int = 1, n_iter: int = 100,
               alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
               seed: int = 0, mask=None) -> jax.Array:
  """FAB (``FABAttack_PT.perturb``) on a batch; returns ``x_adv``, equal to ``x`` where it fails.

  Args:
    logits_fn: pure, jittable map from NHWC float32 images in ``[0, 1]`` to logits ``(B, K)``.
      Pass the same function object across calls to reuse the compiled attack.
    x: images ``(B, H, W, C)`` in ``[0, 1]``.
    y: true labels ``(B,)``.
    eps: the radius a perturbation must stay within to count (and of the restarts' random start).
    norm: ``"Linf"`` or ``"L2"``.
    targeted: ``True`` for FAB-T (AutoAttack ``standard``): for each rank ``2 .. n_target_classes +
      1`` of the clean logits, ``n_restarts`` runs towards that class on the points not fooled yet;
      ``False`` for untargeted FAB (``plus`` uses ``n_restarts=5``).
    n_target_classes: number of target ranks (``<= K - 1``), only used when ``targeted``.
    n_restarts: runs per target (or in all, untargeted); run ``r > 0`` starts at a random point
      at distance ``eps / 2``.
    n_iter: FAB iterations per run.
    alpha_max, eta, beta: the reference's step bias bound, overshoot and backward-step factors.
    seed: key for the random starts.
    mask: optional ``(B,)`` bool; rows where it is ``False`` (padding) are not attacked.

  Defaults are those of AutoAttack's ``standard`` FAB-T (``FABAttack_PT`` defaults with
  ``n_target_classes=9``, ``n_restarts=1``, ``n_iter=100``).
  """
  x, y, eps = check_common("fab_attack", x, y, eps, norm, n_restarts)
  check_int("fab_attack: n_iter", n_iter, 0)
  if not 0.0 <= float(alpha_max) <= 1.0:
    raise ValueError(f"fab_attack: alpha_max must lie in [0, 1], got {alpha_max}")
  if float(eta) <= 0 or not 0.0 < float(beta) <= 1.0:
    raise ValueError(f"fab_attack: need eta > 0 and 0 < beta <= 1, got eta={eta}, beta={beta}")

  logits = clean_logits(logits_fn, x)
  n_cls = logits.shape[1]
  if targeted:
    n_targets = check_n_target_classes("fab_attack", n_target_classes, n_cls)
    la_targets = [target_classes(logits, rank) for rank in range(2, n_targets + 2)]
  else:
    la_targets = [y]

  robust = np.array(jnp.argmax(logits, axis=1) == y)
  if mask is not None:
    robust &= np.asarray(mask, bool)
  opts = dict(norm=norm, targeted=bool(targeted), n_iter=int(n_iter), alpha_max=float(alpha_max),
              eta=float(eta), beta=float(beta))

  def one_pass(i_target, restart, key, rows, real):
    rows = jnp.asarray(rows)
    xs, ys = x[rows], y[rows]
    adv_curr = _fab_single_run(logits_fn, xs, ys, la_targets[i_target][rows], key, eps, restart > 0, **opts)
    return adv_curr, ~np.asarray(_still_robust(logits_fn, xs, adv_curr, ys, eps, norm=norm))

  return target_restart_passes(one_pass, x, robust, seed=seed, n_targets=len(la_targets),
                               n_restarts=int(n_restarts))


__all__ = ["fab_attack", "projection_linf", "projection_l2", "check_common", "NORMS"]
