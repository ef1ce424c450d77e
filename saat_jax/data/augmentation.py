"""What runs per step and per epoch: uint8 -> float, on-device augmentation, the batch order.

:func:`augment` runs inside the jitted step: a random 32x32 crop of the image padded by 4 pixels
on each side (by reflection, as Rice et al. 2020 and the released SAAT code; zeros as torchvision's
``RandomCrop(32, padding=4)`` on request), with an independent offset per example, then a
horizontal flip with probability 1/2. :func:`epoch_batches` gives each epoch's example order as a pure
function of ``(seed, epoch)``, so a resumed run sees the same batches.

(Named ``augmentation``, not ``augment``, so that ``saat_jax.data.augment`` stays the function.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# x / 255 for every uint8 value, correctly rounded. XLA may compile a division by a constant into a
# multiplication by its reciprocal, which is off by one ulp for half the values; a table lookup gives
# the same floats as numpy's and PyTorch's (ToTensor) division on every backend.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_float(images_uint8) -> jax.Array:
  """uint8 images -> float32 in [0, 1], exactly ``x / 255`` (torchvision's ToTensor); jittable."""
  x = jnp.asarray(images_uint8)
  if x.dtype != jnp.uint8:
    raise TypeError(f"to_float expects uint8 images (0..255), got {x.dtype}; images already in "
                    f"[0, 1] must not be divided by 255 again.")
  return jnp.asarray(_UINT8_TO_FLOAT)[x.astype(jnp.int32)]


PAD_MODES = ("reflect", "zero")


def augment(key, images_uint8, *, pad: int = 4, flip: bool = True, pad_mode: str = "reflect") -> jax.Array:
  """Random crop after padding, then random horizontal flip; uint8 NHWC -> float32 [0, 1].

  Rice et al. (2020, ``utils.pad``: ``np.pad(..., mode='reflect')`` then ``Crop(32, 32)`` and
  ``FlipLR``), which the released SAAT code inherits, pad by reflection: ``pad_mode='reflect'``
  (the default). ``pad_mode='zero'`` is torchvision's ``RandomCrop(H, padding=pad)`` (zeros). Each
  example gets its own crop offset, uniform in ``{0..2*pad}`` along each axis, and is flipped with
  probability 1/2. Jittable; a pure function of ``key``. ``pad=0, flip=False`` is :func:`to_float`.
  """
  x = jnp.asarray(images_uint8)
  if x.ndim != 4:
    raise ValueError(f"augment expects a batch of NHWC images, got shape {x.shape}")
  pad = int(pad)
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")
  if pad_mode not in PAD_MODES:
    raise ValueError(f"pad_mode={pad_mode!r} is unknown; use 'reflect' (Rice et al.) or 'zero' (torchvision)")
  n, h, w, c = x.shape
  if pad_mode == "reflect" and pad >= min(h, w):
    raise ValueError(f"reflect padding of {pad} px needs images larger than {pad} px, got {h}x{w}; "
                     "lower data.pad or use data.pad_mode='zero'")
  crop_key, flip_key = jax.random.split(key)
  if pad > 0:
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    padded = jnp.pad(x, widths, mode="reflect") if pad_mode == "reflect" else jnp.pad(x, widths)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
  if flip:
    flipped = jax.random.bernoulli(flip_key, 0.5, (n,))
    x = jnp.where(flipped[:, None, None, None], x[:, :, ::-1, :], x)
  return to_float(x)


def epoch_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True) -> list[np.ndarray]:
  """Index arrays of one epoch's batches; the order is a function of ``(seed, epoch)`` only.

  ``drop_last=True`` (training) drops a ragged last batch; ``drop_last=False`` (evaluation) keeps it.
  """
  num_examples, batch_size = int(num_examples), int(batch_size)
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if shuffle:
    order = np.random.default_rng((int(seed), int(epoch))).permutation(num_examples)
  else:
    order = np.arange(num_examples)
  stop = (num_examples // batch_size) * batch_size if drop_last else num_examples
  return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
