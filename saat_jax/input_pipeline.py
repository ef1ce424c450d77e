"""Data: CIFAR-10, CIFAR-100 and scikit-learn's digits as uint8 arrays; augmentation on device.

Sources read by :func:`load_dataset`:

* TFDS (``source='tfds'``): ``tfds.load(name, batch_size=-1, as_supervised=True)``, the online
  path (Colab), which needs TensorFlow to prepare CIFAR. Without TensorFlow a TF-free
  ``tfds.data_source`` copy (array_record) is used when one was prepared beforehand.
* The standard archives of https://www.cs.toronto.edu/~kriz/cifar.html, unpacked or as the
  downloaded ``.tar.gz``: ``cifar-10-batches-py`` (pickled batches), ``cifar-10-batches-bin``
  (3073-byte records: label, then the R, G and B planes) and ``cifar-100-python`` (fine labels).
* An image-folder tree ``root/{train,test}/<class>/*.{png,jpg,jpeg}``, unpacked or as a tar
  archive (with or without one top-level folder). This is how the offline copy
  ``../shared/data/cifar10-jpeg.tar.gz`` (relative to the project root) is read. Class indices are
  CIFAR-10's / CIFAR-100's canonical order when the folder names are those classes, else the
  sorted folder names. Folders group the files by class, so the examples of a tree are put in a
  fixed pseudo-random order (independent of ``seed``, like the order of the original batches) so
  that a prefix of the arrays is a class-mixed sample.
* ``digits``: scikit-learn's 1,797 real 8x8 grey-scale digits (values 0..16 scaled to 0..255), with
  a fixed class-stratified split of 1,397 train / 400 test, for minute-long CPU runs.

A folder that holds exactly one of these layouts somewhere below it is accepted too. Archives are
decoded once and the arrays cached (``.npz``, written atomically) in ``cache_dir``, by default
``$SAAT_JAX_CACHE`` or ``~/.cache/saat_jax``; the cache is keyed by the data set, the absolute path
and the size and modification time of what was read, so a changed archive is decoded again. Images
stay uint8 (NHWC) in host memory; labels are int32.

``val_size > 0`` holds out that many training examples, chosen by a permutation drawn from
``seed``, as the validation set used to pick the ``best`` checkpoint, following Rice et al. (2020),
"Overfitting in adversarially robust deep learning" (robust_overfitting's generate_validation.py
holds out 1,000 randomly permuted training images).

:func:`augment` runs inside the jitted step: a random 32x32 crop of the image padded by 4 pixels
on each side (by reflection, as Rice et al. 2020 and the released SAAT code; zeros as torchvision's
``RandomCrop(32, padding=4)`` on request), with an independent offset per example, then a
horizontal flip with probability 1/2. :func:`epoch_batches` gives each epoch's example order as a pure
function of ``(seed, epoch)``, so a resumed run sees the same batches. Every bad input raises
:class:`DataError`, whose message says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import tarfile
import tempfile
import time
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

KNOWN_DATASETS = ("cifar10", "cifar100", "digits")
SOURCES = ("auto", "local", "tfds")

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

# The offline copy of CIFAR-10 this project ships next to it, relative to the project root.
SHARED_CIFAR10 = "../shared/data/cifar10-jpeg.tar.gz"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Layouts of a local source, and the data sets each can hold.
FORMATS = {
    "cifar10-python": "cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta)",
    "cifar10-binary": "cifar-10-batches-bin (data_batch_1..5.bin, test_batch.bin, batches.meta.txt)",
    "cifar100-python": "cifar-100-python (train, test, meta)",
    "image-folder": "an image-folder tree train/<class>/*.png|jpg and test/<class>/*.png|jpg",
}
_FORMAT_DATASETS = {"cifar10-python": ("cifar10",), "cifar10-binary": ("cifar10",),
                    "cifar100-python": ("cifar100",), "image-folder": ("cifar10", "cifar100")}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_BIN_RECORD = 1 + 32 * 32 * 3

_CACHE_VERSION = 1  # bump when what a cache file holds, or the order of examples, changes
_IMAGE_FOLDER_ORDER_SEED = 0  # fixed order of image-folder examples (not the run's seed)
_DIGITS_SPLIT_SEED = 0  # fixed digits train/test split (not the run's seed)
_DIGITS_NUM_TEST = 400
_MAX_WALK_DEPTH = 6  # how deep below data_dir a folder is searched for a layout


class DataError(ValueError):
  """A data set that cannot be read as asked; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A data set in host memory: uint8 NHWC images and int32 labels."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.train_images.shape[1:])

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, train={self.train_images.shape}, val={self.val_images.shape}, "
            f"test={self.test_images.shape}, num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------------
