"""What every part of :mod:`saat_jax.data` shares: :class:`Dataset`, :class:`DataError`, the names.

A leaf module (numpy only), so that the readers, the cache and :func:`~saat_jax.data.load_dataset`
can all import it without importing each other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KNOWN_DATASETS = ("cifar10", "cifar100", "digits")
SOURCES = ("auto", "local", "download", "tfds")
# What a Dataset was read from (Dataset.data_format, recorded in every epoch of metrics.jsonl): the
# layouts of a local source or download, an image folder of PNG files only, or with any JPEG file
# (lossy: not the official pixels), TFDS, scikit-learn's digits.
DATA_FORMATS = ("cifar10-python", "cifar10-binary", "cifar100-python", "image-folder-png",
                "image-folder-jpeg", "tfds", "digits")
LOSSY_FORMATS = ("image-folder-jpeg",)
_OFFICIAL_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

# The ends of the errors of a missing local copy: the sources that need none, in flag wording.
DOWNLOAD_ADVICE = (
    "--config.data.source=download (the default without a data.data_dir) to fetch the official archive (from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, checksum-verified) once into the data cache "
    "(needs internet, not TensorFlow)")
OTHER_SOURCES_ADVICE = (
    f"{DOWNLOAD_ADVICE}, or --config.data.source=tfds to load it through tensorflow-datasets "
    f"(needs `pip install tensorflow tensorflow-datasets`; TFDS keeps its data in $TFDS_DATA_DIR, "
    f"by default ~/tensorflow_datasets).")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)

CANONICAL_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
CIFAR_SHAPE = (32, 32, 3)


class DataError(ValueError):
  """A data set that cannot be read as asked; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A data set in host memory: uint8 NHWC images and int32 labels.

  ``data_format`` says what it was read from (one of :data:`DATA_FORMATS`; 'unknown' for a
  Dataset built by hand), so that a run on a lossy copy says so (:attr:`data_note`).
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  data_format: str = "unknown"

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.train_images.shape[1:])

  @property
  def data_note(self) -> str:
    """For a lossy copy, what it is (e.g. "JPEG re-encoded, not the official CIFAR-10"); else ''."""
    if self.data_format not in LOSSY_FORMATS:
      return ""
    return f"JPEG re-encoded, not the official {_OFFICIAL_NAMES.get(self.name, self.name)}"

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, train={self.train_images.shape}, val={self.val_images.shape}, "
            f"test={self.test_images.shape}, num_classes={self.num_classes}, "
            f"data_format={self.data_format!r})")
