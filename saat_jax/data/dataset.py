"""The entry point :func:`load_dataset`: picks the source, checks the labels, holds out ``val_size``.

CIFAR comes from ``data_dir`` when one is given, else from the official archive, downloaded once
into the data cache (``source='auto'``, like torchvision's ``download=True`` and TFDS); the log
says which (``data: cifar10 (...) from ...``).

``val_size > 0`` holds out that many training examples, chosen by a permutation drawn from
``seed``, as the validation set used to pick the ``best`` checkpoint, following Rice et al. (2020),
"Overfitting in adversarially robust deep learning" (robust_overfitting's generate_validation.py
holds out 1,000 randomly permuted training images).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from saat_jax.data.archives import resolve_path
from saat_jax.data.cache import load_local_cached
from saat_jax.data.core import (KNOWN_DATASETS, OTHER_SOURCES_ADVICE, SOURCES, CorruptArchiveError, DataError,
                                Dataset)
from saat_jax.data.download import ARCHIVES, download_archive
from saat_jax.data.sources import load_digits_data, load_tfds, tfds_data_dir

logger = logging.getLogger(__name__)


def load_dataset(name: str, data_dir: Optional[str] = None, *, val_size: int = 0, seed: int = 0,
                 cache_dir: Optional[str] = None, source: str = "auto",
                 download_url: Optional[str] = None, download_md5: Optional[str] = None) -> Dataset:
  """Loads ``name`` ('cifar10', 'cifar100' or 'digits') as uint8 arrays; see :mod:`saat_jax.data`.

  Args:
    name: the data set, case-insensitive.
    data_dir: for CIFAR with source 'auto'/'local', a folder or a tar archive holding one of the
      supported layouts; a relative path is relative to the working directory. Ignored for
      'digits' and by the 'download' and 'tfds' sources (TFDS keeps its data in
      ``$TFDS_DATA_DIR``, by default ``~/tensorflow_datasets``).
    val_size: number of training examples held out as the validation set (0: none).
    seed: chooses which training examples are held out.
    cache_dir: the data cache (decoded arrays, downloaded archives); default ``$SAAT_JAX_CACHE``
      or ``~/.cache/saat_jax``.
    source: 'auto': ``data_dir`` if given (a mistyped path is an error, not a 170 MB download),
      else as 'download'. 'local': ``data_dir``, which must be given. 'download': the official
      CIFAR python archive, fetched once into ``<cache_dir>/downloads`` and checksum-verified
      (:mod:`saat_jax.data.download`); needs internet the first time, not TensorFlow. 'tfds':
      tensorflow-datasets (needs TensorFlow to prepare CIFAR).
    download_url: when downloading, fetch the archive from this URL (a mirror, a local server or a
      ``file://`` copy) instead of the official address.
    download_md5: when downloading, the archive's expected MD5; None for the official archive's.

  Raises:
    DataError: for an unknown name or source, a missing or unreadable path, an archive of another
      layout, an undecodable image, or an impossible ``val_size``.
  """
  key = str(name).strip().lower()
  if key not in KNOWN_DATASETS:
    raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(KNOWN_DATASETS)}. "
                    f"Set data.name to one of them.")
  src = str(source).strip().lower()
  if src not in SOURCES:
    raise DataError(f"unknown data source {source!r}; set --config.data.source to one of "
                    f"{', '.join(SOURCES)} ('auto' reads data.data_dir if set, else downloads like "
                    f"'download', which fetches the official CIFAR archive; 'local' reads "
                    f"data.data_dir; 'tfds' loads through tensorflow-datasets).")
  _check_val_size(val_size)
  has_dir = data_dir is not None and str(data_dir).strip() != ""

  if key == "digits":
    train_x, train_y, test_x, test_y, class_names = load_digits_data()
    data_format = "digits"
  elif src == "tfds":
    train_x, train_y, test_x, test_y, class_names = load_tfds(key)
    data_format = "tfds"
    import tensorflow_datasets as tfds  # load_tfds imported it
    logger.info("data: %s from tensorflow-datasets, in %s", key, tfds_data_dir(tfds))
  elif src == "download" or (src == "auto" and not has_dir):
    archive = download_archive(key, url=download_url, md5=download_md5, cache_dir=cache_dir)
    try:
      train_x, train_y, test_x, test_y, class_names, data_format = load_local_cached(key, archive, cache_dir)
    except CorruptArchiveError as e:  # verified when it arrived: damaged on disk since
      raise CorruptArchiveError(f"{e} It is the cached download: delete {archive} and run again to "
                                f"download it again.") from e
    why = " (no data.data_dir given)" if src == "auto" else ""
    logger.info("data: %s (%s) from %s, kept in %s%s", key, data_format, download_url or ARCHIVES[key].url,
                archive, why)
  else:
    if not has_dir:
      raise DataError(
          f"no data.data_dir given for {key} with --config.data.source=local: set --config.data.data_dir "
          f"to a CIFAR archive or folder (the python, binary or image-folder layouts, or a .tar.gz "
          f"of one), or {OTHER_SOURCES_ADVICE}")
    path = resolve_path(data_dir)
    train_x, train_y, test_x, test_y, class_names, data_format = load_local_cached(key, path, cache_dir)
    logger.info("data: %s (%s) from %s", key, data_format, path)

  num_classes = len(class_names)
  for split, labels in (("train", train_y), ("test", test_y)):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise DataError(f"{key} {split} labels lie in [{labels.min()}, {labels.max()}], outside "
                      f"[0, {num_classes}); the data is not {key}: check data_dir.")
  val_x, val_y = train_x[:0], train_y[:0]
  if val_size:
    if val_size >= len(train_y):
      raise DataError(f"val_size={val_size} holds out all {len(train_y)} training examples of "
                      f"{key}; choose val_size < {len(train_y)} (Rice et al. hold out 1000 of "
                      f"CIFAR's 50000).")
    perm = np.random.default_rng(seed).permutation(len(train_y))
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    val_x, val_y = train_x[val_idx], train_y[val_idx]
    train_x, train_y = train_x[train_idx], train_y[train_idx]
  return Dataset(name=key, train_images=train_x, train_labels=train_y, val_images=val_x,
                 val_labels=val_y, test_images=test_x, test_labels=test_y,
                 num_classes=num_classes, class_names=tuple(class_names), data_format=data_format)


def _check_val_size(val_size) -> None:
  if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or val_size < 0:
    raise DataError(f"val_size must be an integer >= 0, got {val_size!r}; use 0 for no "
                    f"validation set or e.g. 1000 as Rice et al.")