# Public entry point.


def load_dataset(name: str, data_dir: Optional[str] = None, *, val_size: int = 0, seed: int = 0,
                 cache_dir: Optional[str] = None, source: str = "auto") -> Dataset:
  """Loads ``name`` ('cifar10', 'cifar100' or 'digits') as uint8 arrays; see the module docstring.

  Args:
    name: the data set, case-insensitive.
    data_dir: for CIFAR, a folder or a tar archive holding one of the supported layouts (or, with
      ``source='tfds'``, TFDS's data directory; None for its default). Ignored for 'digits'.
      A relative path that does not exist from the working directory is also tried from the
      project root, so the default ``../shared/data/cifar10-jpeg.tar.gz`` works from anywhere.
    val_size: number of training examples held out as the validation set (0: none).
    seed: chooses which training examples are held out.
    cache_dir: where decoded arrays are cached; default ``$SAAT_JAX_CACHE`` or ``~/.cache/saat_jax``.
    source: 'auto' / 'local' (read ``data_dir``) or 'tfds'.

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
    raise DataError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)} "
                    f"('auto' reads data_dir, 'tfds' loads through tensorflow-datasets).")
  _check_val_size(val_size)

  if key == "digits":
    train_x, train_y, test_x, test_y, class_names = _load_digits()
  elif src == "tfds":
    train_x, train_y, test_x, test_y, class_names = _load_tfds(key, data_dir)
  else:
    if data_dir is None or str(data_dir).strip() == "":
      raise DataError(
          f"no data_dir given for {key}: pass data_dir= a CIFAR archive or folder (offline, "
          f"CIFAR-10 as JPEG: {SHARED_CIFAR10} relative to the project root; or the archives of "
          f"https://www.cs.toronto.edu/~kriz/cifar.html), or source='tfds' to load it through "
          f"tensorflow-datasets (needs TensorFlow and internet).")
    train_x, train_y, test_x, test_y, class_names = _load_local_cached(
        key, _resolve_path(data_dir), cache_dir)

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
                 num_classes=num_classes, class_names=tuple(class_names))


def _check_val_size(val_size) -> None:
  if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or val_size < 0:
    raise DataError(f"val_size must be an integer >= 0, got {val_size!r}; use 0 for no "
                    f"validation set or e.g. 1000 as Rice et al.")


# --------------------------------------------------------------------------------------------------
# On-device augmentation and batching.


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


# --------------------------------------------------------------------------------------------------
# digits and TFDS.


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


# --------------------------------------------------------------------------------------------------
# Local sources: path resolution, folders and tar archives.


def _resolve_path(data_dir) -> Path:
  given = str(data_dir)
  path = Path(os.path.expandvars(os.path.expanduser(given)))
  candidates = [path] if path.is_absolute() else [Path.cwd() / path, _PROJECT_ROOT / path]
  for p in candidates:
    if p.exists():
      return Path(os.path.abspath(p))
  tried = " or ".join(str(p) for p in candidates)
  raise DataError(
      f"data_dir {given!r} does not exist (looked for {tried}). Point data_dir at a CIFAR archive or "
      f"folder: the offline CIFAR-10 copy is {SHARED_CIFAR10} (relative to the project root); the "
      f"original archives (cifar-10-python.tar.gz, cifar-10-binary.tar.gz, cifar-100-python.tar.gz) "
      f"are at https://www.cs.toronto.edu/~kriz/cifar.html; or use source='tfds'.")


def _normalize_member(name: str) -> Optional[str]:
  """A tar member or folder entry as a clean relative POSIX path, or None to skip it."""
  parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
  if not parts or ".." in parts or parts[0] == "__MACOSX":
    return None
  if any(p.startswith(".") for p in parts):  # hidden files, macOS '._x' resource forks
    return None
  return "/".join(parts)


class _Tree:
  """The regular files of a folder or of a tar archive, by relative POSIX path."""

  def __init__(self, path: Path):
    self.path = path
    self.is_archive = path.is_file()
    self._tar = None
    self._members = {}
    if self.is_archive:
      self.names = self._open_archive()
    else:
      self.names = self._walk_folder()

  def _open_archive(self) -> list[str]:
    path = self.path
    try:
      self._tar = tarfile.open(path, "r:*")
      members = self._tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
      self.close()
      if zipfile.is_zipfile(path):
        raise DataError(f"{path} is a zip archive; the data must be a tar archive (.tar.gz, .tgz, "
                        f".tar) or a folder holding {self._expected()}. Unzip it and pass the "
                        f"folder.") from e
      with open(path, "rb") as f:
        head = f.read(6)
      if head[:2] == b"\x1f\x8b":
        what = "a gzip file that is truncated or corrupt, or not a tar archive inside"
      elif head[:3] == b"BZh" or head == b"\xfd7zXZ\x00":
        what = "a compressed file that is truncated or corrupt, or not a tar archive inside"
      else:
        what = f"not a tar archive (it starts with bytes {head!r})"
      raise DataError(f"cannot read {path}: it is {what} ({type(e).__name__}: {e}). Expected a "
                      f"complete .tar.gz/.tgz/.tar holding {self._expected()}; download it again or "
                      f"pass the unpacked folder.") from e
    names = []
    for m in members:
      rel = _normalize_member(m.name) if m.isfile() else None
      if rel is not None and rel not in self._members:
        self._members[rel] = m
        names.append(rel)
    return names

  def _walk_folder(self) -> list[str]:
    root = str(self.path)
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      rel_dir = os.path.relpath(dirpath, root)
      depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
      if depth >= _MAX_WALK_DEPTH:
        dirnames[:] = []
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      for f in filenames:
        rel = _normalize_member(f if rel_dir == "." else os.path.join(rel_dir, f))
        if rel is not None:
          names.append(rel)
    return sorted(names)

  @staticmethod
  def _expected() -> str:
    return "; or ".join(FORMATS.values())

  def where(self, rel: str) -> str:
    """Human-readable location of a file: inside the archive, or its full path."""
    return f"{rel!r} in {self.path}" if self.is_archive else str(self.path / rel)

  def stat_signature(self, names: Iterable[str]) -> list:
    if self.is_archive:
      st = self.path.stat()
      return [st.st_size, st.st_mtime_ns]
    sig = []
    for rel in sorted(names):
      st = (self.path / rel).stat()
      sig.append([rel, st.st_size, st.st_mtime_ns])
    return sig

  def read_many(self, names: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Yields ``(name, bytes)`` for ``names``, in the order the storage holds them."""
    if not self.is_archive:
      for rel in names:
        try:
          yield rel, (self.path / rel).read_bytes()
        except OSError as e:
          raise DataError(f"cannot read {self.where(rel)}: {e}; check its permissions.") from e
      return
    for rel in sorted(names, key=lambda r: self._members[r].offset_data):
      try:
        data = self._tar.extractfile(self._members[rel]).read()
      except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise DataError(f"cannot read {self.where(rel)}: the archive is truncated or corrupt "
                        f"({type(e).__name__}: {e}); download it again.") from e
      yield rel, data

  def read(self, name: str) -> bytes:
    return next(iter(self.read_many([name])))[1]

  def close(self) -> None:
    if self._tar is not None:
      self._tar.close()
      self._tar = None


