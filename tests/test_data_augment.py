"""On-device augmentation and epoch batching (saat_jax.data.augmentation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.data import augment, epoch_batches, load_dataset, to_float


# ------------------------------------------------------------------------------------------------
# On-device augmentation.


def all_crops(image, pad, mode="zero"):
  """Every (2*pad+1)^2 crop of the padded image, and their mirror images (numpy, slow).

  ``mode='reflect'`` is Rice et al.'s ``np.pad(x, ..., mode='reflect')``."""
  h, w, _ = image.shape
  widths = ((pad, pad), (pad, pad), (0, 0))
  padded = np.pad(image, widths, mode="reflect") if mode == "reflect" else np.pad(image, widths)
  crops = {}
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      crops[(dy, dx, False)] = crop
      crops[(dy, dx, True)] = crop[:, ::-1]
  return crops


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_augment_outputs_are_padded_crops_and_flips(pad_mode):
  rng = np.random.default_rng(0)
  x = rng.integers(1, 256, size=(256, 32, 32, 3), dtype=np.uint8)  # no zeros: padding is visible
  out = np.asarray(jax.jit(lambda k, im: augment(k, im, pad=4, pad_mode=pad_mode))(jax.random.key(0), x))
  assert out.shape == x.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  seen = []
  for i in range(len(x)):
    ref = x[i].astype(np.float32) / 255.0
    matches = [k for k, c in all_crops(ref, 4, pad_mode).items() if np.array_equal(c, out[i])]
    assert len(matches) == 1, f"example {i} is not exactly one padded crop (or its flip)"
    seen.append(matches[0])
  offsets = {(dy, dx) for dy, dx, _ in seen}
  assert len(offsets) > 50  # independent offsets per example, over the 81 possible
  assert {dy for dy, _ in offsets} == set(range(9)) and {dx for _, dx in offsets} == set(range(9))
  flipped = np.mean([f for _, _, f in seen])
  assert 0.4 < flipped < 0.6


def test_augment_pads_by_reflection_by_default_as_rice_et_al():
  x = np.random.default_rng(5).integers(1, 256, size=(64, 32, 32, 3), dtype=np.uint8)
  out = np.asarray(augment(jax.random.key(1), x, pad=4))
  # with zero padding some crops hold zero pixels; by reflection none can (x has no zeros)
  assert out.min() > 0
  assert np.asarray(augment(jax.random.key(1), x, pad=4, pad_mode="zero")).min() == 0
  with pytest.raises(ValueError, match="pad_mode='zero'"):
    augment(jax.random.key(0), x[:, :4, :4], pad=4)
  with pytest.raises(ValueError, match="unknown"):
    augment(jax.random.key(0), x, pad=4, pad_mode="edge")


def test_augment_is_a_function_of_the_key():
  x = np.random.default_rng(1).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
  a = augment(jax.random.key(3), x)
  b = augment(jax.random.key(3), x)
  c = augment(jax.random.key(4), x)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(jax.jit(augment)(jax.random.key(3), x), a)  # jit == eager
  np.testing.assert_array_equal(augment(jax.random.PRNGKey(3), x), augment(jax.random.PRNGKey(3), x))


def test_augment_without_crop_or_flip_is_to_float():
  x = np.random.default_rng(2).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augment(jax.random.key(0), x, pad=0, flip=False), x.astype(np.float32) / 255)
  np.testing.assert_array_equal(to_float(x), x.astype(np.float32) / 255)
  assert to_float(jnp.asarray(x)).dtype == jnp.float32
  flip_only = np.asarray(augment(jax.random.key(0), x, pad=0, flip=True))
  f = x.astype(np.float32) / 255
  for i in range(len(x)):
    assert np.array_equal(flip_only[i], f[i]) or np.array_equal(flip_only[i], f[i, :, ::-1])
  with pytest.raises(TypeError, match="uint8"):
    to_float(f)


def test_augment_works_on_digits_shapes():
  x = load_dataset("digits").train_images[:32]
  out = augment(jax.random.key(0), x, pad=2, flip=False)
  assert out.shape == (32, 8, 8, 1)


# ------------------------------------------------------------------------------------------------
# Epoch batching.


def test_epoch_batches_deterministic_and_complete():
  a = epoch_batches(103, 10, seed=0, epoch=3)
  b = epoch_batches(103, 10, seed=0, epoch=3)
  assert len(a) == 10 and all(len(i) == 10 for i in a)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  flat = np.concatenate(a)
  assert len(np.unique(flat)) == 100 and flat.min() >= 0 and flat.max() < 103  # 3 dropped
  assert not np.array_equal(np.concatenate(epoch_batches(103, 10, seed=0, epoch=4)), flat)
  assert not np.array_equal(np.concatenate(epoch_batches(103, 10, seed=1, epoch=3)), flat)
  # The order depends on (seed, epoch) only: it is np.random.default_rng((seed, epoch)).
  np.testing.assert_array_equal(flat, np.random.default_rng((0, 3)).permutation(103)[:100])


def test_epoch_batches_keep_last_for_evaluation():
  kept = epoch_batches(103, 10, seed=0, epoch=0, shuffle=False, drop_last=False)
  assert [len(i) for i in kept] == [10] * 10 + [3]
  np.testing.assert_array_equal(np.concatenate(kept), np.arange(103))
  shuffled = epoch_batches(103, 10, seed=0, epoch=0, drop_last=False)
  np.testing.assert_array_equal(np.sort(np.concatenate(shuffled)), np.arange(103))
  assert epoch_batches(5, 10, seed=0, epoch=0) == []
  assert [len(i) for i in epoch_batches(5, 10, seed=0, epoch=0, drop_last=False)] == [5]
  with pytest.raises(ValueError):
    epoch_batches(10, 0, seed=0, epoch=0)
