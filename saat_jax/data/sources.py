"""Sources that are not a local archive: scikit-learn's digits and tensorflow-datasets.

* ``digits``: scikit-learn's 1,797 real 8x8 grey-scale digits (values 0..16 scaled to 0..255), with
  a fixed class-stratified split of 1,397 train / 400 test, for minute-long CPU runs.
* TFDS (``source='tfds'``): ``tfds.load(name, batch_size=-1, as_supervised=True)``, the online
  path (Colab), which needs TensorFlow to prepare CIFAR. Without TensorFlow a TF-free
  ``tfds.data_source`` copy (array_record) is used when one was prepared beforehand.

Each loader returns ``train_x, train_y, test_x, test_y, class_names`` (uint8 NHWC, int32).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from saat_jax.config_base import SHARED_CIFAR10
from saat_jax.data.core import CANONICAL_CLASSES, CIFAR_SHAPE, DataError

_DIGITS_SPLIT_SEED = 0  # fixed digits train/test split (not the run's seed)
_DIGITS_NUM_TEST = 400


def _load_digits():
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.round(np.asarray(digits.images, np.float64) * (255.0 / 16.0))
  images = np.clip(images, 0, 255).astype(np.uint8)[..., None]
  labels = np.asarray(digits.target, np.int32)
  n = len(labels)
  perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(n)
  # Class-stratified test set: each class gets its share of the 400 (largest remainders).
  counts = np.bincount(labels, minlength=10)
  share = _DIGITS_NUM_TEST * counts / n
  quota = np.floor(share).astype(int)
  extra = np.argsort(-(share - quota), kind="stable")[:_DIGITS_NUM_TEST - quota.sum()]
  quota[extra] += 1
  is_test = np.zeros(n, bool)
  for c in range(10):
    is_test[perm[labels[perm] == c][:quota[c]]] = True
  test_idx, train_idx = perm[is_test[perm]], perm[~is_test[perm]]
  return (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
          tuple(str(c) for c in range(10)))


def _is_missing_tensorflow(e: BaseException) -> bool:
  return isinstance(e, ImportError) and "tensorflow" in f"{getattr(e, 'name', '')} {e}".lower()


def _load_tfds(name: str, data_dir: Optional[str]):
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f"source='tfds' needs tensorflow-datasets ({e}): pip install "
                    f"tensorflow-datasets tensorflow, or pass data_dir= a local CIFAR archive "
                    f"(e.g. {SHARED_CIFAR10}) with source='auto'.") from e
  tfds_dir = None if data_dir is None else str(Path(os.path.expanduser(str(data_dir))).absolute())
  arrays = {}
  try:
    for split in ("train", "test"):
      ds = tfds.load(name, split=split, data_dir=tfds_dir, batch_size=-1, as_supervised=True)
      arrays[split] = tfds.as_numpy(ds)
  except Exception as e:  # noqa: BLE001 -- every failure becomes a DataError with a fix
    if not _is_missing_tensorflow(e):
      raise DataError(f"tensorflow-datasets could not load {name} (data_dir={tfds_dir}): "
                      f"{type(e).__name__}: {e}. TFDS downloads CIFAR on first use, so it needs "
                      f"internet; offline, pass data_dir= a local archive (e.g. {SHARED_CIFAR10}) "
                      f"with source='auto'.") from e
    # No TensorFlow: TFDS can still read an array_record copy prepared beforehand.
    try:
      for split in ("train", "test"):
        records = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
        items = [records[i] for i in range(len(records))]
        arrays[split] = (np.stack([np.asarray(r["image"]) for r in items]) if items
                         else np.zeros((0,) + CIFAR_SHAPE, np.uint8),
                         np.asarray([int(np.asarray(r["label"])) for r in items], np.int64))
    except Exception as e2:  # noqa: BLE001
      raise DataError(
          f"tensorflow-datasets cannot prepare {name} without TensorFlow ({e}), and it found no "
          f"TF-free (array_record) copy ({type(e2).__name__}: {e2}). Install TensorFlow "
          f"(pip install tensorflow) to load {name} with source='tfds', or pass data_dir= a local "
          f"CIFAR archive or folder with source='auto' (offline CIFAR-10: {SHARED_CIFAR10}).") from e
  out = []
  for split in ("train", "test"):
    images, labels = arrays[split]
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != CIFAR_SHAPE:
      raise DataError(f"tensorflow-datasets gave {name} {split} images of shape {images.shape} and "
                      f"dtype {images.dtype}, not uint8 {CIFAR_SHAPE}; check the TFDS data_dir.")
    out += [np.ascontiguousarray(images), np.asarray(labels).astype(np.int32)]
  return (*out, CANONICAL_CLASSES[name])