def _join(root: str, name: str) -> str:
  return f"{root}/{name}" if root else name


def _detect_layouts(names: Sequence[str]) -> list[tuple[str, str]]:
  """All ``(format, root)`` layouts found among the relative paths ``names``."""
  files = set(names)
  found = set()
  splits_of_root = {}
  for rel in names:
    p = PurePosixPath(rel)
    parent = "" if str(p.parent) == "." else str(p.parent)
    if p.name == "data_batch_1" and _join(parent, "test_batch") in files:
      found.add(("cifar10-python", parent))
    elif p.name == "data_batch_1.bin" and _join(parent, "test_batch.bin") in files:
      found.add(("cifar10-binary", parent))
    elif p.name == "train" and {_join(parent, "test"), _join(parent, "meta")} <= files:
      found.add(("cifar100-python", parent))
    parts = p.parts
    if len(parts) >= 3 and parts[-3] in ("train", "test") and p.suffix.lower() in _IMAGE_SUFFIXES:
      splits_of_root.setdefault("/".join(parts[:-3]), set()).add(parts[-3])
  for root, splits in splits_of_root.items():
    if splits == {"train", "test"}:
      found.add(("image-folder", root))
  return sorted(found, key=lambda fr: (fr[1].count("/"), fr[1], fr[0]))


