"""The sub-batching of the AutoAttack members (saat_jax.autoattack.batching).

* the bucket ladder: never smaller than the rows, less than 25% padding, few distinct sizes;
* APGD-T, FAB-T and Square run their later passes only on the points not fooled yet (like the
  reference), seen through the batch sizes the model is traced with, and their outputs stay valid.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.autoattack.apgd import apgd_targeted_attack
from saat_jax.autoattack.batching import bucket, padded_index, put_rows
from saat_jax.autoattack.fab import fab_attack
from saat_jax.autoattack.square import segment_ends, square_attack


def test_bucket_ladder():
  sizes = [bucket(n) for n in range(1, 2049)]
  for n, size in enumerate(sizes, start=1):
    assert size >= n
    if n > 8:
      assert size < 1.25 * n, (n, size)
    else:
      assert size == 1 << math.ceil(math.log2(n))
  assert sizes == sorted(sizes)                       # monotone: fewer rows never need more
  assert len(set(sizes)) <= 4 + 4 * math.log2(2048 / 8)
  assert bucket(77) == 80 and bucket(500) == 512 and bucket(500, cap=500) == 500
  assert bucket(129, cap=140) == 140
  with pytest.raises(ValueError, match="at least one row"):
    bucket(0)


def test_padded_index_and_pad_rows():
  idx, real = padded_index(np.array([3, 7, 9, 11, 12, 20, 21, 30, 31]), cap=64)
  assert idx.tolist() == [3, 7, 9, 11, 12, 20, 21, 30, 31, 3]
  assert real.tolist() == [True] * 9 + [False]
  idx, real = padded_index(np.arange(9), cap=9)
  assert idx.tolist() == list(range(9)) and real.all()
  with pytest.raises(ValueError, match="smaller"):
    padded_index(np.arange(9), cap=5)
  # Gather a sub-batch, change it, put the real rows back: padding rows never land anywhere.
  full = jnp.arange(12.0).reshape(6, 2)
  idx, real = padded_index(np.array([1, 4, 5]), cap=6)
  assert idx.tolist() == [1, 4, 5, 1]
  sub = full[idx] + 100.0
  sub = sub.at[3].set(-1.0)                           # the padding row: must not be written
  np.testing.assert_array_equal(put_rows(full, idx, real, sub),
                                [[0, 1], [102, 103], [4, 5], [6, 7], [108, 109], [110, 111]])
  only = np.array([True, False, True, False])         # a subset of the real rows
  np.testing.assert_array_equal(put_rows(full, idx, only, sub),
                                [[0, 1], [102, 103], [4, 5], [6, 7], [8, 9], [110, 111]])


def test_put_rows_compiles_once_per_bucket_not_per_count_of_real_rows():
  """Square and the restart driver put back a sub-batch after every stretch, with a different count of
  real rows each time; shapes that follow that count compiled a few programs per count (most of
  Square's time on a small model). Every count that pads to one bucket must reuse one program."""
  import jax.monitoring

  compiles = []

  def listen(event, secs, **kw):  # a program compiled, or loaded from the persistent cache
    if event.endswith("backend_compile_duration") or event.endswith("compile_time_saved_sec"):
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    full = jnp.zeros((40, 3, 3, 1))
    for count in range(17, 21):                       # all pad to bucket 20
      idx, real = padded_index(np.arange(0, 2 * count, 2), cap=40)
      assert idx.size == 20
      out = put_rows(full, idx, real, jnp.ones((20, 3, 3, 1)))
      assert float(out.sum()) == 9.0 * count          # exactly the real rows written
      if count == 17:
        first = len(compiles)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert first >= 1, "no compilation seen for the first count: the listener no longer hears JAX's events"
  assert len(compiles) == first, f"{len(compiles) - first} compilations for counts 18-20 of one bucket"


def test_segment_ends():
  assert segment_ends(5000) == [16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096,
                                4608, 5000]
  assert segment_ends(100) == [16, 32, 64, 100]
  assert segment_ends(0) == [0]


# ------------------------------------------------------------------------------------------------
# A tiny random MLP on 8x8x1 images that records the batch size of every trace: at eps 0.05 about
# half of its points fall, so the later passes of each attack must be traced on smaller batches.

N_POINTS = 48


@functools.cache
def _weights():
  """Made on first use (no JAX work while the module is imported, at collection)."""
  def draws():
    k1, k2 = jax.random.split(jax.random.key(3))
    return jax.random.normal(k1, (64, 32)), jax.random.normal(k2, (32, 10))
  w1, w2 = jax.jit(draws)()  # the same bits as drawn one by one; scaled as before
  return w1 * 3.0 / math.sqrt(64), w2 * 3.0 / math.sqrt(32)


def _tracing_mlp():
  shapes = []

  def logits_fn(x):
    shapes.append(int(x.shape[0]))              # runs at trace time only: one entry per shape
    w1, w2 = _weights()
    return jnp.tanh((x.reshape(x.shape[0], -1) - 0.5) @ w1) @ w2

  return logits_fn, shapes


@pytest.fixture(scope="module")
def batch():
  x = np.asarray(jax.random.uniform(jax.random.key(4), (N_POINTS, 8, 8, 1)))
  logits_fn, _ = _tracing_mlp()
  y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), axis=1)).astype(np.int32)
  return x, y


