"""Fixed-shape sub-batches of the points an attack still has to work on.

The reference PyTorch code runs every pass (restart, target class, Square iteration) only on the
points not fooled yet, so its cost falls as points fall. A jitted JAX loop has a fixed shape, so here
the still-robust rows are gathered into a sub-batch whose size is rounded up to a *bucket*: one of
four sizes per octave (``1, 2, 4, 8, 10, 12, 14, 16, 20, ..., 64, 80, 96, 112, 128, 160, ...``).
Padding then costs less than 25% (not up to 100% as with powers of two), and the number of distinct
shapes, i.e. of compilations, stays logarithmic in the batch size. Padding rows repeat the first
real row and are masked out of every result.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def bucket(n: int, cap: Optional[int] = None) -> int:
  """Padded size for ``n`` rows, at most ``cap``: the next power of two up to 8, else ``n`` rounded
  up to a multiple of a quarter of the largest power of two below ``n`` (so less than 25% padding).

  >>> [bucket(n) for n in (1, 3, 5, 8, 9, 17, 33, 72, 77, 129, 500)]
  [1, 4, 8, 8, 10, 20, 40, 80, 80, 160, 512]
  """
  n = int(n)
  if n < 1:
    raise ValueError(f"bucket: need at least one row, got n={n}")
  if n <= 8:
    size = 1 << (n - 1).bit_length()
  else:
    quarter = (1 << (n - 1).bit_length()) // 8
    size = -(-n // quarter) * quarter
  return size if cap is None else min(int(cap), size)


def padded_index(idx: np.ndarray, cap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Rows ``idx`` padded (by repeating ``idx[0]``) to ``bucket(len(idx), cap)``; also the mask of
  real rows. ``cap`` must be at least ``len(idx)``. Gather a sub-batch with ``a[padded]``."""
  idx = np.asarray(idx, np.int64)
  size = bucket(idx.size, cap)
  if size < idx.size:
    raise ValueError(f"padded_index: cap {cap} is smaller than the {idx.size} rows to keep")
  padded = np.concatenate([idx, np.full(size - idx.size, idx[0], np.int64)])
  return padded, np.arange(size) < idx.size


def put_rows(full, idx: np.ndarray, real: np.ndarray, sub):
  """``full`` with rows ``idx[real]`` replaced by the rows of ``sub`` where ``real`` holds: the
  inverse of gathering ``full[idx]``, for the rows of a sub-batch selected by the mask ``real``.
  ``full`` may be a JAX array (a new array is returned) or a numpy array (updated in place)."""
  idx, real = np.asarray(idx), np.asarray(real, bool)
  if isinstance(full, np.ndarray):
    full[idx[real]] = np.asarray(sub)[np.flatnonzero(real)]
    return full
  # Padding rows are sent past the end and dropped, so every shape here is the bucket's, not the
  # count of real rows: one compilation per bucket instead of a few eager ones per distinct count
  # (which cost Square ~20 ms each, most of its time on small models).
  return _scatter_rows(full, jnp.asarray(np.where(real, idx, full.shape[0]), jnp.int32), sub)


@jax.jit
def _scatter_rows(full, target, sub):
  return full.at[target].set(sub.astype(full.dtype), mode="drop")


__all__ = ["bucket", "padded_index", "put_rows"]