def _choose_layout(name: str, tree: _Tree) -> tuple[str, str]:
  layouts = _detect_layouts(tree.names)
  if not layouts:
    sample = ", ".join(tree.names[:5]) or "no files"
    raise DataError(
        f"{tree.path} holds no {name} data in a known layout (found {len(tree.names)} files: "
        f"{sample}{', ...' if len(tree.names) > 5 else ''}). Expected {_Tree._expected()}. Point "
        f"data_dir at such an archive or folder (offline CIFAR-10: {SHARED_CIFAR10}).")
  usable = [(f, r) for f, r in layouts if name in _FORMAT_DATASETS[f]]
  desc = "; ".join(f"{f} at {r or '.'!r}" for f, r in layouts)
  if not usable:
    others = sorted({d for f, _ in layouts for d in _FORMAT_DATASETS[f]})
    raise DataError(f"{tree.path} holds {desc}, which is not {name} data; set the data set name to "
                    f"{' or '.join(others)}, or point data_dir at {name} data.")
  if len(usable) > 1:
    raise DataError(f"{tree.path} holds several {name} data sets ({desc}); point data_dir at one "
                    f"of them.")
  return usable[0]


# --------------------------------------------------------------------------------------------------
# Readers of the four layouts. Each returns train_x, train_y, test_x, test_y, class_names.


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles CIFAR batches only: dicts, lists, bytes and numpy arrays, nothing executable."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
      ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
      ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
      ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
      ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
      ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
      ("numpy", "ndarray"): ("numpy",),
      ("numpy", "dtype"): ("numpy",),
      ("_codecs", "encode"): ("_codecs",),
  }

  def find_class(self, module, name):
    modules = self._ALLOWED.get((module, name))
    if modules is None:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
    for m in modules:
      try:
        return getattr(importlib.import_module(m), name)
      except (ImportError, AttributeError):
        continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


