"""Sources that are not a local archive: scikit-learn's digits and tensorflow-datasets.

* ``digits``: scikit-learn's 1,797 real 8x8 grey-scale digits (values 0..16 scaled to 0..255), with
  a fixed class-stratified split of 1,397 train / 400 test, for minute-long CPU runs.
* TFDS (``source='tfds'``): ``tfds.load(name, batch_size=-1, as_supervised=True)`` in TFDS's own
  data folder (``$TFDS_DATA_DIR``, by default ``~/tensorflow_datasets``; ``data.data_dir`` is not
  used), which needs TensorFlow to prepare CIFAR (``pip install tensorflow tensorflow-datasets``).
  Without TensorFlow a TF-free ``tfds.data_source`` copy (array_record) is used when one was
  prepared beforehand. The ``download`` source (:mod:`saat_jax.data.download`) needs neither.

Each loader returns ``train_x, train_y, test_x, test_y, class_names`` (uint8 NHWC, int32).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from saat_jax.data.core import CANONICAL_CLASSES, CIFAR_SHAPE, DOWNLOAD_ADVICE, DataError

_DIGITS_SPLIT_SEED = 0  # fixed digits train/test split (not the run's seed)
_DIGITS_NUM_TEST = 400


def load_digits_data():
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


def _missing_module(e: BaseException) -> Optional[str]:
  """The top-level module an ImportError did not find (e.g. 'tensorflow'), else None."""
  if not isinstance(e, ImportError):
    return None
  name = getattr(e, "name", None) or ""
  return name.split(".")[0] or "tensorflow"


def tfds_data_dir(tfds) -> str:
  """Where TFDS keeps (and looks for) prepared data: $TFDS_DATA_DIR, by default ~/tensorflow_datasets."""
  constants = getattr(getattr(tfds, "core", None), "constants", None)
  return str(getattr(constants, "DATA_DIR", None)
             or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets"))


def _tfds_install_advice(missing: str) -> str:
  packages = ["tensorflow", "tensorflow-datasets"]
  if missing.replace("_", "-") not in packages:
    packages.append(missing)
  return f"`pip install {' '.join(packages)}`"


def load_tfds(name: str):
  """``name`` through tensorflow-datasets, in TFDS's own data folder (``$TFDS_DATA_DIR``).

  ``data.data_dir`` is not TFDS's folder (it names a local archive for the other sources), so it
  is never passed to TFDS.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f"--config.data.source=tfds needs tensorflow-datasets, which is not importable "
                    f"({e}): {_tfds_install_advice(_missing_module(e))}. Or use "
                    f"--config.data.source=download, which needs no TensorFlow.") from e
  tfds_dir = tfds_data_dir(tfds)
  arrays = {}
  try:
    for split in ("train", "test"):
      ds = tfds.load(name, split=split, batch_size=-1, as_supervised=True)
      arrays[split] = tfds.as_numpy(ds)
  except Exception as e:  # noqa: BLE001 -- every failure becomes a DataError with a fix
    missing = _missing_module(e)
    if missing is None:
      raise DataError(f"tensorflow-datasets could not load {name} into its data folder {tfds_dir} "
                      f"($TFDS_DATA_DIR): {type(e).__name__}: {e}. TFDS downloads CIFAR on first "
                      f"use, so it needs internet. Or use {DOWNLOAD_ADVICE}; "
                      f"offline, --config.data.source=local with --config.data.data_dir set to a "
                      f"local CIFAR archive or folder.") from e
    # Without TensorFlow, TFDS can still read an array_record copy prepared beforehand.
    try:
      for split in ("train", "test"):
        records = tfds.data_source(name, split=split, download=False)
        items = [records[i] for i in range(len(records))]
        arrays[split] = (np.stack([np.asarray(r["image"]) for r in items]) if items
                         else np.zeros((0,) + CIFAR_SHAPE, np.uint8),
                         np.asarray([int(np.asarray(r["label"])) for r in items], np.int64))
    except Exception as e2:  # noqa: BLE001
      raise DataError(
          f"tensorflow-datasets cannot prepare {name}: the module {missing!r} is missing ({e}), "
          f"and its data folder {tfds_dir} ($TFDS_DATA_DIR) holds no prepared copy it could read "
          f"without it ({type(e2).__name__}: {e2}). Install what TFDS needs: "
          f"{_tfds_install_advice(missing)}; or use --config.data.source=download, which needs no "
          f"TensorFlow.") from e
  out = []
  for split in ("train", "test"):
    images, labels = arrays[split]
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != CIFAR_SHAPE:
      raise DataError(f"tensorflow-datasets gave {name} {split} images of shape {images.shape} and "
                      f"dtype {images.dtype}, not uint8 {CIFAR_SHAPE}; check TFDS's data folder "
                      f"{tfds_dir} ($TFDS_DATA_DIR).")
    out += [np.ascontiguousarray(images), np.asarray(labels).astype(np.int32)]
  return (*out, CANONICAL_CLASSES[name])