def _check(logits_fn, x, y, x_adv, eps):
  x_adv = np.asarray(x_adv)
  assert np.all(np.abs(x_adv - x) <= eps + 1e-6) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  changed = np.any(x_adv != x, axis=(1, 2, 3))
  pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), axis=1))
  assert np.all(pred[changed] != y[changed])
  return int((pred != y).sum())


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t", "square"])
@pytest.mark.slow
def test_later_passes_run_only_on_unfooled_points(batch, attack):
  x, y = batch
  eps = 0.05
  logits_fn, shapes = _tracing_mlp()
  if attack == "apgd-t":
    x_adv = apgd_targeted_attack(logits_fn, x, y, eps=eps, n_iter=20, n_target_classes=3)
  elif attack == "fab-t":
    x_adv = fab_attack(logits_fn, x, y, eps=eps, n_iter=20, n_target_classes=3)
  else:
    x_adv = square_attack(logits_fn, x, y, eps=eps, n_queries=300)
  fooled = _check(logits_fn, x, y, x_adv, eps)
  assert 0 < fooled < N_POINTS, fooled
  # Every traced batch is a bucket size; the first pass sees all 48 points, and once points have
  # fallen a later pass is traced on a smaller batch (the old code ran every pass on all 48).
  assert N_POINTS in shapes
  assert all(s == N_POINTS or s == bucket(s) for s in shapes), shapes
  assert min(shapes) < N_POINTS, (shapes, fooled)


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t", "square"])
@pytest.mark.slow
def test_masked_rows_are_not_attacked(batch, attack):
  """Padding rows (``mask`` False, as AutoAttack pads its batches) come back unchanged and are never
  part of a pass: even the first pass is traced on the bucket of the unmasked rows."""
  x, y = batch
  eps = 0.05
  mask = np.arange(N_POINTS) < 20
  logits_fn, shapes = _tracing_mlp()
  if attack == "apgd-t":
    x_adv = apgd_targeted_attack(logits_fn, x, y, eps=eps, n_iter=20, n_target_classes=3, mask=mask)
  elif attack == "fab-t":
    x_adv = fab_attack(logits_fn, x, y, eps=eps, n_iter=20, n_target_classes=3, mask=mask)
  else:
    x_adv = square_attack(logits_fn, x, y, eps=eps, n_queries=300, mask=mask)
  fooled = _check(logits_fn, x, y, x_adv, eps)
  assert fooled > 0
  np.testing.assert_array_equal(np.asarray(x_adv)[~mask], x[~mask])
  assert max(s for s in shapes if s != N_POINTS) <= bucket(20), shapes