def _unpickle(tree: _Tree, rel: str, data: bytes) -> dict:
  try:
    obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # noqa: BLE001 -- any failure means "not a CIFAR batch"
    raise DataError(f"{tree.where(rel)} is not a readable CIFAR python batch ({type(e).__name__}: "
                    f"{e}); the archive is damaged or of another kind: download it again.") from e
  if not isinstance(obj, dict):
    raise DataError(f"{tree.where(rel)} holds a {type(obj).__name__}, not a CIFAR batch dict; "
                    f"download the archive again.")
  return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_arrays(tree: _Tree, rel: str, batch: dict, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  if "data" not in batch or label_key not in batch:
    raise DataError(f"{tree.where(rel)} lacks the '{'data' if 'data' not in batch else label_key}' "
                    f"entry of a CIFAR batch (keys: {sorted(batch)}); download the archive again.")
  data = np.asarray(batch["data"])
  labels = np.asarray(batch[label_key])
  if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
    raise DataError(f"{tree.where(rel)} holds data of shape {data.shape} with {labels.size} labels; "
                    f"a CIFAR batch has (N, 3072) uint8 pixels and N labels. Download it again.")
  if data.dtype != np.uint8:
    if data.size and (data.min() < 0 or data.max() > 255):
      raise DataError(f"{tree.where(rel)} holds pixel values outside 0..255; not CIFAR data.")
    data = data.astype(np.uint8)
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _label_names(tree: _Tree, rel: str, key: str, canonical: tuple[str, ...]) -> tuple[str, ...]:
  if rel not in set(tree.names):
    return canonical
  meta = _unpickle(tree, rel, tree.read(rel))
  names = meta.get(key)
  if not isinstance(names, (list, tuple)) or len(names) != len(canonical):
    return canonical
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _require(tree: _Tree, fmt: str, names: Sequence[str]) -> None:
  present = set(tree.names)
  missing = [n for n in names if n not in present]
  if missing:
    raise DataError(f"{tree.path} holds {FORMATS[fmt]} but lacks {', '.join(missing)}; the copy is "
                    f"incomplete: download or unpack it again.")


def _read_python_batches(tree: _Tree, fmt: str, root: str, train_files: Sequence[str], test_file: str,
                         label_key: str):
  train_rel = [_join(root, f) for f in train_files]
  test_rel = _join(root, test_file)
  _require(tree, fmt, train_rel + [test_rel])
  arrays = {}
  for rel, data in tree.read_many(train_rel + [test_rel]):
    arrays[rel] = _batch_arrays(tree, rel, _unpickle(tree, rel, data), label_key)
  train_x = np.concatenate([arrays[r][0] for r in train_rel])
  train_y = np.concatenate([arrays[r][1] for r in train_rel])
  return train_x, train_y, arrays[test_rel][0], arrays[test_rel][1]


def _read_cifar10_python(tree: _Tree, root: str, name: str):
  arrays = _read_python_batches(tree, "cifar10-python", root,
                                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels")
  return (*arrays, _label_names(tree, _join(root, "batches.meta"), "label_names", CIFAR10_CLASSES))


def _read_cifar100_python(tree: _Tree, root: str, name: str):
  arrays = _read_python_batches(tree, "cifar100-python", root, ["train"], "test", "fine_labels")
  return (*arrays, _label_names(tree, _join(root, "meta"), "fine_label_names", CIFAR100_CLASSES))


def _read_cifar10_binary(tree: _Tree, root: str, name: str):
  train_rel = [_join(root, f"data_batch_{i}.bin") for i in range(1, 6)]
  test_rel = _join(root, "test_batch.bin")
  _require(tree, "cifar10-binary", train_rel + [test_rel])
  arrays = {}
  for rel, data in tree.read_many(train_rel + [test_rel]):
    if len(data) % _BIN_RECORD:
      raise DataError(f"{tree.where(rel)} has {len(data)} bytes, not a whole number of "
                      f"{_BIN_RECORD}-byte CIFAR-10 records; the file is truncated: download again.")
    records = np.frombuffer(data, np.uint8).reshape(-1, _BIN_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    arrays[rel] = (np.ascontiguousarray(images), records[:, 0].astype(np.int32))
  class_names = CIFAR10_CLASSES
  meta_rel = _join(root, "batches.meta.txt")
  if meta_rel in set(tree.names):
    text = tree.read(meta_rel).decode("utf-8", "replace")
    listed = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(listed) == len(CIFAR10_CLASSES):
      class_names = listed
  train_x = np.concatenate([arrays[r][0] for r in train_rel])
  train_y = np.concatenate([arrays[r][1] for r in train_rel])
  return train_x, train_y, arrays[test_rel][0], arrays[test_rel][1], class_names


def _decode_image(tree: _Tree, rel: str, data: bytes) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      size, mode = im.size, im.mode
      if mode != "RGB":
        im = im.convert("RGB")
      arr = np.asarray(im, dtype=np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
    raise DataError(f"cannot decode image {tree.where(rel)} ({type(e).__name__}: {e}); the file is "
                    f"corrupt or not an image: replace or delete it, or download the archive "
                    f"again.") from e
  if arr.shape != CIFAR_SHAPE:
    raise DataError(f"image {tree.where(rel)} is {size[0]}x{size[1]} {mode}; CIFAR images are "
                    f"32x32 RGB: resize or remove it.")
  return arr


def _read_image_folder(tree: _Tree, root: str, name: str):
  prefix = f"{root}/" if root else ""
  by_split = {"train": [], "test": []}
  for rel in tree.names:
    if not rel.startswith(prefix):
      continue
    parts = rel[len(prefix):].split("/")
    if len(parts) == 3 and parts[0] in by_split and PurePosixPath(rel).suffix.lower() in _IMAGE_SUFFIXES:
      by_split[parts[0]].append((parts[1], rel))
  train_classes = sorted({c for c, _ in by_split["train"]})
  test_classes = sorted({c for c, _ in by_split["test"]})
  where = f"{tree.path}" + (f" (under {root!r})" if root else "")
  canonical = CANONICAL_CLASSES[name]
  if len(train_classes) != len(canonical):
    raise DataError(
        f"{name} has {len(canonical)} classes but the image folder {where} has {len(train_classes)} "
        f"class folders under train/ ({', '.join(train_classes[:12])}"
        f"{', ...' if len(train_classes) > 12 else ''}); set the data set name to match the data "
        f"(cifar10: 10 classes, cifar100: 100) or point data_dir at {name} data.")
  unknown = sorted(set(test_classes) - set(train_classes))
  if unknown:
    raise DataError(f"the image folder {where} has test/ classes without train/ images: "
                    f"{', '.join(unknown)}; train/ and test/ must hold the same class folders.")
  if set(train_classes) == set(canonical):
    class_names = canonical
  else:
    class_names = tuple(train_classes)
    logger.warning("image folder %s: class folders are not %s's names; using their sorted order",
                   where, name)
  index = {c: i for i, c in enumerate(class_names)}

  out = []
  for split in ("train", "test"):
    entries = sorted(by_split[split], key=lambda e: e[1])
    position = {rel: i for i, (_, rel) in enumerate(entries)}
    images = np.empty((len(entries),) + CIFAR_SHAPE, np.uint8)
    labels = np.asarray([index[c] for c, _ in entries], np.int32)
    for rel, data in tree.read_many([rel for _, rel in entries]):
      images[position[rel]] = _decode_image(tree, rel, data)
    order = np.random.default_rng(_IMAGE_FOLDER_ORDER_SEED).permutation(len(entries))
    out += [images[order], labels[order]]
  return (*out, class_names)


_READERS = {"cifar10-python": _read_cifar10_python, "cifar10-binary": _read_cifar10_binary,
            "cifar100-python": _read_cifar100_python, "image-folder": _read_image_folder}


def _decode_local(name: str, tree: _Tree, fmt: str, root: str):
  """Decodes a local source; the slow step that the cache saves."""
  train_x, train_y, test_x, test_y, class_names = _READERS[fmt](tree, root, name)
  canonical = CANONICAL_CLASSES[name]
  if len(class_names) != len(canonical):
    raise DataError(f"{tree.where(root or '.')} lists {len(class_names)} classes; {name} has "
                    f"{len(canonical)}. Point data_dir at {name} data.")
  return train_x, train_y, test_x, test_y, tuple(class_names)


# --------------------------------------------------------------------------------------------------
# The cache of decoded arrays.


def default_cache_dir() -> Path:
  return Path(os.path.expanduser(os.environ.get("SAAT_JAX_CACHE") or "~/.cache/saat_jax"))


def _cache_file(cache_dir: Optional[str], name: str, kind: str, path: Path, signature) -> Path:
  key = json.dumps({"v": _CACHE_VERSION, "name": name, "kind": kind, "path": str(path),
                    "sig": signature}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  directory = Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir()
  return directory / f"{name}-{kind}-{digest}.npz"


_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names", "format")


def _read_cache(file: Path, name: str):
  if not file.exists():
    return None
  try:
    with np.load(file, allow_pickle=False) as z:
      arrays = {k: z[k] for k in _CACHE_KEYS}
    tx, ty, sx, sy = (arrays[k] for k in _CACHE_KEYS[:4])
    ok = (tx.dtype == np.uint8 and sx.dtype == np.uint8 and tx.ndim == 4 and sx.ndim == 4
          and ty.dtype == np.int32 and sy.dtype == np.int32 and ty.shape == (len(tx),)
          and sy.shape == (len(sx),) and len(arrays["class_names"]) == len(CANONICAL_CLASSES[name]))
    if not ok:
      raise ValueError("unexpected arrays")
  except Exception as e:  # noqa: BLE001 -- a damaged cache is rebuilt, never trusted
    logger.warning("ignoring the unreadable cache file %s (%s: %s); decoding again",
                   file, type(e).__name__, e)
    return None
  return tx, ty, sx, sy, tuple(str(c) for c in arrays["class_names"])


def _write_cache(file: Path, arrays, fmt: str) -> None:
  train_x, train_y, test_x, test_y, class_names = arrays
  tmp = None
  try:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    with os.fdopen(fd, "wb") as f:
      np.savez(f, train_images=train_x, train_labels=train_y, test_images=test_x,
               test_labels=test_y, class_names=np.asarray(class_names, dtype=str),
               format=np.asarray(fmt))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, file)  # atomic: readers see the old file or the complete new one
    tmp = None
  except OSError as e:
    warnings.warn(f"could not write the data cache {file} ({e}); the data will be decoded again "
                  f"next time. Set cache_dir or $SAAT_JAX_CACHE to a writable folder.", stacklevel=3)
  finally:
    if tmp is not None:
      try:
        os.unlink(tmp)
      except OSError:
        pass


def _load_local_cached(name: str, path: Path, cache_dir: Optional[str]):
  if path.is_file():
    # An archive is keyed by its own size and mtime, so a cache hit never opens it.
    st = path.stat()
    file = _cache_file(cache_dir, name, "archive", path, [st.st_size, st.st_mtime_ns])
    cached = _read_cache(file, name)
    if cached is not None:
      return cached
    tree = _Tree(path)
    try:
      fmt, root = _choose_layout(name, tree)
      t0 = time.time()
      arrays = _decode_local(name, tree, fmt, root)
    finally:
      tree.close()
  elif path.is_dir():
    tree = _Tree(path)
    fmt, root = _choose_layout(name, tree)
    prefix = f"{root}/" if root else ""
    used = [n for n in tree.names if n.startswith(prefix)]
    file = _cache_file(cache_dir, name, fmt, path / root, tree.stat_signature(used))
    cached = _read_cache(file, name)
    if cached is not None:
      return cached
    t0 = time.time()
    arrays = _decode_local(name, tree, fmt, root)
  else:
    raise DataError(f"data_dir {path} is neither a file nor a folder; pass a CIFAR archive or folder.")
  logger.info("decoded %s (%s) from %s in %.1fs; caching the arrays in %s",
              name, fmt, path, time.time() - t0, file)
  _write_cache(file, arrays, fmt)
  return arrays
