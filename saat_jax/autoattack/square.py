"""Square Attack (Andriushchenko et al., ECCV 2020), the score-based attack of AutoAttack.

A JAX port of the reference PyTorch code (``pyautoattack`` 0.2.0, ``square.py``), untargeted with the
margin loss, for the l_inf and l_2 threat models, with the settings AutoAttack uses
(``p_init=0.8``, ``n_queries=5000``, ``n_restarts=1`` and no rescaling of the ``p`` schedule to
``n_queries``: :func:`p_selection` is indexed by the raw iteration).

* l_inf: start at ``clip(x + eps * s)`` with one random sign ``s`` per image column and channel
  (vertical stripes); each iteration adds ``+-2 eps`` (one random sign per channel) on a random
  ``s x s`` window, projects back onto the eps ball and ``[0, 1]``, and keeps the candidate when the
  margin ``f_y - max_{k != y} f_k`` decreases or turns ``<= 0``.
* l_2: start from a grid of the reference's ``eta`` blocks with random signs scaled to norm eps;
  each iteration moves the perturbation mass of a random window (plus a second, cleared, window)
  into a fresh ``eta`` block on the first window, keeping the total norm at eps.

Only points still unsuccessful (margin ``> 0``) are updated, and, as in the reference, only they
are queried: the ``n_queries`` iterations are a few stretches (:func:`segment_ends`), each one
``lax.while_loop`` in one ``jax.jit`` over the unfooled points gathered into a sub-batch padded to a
bucket size (:mod:`saat_jax.autoattack.batching`); a run stops when every point succeeded. The
side ``s`` of the window follows :func:`p_selection` (a host-side table indexed by the iteration).
Windows are placed with iota comparisons against per-example offsets, so no shape is
dynamic.

Randomness: the reference draws one window position, one sign vector and one ``eta`` orientation
per iteration, shared by the whole batch; here each example draws its own. Each example's sequence
of draws has the same distribution as in the reference and examples do not interact, so per-point
success probabilities are the same (counts over a batch are less correlated). The window offset is
drawn like the reference's ``random_int(0, h - s)``, i.e. uniformly in ``0 .. h - s - 1`` (``0`` when
``s == h``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saat_jax.autoattack.batching import padded_index, put_rows
from saat_jax.autoattack.common import (LogitsFn, attack_unfooled, check_int, clean_logits, lp_norm,
                                        project)
from saat_jax.autoattack.fab import check_common

# (iteration upper bound, divisor of p_init) of the reference's schedule, after the first 10 iterations.
_P_SCHEDULE = ((50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
               (8000, 256))


def p_selection(it: int, p_init: float = 0.8, n_queries: int = 5000,
                rescale_schedule: bool = False) -> float:
  """Fraction of pixels the square covers at iteration ``it`` (0-based), as ``SquareAttack.p_selection``.

  ``p_init`` up to iteration 10, then halved at iterations 50, 200, 500, 1000, 2000, 4000, 6000,
  8000 (``p_init / 512`` beyond). ``rescale_schedule=True`` first maps ``it`` to
  ``int(it / n_queries * 10000)`` (the reference's default; AutoAttack turns it off).
  """
  if rescale_schedule:
    it = int(it / n_queries * 10000)
  if it <= 10:
    return p_init
  for upper, div in _P_SCHEDULE:
    if it <= upper:
      return p_init / div
  return p_init / 512


def square_sizes(n_queries: int, p_init: float, h: int, w: int, c: int, norm: str) -> np.ndarray:
  """The window side of every iteration, ``(n_queries,)`` int32, as the reference computes it."""
  n_features = c * h * w
  sizes = np.empty((max(n_queries, 1),), np.int32)
  for it in range(n_queries):
    s = int(round(math.sqrt(p_selection(it, p_init) * n_features / c)))
    if norm == "Linf":
      s = max(s, 1)
    else:
      s = max(s, 3)
      if s % 2 == 0:
        s += 1
    sizes[it] = min(s, min(h, w))
  if n_queries == 0:
    sizes[0] = 1
  return sizes


def _eta_rectangles(x: int, y: int) -> np.ndarray:
  """Concentric rectangles of weights ``1/(k+1)^2`` on an ``x`` by ``y`` block, unit l_2 norm."""
  delta = np.zeros((x, y))
  x_c, y_c = x // 2 + 1, y // 2 + 1
  r0, c0 = x_c - 1, y_c - 1
  for k in range(max(x_c, y_c)):
    delta[max(r0, 0):min(r0 + 2 * k + 1, x), max(c0, 0):min(c0 + 2 * k + 1, y)] += 1.0 / (k + 1) ** 2
    r0 -= 1
    c0 -= 1
  norm = np.sqrt(np.sum(delta ** 2))
  return delta / norm if norm > 0 else delta


def eta_block(s: int) -> np.ndarray:
  """The reference's ``eta(s)`` before its random transpose: ``+`` rectangles on top, ``-`` below."""
  delta = np.zeros((s, s))
  delta[:s // 2] = _eta_rectangles(s // 2, s)
  delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
  norm = np.sqrt(np.sum(delta ** 2))
  return delta / norm if norm > 0 else delta


def _margin(logits_fn, x, y):
  logits = logits_fn(x)
  onehot = jax.nn.one_hot(y, logits.shape[1], dtype=bool)
  correct = jnp.sum(jnp.where(onehot, logits, 0.0), axis=1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=1)
  return correct - other


def _signs(key, shape, dtype):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def offsets(key, batch, room):
  """Per-example offsets uniform in ``0 .. room - 1`` (0 when ``room == 0``), like ``random_int``."""
  return jnp.floor(jax.random.uniform(key, (batch,)) * room).astype(jnp.int32)


def window(vh, vw, s, h, w):
  """``(B, H, W)`` boolean masks of the ``s x s`` windows at per-example offsets ``(vh, vw)``."""
  rows = lax.broadcasted_iota(jnp.int32, (1, h), 1)
  cols = lax.broadcasted_iota(jnp.int32, (1, w), 1)
  in_r = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
  in_c = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
  return in_r[:, :, None] & in_c[:, None, :]


def _l2(v, axes):
  """l_2 norm over ``axes`` (kept): the norm per channel of a window uses axes ``(1, 2)``."""
  return jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


@functools.partial(jax.jit, static_argnames=("logits_fn", "norm"))
def _square_init(logits_fn, x, y, key, eps, init_tab, *, norm):
  """The reference's start point of one run (l_inf stripes or the l_2 grid of blocks) and its margin."""
  batch, h, w, c = x.shape
  if norm == "Linf":
    stripes = _signs(key, (batch, 1, w, c), x.dtype)
    x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
  else:
    n_tiles = init_tab.shape[1]
    k_t, k_s = jax.random.split(key)
    flip = jax.random.bernoulli(k_t, 0.5, (batch, n_tiles))
    tiles = jnp.where(flip[:, :, None, None], init_tab[1][None], init_tab[0][None])  # (B, T, H, W)
    delta = jnp.einsum("bthw,btc->bhwc", tiles, _signs(k_s, (batch, n_tiles, c), x.dtype))
    x_best = jnp.clip(x + delta / (lp_norm(delta, "L2", keepdims=True) + 1e-12) * eps, 0.0, 1.0)
  return x_best, _margin(logits_fn, x_best, y)


@functools.partial(jax.jit, static_argnames=("logits_fn", "norm"))
def _square_steps(logits_fn, x, y, active, key, eps, sizes, size_idx, eta_tab, x_best, margin_min,
                  loss_min, i_start, i_stop, *, norm):
  """Iterations ``i_start .. i_stop - 1`` of ``attack_single_run`` on a batch, as one while loop;
  ``active`` marks the rows that count (the loop ends once none of them has a margin ``> 0``)."""
  batch, h, w, c = x.shape

  def cond(state):
    i, _, margin_min, _ = state
    return (i < i_stop) & jnp.any(active & (margin_min > 0))

  def body(state):
    i, x_best, margin_min, loss_min = state
    todo = active & (margin_min > 0)
    s = sizes[i]
    keys = jax.random.split(jax.random.fold_in(key, i), 6)
    vh = offsets(keys[0], batch, h - s)
    vw = offsets(keys[1], batch, w - s)
    win = window(vh, vw, s, h, w)[..., None]                         # (B, H, W, 1)

    if norm == "Linf":
      step = 2.0 * eps * _signs(keys[2], (batch, 1, 1, c), x.dtype)
      x_new = project(jnp.where(win, x_best + step, x_best), x, eps, norm)
    else:
      delta = x_best - x
      vh2 = offsets(keys[3], batch, h - s)
      vw2 = offsets(keys[4], batch, w - s)
      win2 = window(vh2, vw2, s, h, w)[..., None]
      norm_win1 = _l2(jnp.where(win, delta, 0.0), (1, 2))              # (B, 1, 1, C)
      norm_img = lp_norm(delta, "L2", keepdims=True)                  # (B, 1, 1, 1)
      norm_wins = _l2(jnp.where(win | win2, delta, 0.0), (1, 2))       # (B, 1, 1, C)
      # The eta block (random orientation) moved to the window: gather with clipped offsets.
      k_ts, k_sg = keys[5], keys[2]
      orient = jax.random.bernoulli(k_ts, 0.5, (batch,)).astype(jnp.int32)
      block = eta_tab[size_idx[i]][orient]                             # (B, H, W), block top-left
      rr = jnp.clip(jnp.arange(h)[None, :] - vh[:, None], 0, h - 1)
      cc = jnp.clip(jnp.arange(w)[None, :] - vw[:, None], 0, w - 1)
      placed = block[jnp.arange(batch)[:, None, None], rr[:, :, None], cc[:, None, :]]
      fresh = jnp.where(win, placed[..., None], 0.0) * _signs(k_sg, (batch, 1, 1, c), x.dtype)
      new = fresh + jnp.where(win, delta, 0.0) / (1e-12 + norm_win1)
      budget = jnp.sqrt(jnp.maximum(eps ** 2 - norm_img ** 2, 0.0) / c + norm_wins ** 2)
      new = new / (1e-12 + _l2(new, (1, 2))) * budget
      delta = jnp.where(win, new, jnp.where(win2, 0.0, delta))
      x_new = jnp.clip(x + delta / (lp_norm(delta, "L2", keepdims=True) + 1e-12) * eps, 0.0, 1.0)

    margin = _margin(logits_fn, x_new, y)
    loss = margin
    improved = loss < loss_min
    loss_min = jnp.where(todo & improved, loss, loss_min)
    accept = todo & (improved | (margin <= 0))
    margin_min = jnp.where(accept, margin, margin_min)
    x_best = jnp.where(accept[:, None, None, None], x_new, x_best)
    return i + 1, x_best, margin_min, loss_min

  state = (jnp.asarray(i_start, jnp.int32), x_best, margin_min, loss_min)
  _, x_best, margin_min, loss_min = lax.while_loop(cond, body, state)
  return x_best, margin_min, loss_min


def segment_ends(n_queries: int) -> list[int]:
  """Iterations after which a run drops the points it has fooled (re-gathers the rest): often early,
  when the windows are large and most points fall, then every 512 iterations."""
  early = [e for e in (16, 32, 64, 128, 256, 512) if e < n_queries]
  late = list(range(1024, n_queries, 512))
  return early + late + [n_queries]


def _square_single_run(logits_fn, x, y, real, key, eps, sizes, size_idx, eta_tab, init_tab, *,
                       norm, n_queries):
  """``SquareAttack.attack_single_run`` on a sub-batch whose rows ``real`` (numpy bool) count.

  As in the reference, only the points not fooled yet are queried: the run is cut into stretches
  (:func:`segment_ends`), each a jitted while loop over the unfooled rows gathered into a
  sub-batch padded to a bucket size. Padding rows (``real`` False) are never attacked.
  """
  batch = x.shape[0]
  k_init, k_loop = jax.random.split(key)
  x_best, m0 = _square_init(logits_fn, x, y, k_init, eps, init_tab, norm=norm)
  # Padding rows get margin -inf: never "to do".
  margin_min = jnp.where(jnp.asarray(real), m0, -jnp.inf)
  loss_min = margin_min

  i = 0
  for stop in segment_ends(n_queries):
    todo = np.flatnonzero(np.asarray(margin_min) > 0)
    if todo.size == 0:
      break
    idx, todo_real = padded_index(todo, batch)
    rows = jnp.asarray(idx)
    xb, mb, lb = _square_steps(logits_fn, x[rows], y[rows], jnp.asarray(todo_real), k_loop, eps, sizes,
                               size_idx, eta_tab, x_best[rows], margin_min[rows], loss_min[rows],
                               i, stop, norm=norm)
    x_best = put_rows(x_best, idx, todo_real, xb)
    margin_min = put_rows(margin_min, idx, todo_real, mb)
    loss_min = put_rows(loss_min, idx, todo_real, lb)
    i = stop
  return x_best


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _misclassified(logits_fn, x, y):
  return jnp.argmax(logits_fn(x), axis=1) != y


def _l2_tables(sizes: np.ndarray, h: int, w: int):
  """Host-side ``eta`` tables: per distinct window side, both orientations at the top-left of an
  ``H x W`` canvas; and the initial grid of blocks, one canvas per tile, both orientations."""
  distinct = sorted(set(int(s) for s in sizes))
  size_idx = np.array([distinct.index(int(s)) for s in sizes], np.int32)
  eta_tab = np.zeros((len(distinct), 2, h, w), np.float32)
  for k, s in enumerate(distinct):
    blk = eta_block(s)
    eta_tab[k, 0, :s, :s] = blk
    eta_tab[k, 1, :s, :s] = blk.T

  s0 = h // 5
  start = (h - 5 * s0) // 2
  tiles = []
  for i in range(h // s0):
    for j in range(w // s0):
      r0, c0 = start + i * s0, start + j * s0
      if r0 >= h or c0 >= w:
        continue
      blk = eta_block(s0)
      canvas = np.zeros((2, h, w), np.float32)
      nr, nc = min(s0, h - r0), min(s0, w - c0)
      canvas[0, r0:r0 + nr, c0:c0 + nc] = blk[:nr, :nc]
      canvas[1, r0:r0 + nr, c0:c0 + nc] = blk.T[:nr, :nc]
      tiles.append(canvas)
  init_tab = np.stack(tiles, axis=1)                                   # (2, T, H, W)
  return size_idx, eta_tab, init_tab


def square_attack(logits_fn: LogitsFn, x, y, *, eps: float, norm: str = "Linf",
                  n_queries: int = 5000, p_init: float = 0.8, n_restarts: int = 1,
                  seed: int = 0, mask=None) -> jax.Array:
  """Untargeted Square Attack (margin loss) on a batch; returns ``x_adv``, equal to ``x`` where it fails.

  Args:
    logits_fn: pure, jittable map from NHWC float32 images in ``[0, 1]`` to logits ``(B, K)``.
      Pass the same function object across calls to reuse the compiled attack.
    x: images ``(B, H, W, C)`` in ``[0, 1]`` (square images, as the reference assumes; l_2 needs
      ``H >= 5``).
    y: true labels ``(B,)``.
    eps: radius of the l_inf / l_2 ball.
    norm: ``"Linf"`` or ``"L2"``.
    n_queries: iterations (model queries after the initial one) per restart.
    p_init: initial fraction of pixels covered by the square (:func:`p_selection`).
    n_restarts: restarts, each on the points not fooled yet.
    seed: PRNG seed; the result is a deterministic function of it.
    mask: optional ``(B,)`` bool; rows where it is ``False`` (padding) are not attacked.

  Defaults are those of AutoAttack's ``standard`` version.
  """
  x, y, eps = check_common("square_attack", x, y, eps, norm, n_restarts)
  check_int("square_attack: n_queries", n_queries, 0)
  if not 0.0 < float(p_init) <= 1.0:
    raise ValueError(f"square_attack: p_init must lie in (0, 1], got {p_init}")
  _, h, w, c = x.shape
  if norm == "L2" and min(h, w) < 5:
    raise ValueError(f"square_attack: the L2 attack needs images of at least 5x5 pixels "
                     f"(its initialisation uses blocks of side H // 5), got {h}x{w}")

  sizes = square_sizes(int(n_queries), float(p_init), h, w, c, norm)
  if norm == "L2":
    size_idx, eta_tab, init_tab = _l2_tables(sizes, h, w)
  else:
    size_idx = np.zeros_like(sizes)
    eta_tab = np.zeros((1, 2, 1, 1), np.float32)
    init_tab = np.zeros((2, 1, 1, 1), np.float32)

  robust = np.array(jnp.argmax(clean_logits(logits_fn, x), axis=1) == y)
  if mask is not None:
    robust &= np.asarray(mask, bool)
  base_key = jax.random.key(seed)

  def one_run(key, rows, real):
    rows = jnp.asarray(rows)
    adv = _square_single_run(logits_fn, x[rows], y[rows], real, key, eps, sizes, size_idx, eta_tab,
                             init_tab, norm=norm, n_queries=int(n_queries))
    return adv, np.asarray(_misclassified(logits_fn, adv, y[rows]))

  x_adv = x
  for restart in range(int(n_restarts)):
    if not robust.any():
      break
    x_adv = attack_unfooled(functools.partial(one_run, jax.random.fold_in(base_key, restart)), x_adv,
                            robust)[0]
  return x_adv


__all__ = ["square_attack", "p_selection", "square_sizes", "eta_block", "segment_ends"]
