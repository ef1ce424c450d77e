"""Data: CIFAR-10, CIFAR-100 and scikit-learn's digits as uint8 arrays; augmentation on device.

:func:`load_dataset` reads a data set into host memory as a :class:`Dataset` (uint8 NHWC images,
int32 labels, an optional validation split); every bad input raises :class:`DataError`, whose
message says what is wrong and how to fix it. :func:`augment` / :func:`to_float` turn uint8 batches
into float32 inside the jitted step, and :func:`epoch_batches` gives each epoch's batch order.

What is where:

* :mod:`saat_jax.data.core`: :class:`Dataset`, :class:`DataError`, the data set and class names.
* :mod:`saat_jax.data.dataset`: :func:`load_dataset`, which picks the source (a ``data_dir`` if
  given, else the official archive), logs where the data comes from, and holds out ``val_size``
  training examples (seeded, as Rice et al. 2020).
* :mod:`saat_jax.data.archives`: local sources, a folder or a tar archive holding
  ``cifar-10-batches-py``, ``cifar-10-batches-bin``, ``cifar-100-python`` or an image-folder tree
  (PNG/JPEG); a relative ``data_dir`` is relative to the working directory.
* :mod:`saat_jax.data.cache`: decoded local sources cached as ``.npz`` in ``cache_dir``
  (default ``$SAAT_JAX_CACHE`` or ``~/.cache/saat_jax``).
* :mod:`saat_jax.data.download`: the default CIFAR source (and ``source='download'``): the official
  CIFAR python archives fetched once into ``<cache_dir>/downloads`` and checksum-verified (no
  TensorFlow needed: a fresh clone, Colab, TPU).
* :mod:`saat_jax.data.sources`: scikit-learn's digits (fixed 1,397 / 400 split) and
  tensorflow-datasets (``source='tfds'``, in TFDS's own ``$TFDS_DATA_DIR``).
* :mod:`saat_jax.data.augmentation`: :func:`to_float`, :func:`augment` (random crop after padding,
  horizontal flip), :func:`epoch_batches`.
"""

from saat_jax import log as _log  # noqa: F401 - the saat_jax logger's handler prints the data's notes
from saat_jax.data.augmentation import PAD_MODES, augment, epoch_batches, to_float
from saat_jax.data.cache import default_cache_dir
from saat_jax.data.core import (CANONICAL_CLASSES, CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_SHAPE,
                                DATA_FORMATS, KNOWN_DATASETS, SOURCES, DataError, Dataset)
from saat_jax.data.dataset import load_dataset
from saat_jax.data.download import ARCHIVES, download_archive

__all__ = [
    "ARCHIVES", "CANONICAL_CLASSES", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFAR_SHAPE", "DATA_FORMATS",
    "KNOWN_DATASETS", "PAD_MODES", "SOURCES", "DataError", "Dataset", "augment", "default_cache_dir",
    "download_archive", "epoch_batches", "load_dataset", "to_float",
]
