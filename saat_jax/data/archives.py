"""Local sources (a ``data_dir``): folders and tar archives, the layouts they hold, the readers.

Layouts read (each in a folder or a tar archive, also somewhere below the folder given):

* The standard archives of https://www.cs.toronto.edu/~kriz/cifar.html, unpacked or as the
  downloaded ``.tar.gz``: ``cifar-10-batches-py`` (pickled batches), ``cifar-10-batches-bin``
  (3073-byte records: label, then the R, G and B planes) and ``cifar-100-python`` (fine labels).
* An image-folder tree ``root/{train,test}/<class>/*.{png,jpg,jpeg}``, unpacked or as a tar
  archive (with or without one top-level folder), e.g. a JPEG copy of CIFAR-10. Class indices are
  CIFAR-10's / CIFAR-100's canonical order when the folder names are those classes, else the
  sorted folder names. Folders group the files by class, so the examples of a tree are put in a
  fixed pseudo-random order (independent of ``seed``, like the order of the original batches) so
  that a prefix of the arrays is a class-mixed sample.

Path rule (:func:`resolve_path`): a relative ``data_dir`` is relative to the current directory.

:func:`decode_local` is the slow step that :mod:`saat_jax.data.cache` saves.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib
import io
import logging
import lzma
import os
import pickle
import re
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from saat_jax.data.core import (CANONICAL_CLASSES, CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_SHAPE,
                                OTHER_SOURCES_ADVICE, CorruptArchiveError, DataError)

logger = logging.getLogger(__name__)

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
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_BIN_RECORD = 1 + 32 * 32 * 3
# Fixed order of image-folder examples (not the run's seed); changing it means bumping
# saat_jax.data.cache._CACHE_VERSION.
_IMAGE_FOLDER_ORDER_SEED = 0
_MAX_WALK_DEPTH = 6  # how deep below data_dir a folder is searched for a layout


# --------------------------------------------------------------------------------------------------
# Local sources: path resolution, folders and tar archives.


def resolve_path(data_dir) -> Path:
  """``data_dir`` as an absolute path: as given if absolute, else from the current directory.

  Raises :class:`DataError` naming the place looked at and the other sources when it does not exist.
  """
  given = str(data_dir)
  path = Path(os.path.abspath(os.path.expandvars(os.path.expanduser(given))))
  if path.exists():
    return path
  where = "" if given == str(path) else f" (looked for {path})"
  what = "no such file or folder. Set --config.data.data_dir to a CIFAR archive or folder"
  raise DataError(f"data.data_dir {given!r}{where} does not exist: {what}, or use "
                  f"{OTHER_SOURCES_ADVICE}")


def _normalize_member(name: str) -> Optional[str]:
  """A tar member or folder entry as a clean relative POSIX path, or None to skip it."""
  parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
  if not parts or ".." in parts or parts[0] == "__MACOSX":
    return None
  if any(p.startswith(".") for p in parts):  # hidden files, macOS '._x' resource forks
    return None
  return "/".join(parts)


class _BrokenHeader(Exception):
  """A tar header after the first that is garbled or cut off, where tarfile would end the listing
  silently (and a damaged archive would look like an archive with fewer files)."""

  def __init__(self, offset: int, error: tarfile.HeaderError):
    super().__init__(str(error))
    self.offset, self.error = offset, error


class _StrictTarInfo(tarfile.TarInfo):
  """Reads tar headers as :class:`tarfile.TarInfo`, but raises :class:`_BrokenHeader` for a bad
  header after the first; only a block of zeros (tar's end-of-archive marker) ends the archive."""

  @classmethod
  def fromtarfile(cls, tf):
    offset = tf.fileobj.tell()
    try:
      return super().fromtarfile(tf)
    except tarfile.EOFHeaderError:
      raise
    except tarfile.HeaderError as e:
      if offset == 0:
        raise  # not a tar archive at all: tarfile's own error
      raise _BrokenHeader(offset, e) from None


# What reading an archive raises when its bytes are damaged (gzip, bzip2, xz or tar level).
_ARCHIVE_ERRORS = (_BrokenHeader, tarfile.TarError, EOFError, OSError, ValueError, zlib.error,
                   lzma.LZMAError)
_COMPRESSED_FILES = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)
_MAGIC = ((b"\x1f\x8b", "gz", "gzip"), (b"BZh", "bz2", "bzip2"), (b"\xfd7zXZ\x00", "xz", "xz"))


def _damage(e: BaseException) -> str:
  """What an error of :data:`_ARCHIVE_ERRORS` says about the archive, in words."""
  text = f"{type(e).__name__}: {e}"
  if isinstance(e, _BrokenHeader):
    if isinstance(e.error, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
      return "its tar data ends without tar's end-of-archive marker: the file is cut off"
    return f"a tar header is garbled ({e.error})"
  if isinstance(e, EOFError) or "unexpected end of data" in str(e):
    return f"its data ends early: the file is cut off or garbled ({text})"
  if isinstance(e, gzip.BadGzipFile) and ("CRC" in str(e) or "incorrect length" in str(e)):
    return f"its data fails gzip's CRC check: some bytes are damaged ({text})"
  if isinstance(e, (zlib.error, lzma.LZMAError)) or "zlib error" in str(e) or "Invalid data stream" in str(e):
    return f"its compressed data is garbled ({text})"
  return text


def _official_md5(path: Path) -> Optional[str]:
  """The MD5 ``path`` should have if it is named like an official CIFAR archive (or a download kept
  under ``<official name>-<md5>.tar.gz``), else None."""
  from saat_jax.data.download import ARCHIVES  # not at the top: download imports this module

  for archive in ARCHIVES.values():
    if path.name == archive.filename:
      return archive.md5
    stem = archive.filename[:-len(".tar.gz")]
    m = re.fullmatch(re.escape(stem) + r"-([0-9a-f]{32})\.tar\.gz", path.name)
    if m:
      return m.group(1)
  return None


def _redownload_advice(path: Path) -> str:
  """The end of a damaged-archive error: download it again; for a file named like an official
  archive, the MD5 it should have and the one it has."""
  expected = _official_md5(path)
  if expected is None:
    return "download it again (or pass the unpacked folder)."
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return (f"download it again: {path.name} should have MD5 {expected}, this file has "
          f"{digest.hexdigest()}.")


def _read_to_the_end(stream) -> None:
  """Decompresses ``stream`` to its end, so that its checksum (gzip's CRC-32 and length, xz's
  check) is verified; bytes after the last complete gzip member that start no new member (padding,
  which ``gzip -d`` also ignores) are not an error."""
  try:
    while stream.read(1 << 20):
      pass
  except gzip.BadGzipFile as e:
    if "Not a gzipped file" not in str(e):
      raise


class ArchiveTree:
  """The regular files of a folder or of a tar archive, by relative POSIX path.

  An archive is read whole when opened: every header is checked (:class:`_StrictTarInfo`) and a
  compressed archive is decompressed to its end, so that its checksum (gzip's CRC-32, xz's check)
  is verified; a damaged archive raises :class:`CorruptArchiveError` naming where reading stopped.
  """

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
      with open(path, "rb") as f:
        head = f.read(6)
    except OSError as e:
      raise DataError(f"cannot read {path} ({e}); check its permissions.") from e
    method, kind = next(((m, k) for magic, m, k in _MAGIC if head.startswith(magic)), ("", "tar"))
    try:
      self._tar = tarfile.open(path, f"r:{method}", tarinfo=_StrictTarInfo)
    except _ARCHIVE_ERRORS as e:
      self.close()
      if zipfile.is_zipfile(path):
        raise DataError(f"{path} is a zip archive; the data must be a tar archive (.tar.gz, .tgz, "
                        f".tar) or a folder holding {self._expected()}. Unzip it and pass the "
                        f"folder.") from e
      if method and isinstance(e, tarfile.ReadError) and "invalid header" in str(e):
        raise DataError(f"cannot read {path}: it is a {kind} file, but there is not a tar archive "
                        f"inside ({type(e).__name__}: {e}). Expected a .tar.gz/.tgz/.tar holding "
                        f"{self._expected()}; {_redownload_advice(path)}") from e
      if method:
        raise CorruptArchiveError(
            f"cannot read {path}: the {kind} file is truncated or corrupt at its start: "
            f"{_damage(e)}; {_redownload_advice(path)}") from e
      raise DataError(f"cannot read {path}: it is not a tar archive (it starts with bytes {head!r}; "
                      f"{type(e).__name__}: {e}). Expected a .tar.gz/.tgz/.tar holding "
                      f"{self._expected()}; {_redownload_advice(path)}") from e
    stage = "list"
    try:
      members = self._tar.getmembers()
      stage = "check"
      if isinstance(self._tar.fileobj, _COMPRESSED_FILES):
        _read_to_the_end(self._tar.fileobj)
    except _ARCHIVE_ERRORS as e:
      listed = self._tar.members
      offset = e.offset if isinstance(e, _BrokenHeader) else self._tar.offset
      if stage == "check":
        where = (f"at the end of the {kind} stream, after all {len(listed)} members (which one is damaged "
                 f"{kind} cannot tell)")
      elif listed:
        where = (f"at byte {offset} of the unpacked tar, after member {listed[-1].name!r} ({len(listed)} "
                 f"members read)")
      else:
        where = f"at byte {offset} of the unpacked tar"
      self.close()
      raise CorruptArchiveError(f"{path} is truncated or corrupt: {_damage(e)}; reading stopped {where}; "
                                f"{_redownload_advice(path)}") from e
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
      except _ARCHIVE_ERRORS as e:
        raise CorruptArchiveError(f"cannot read {self.where(rel)}: the archive is truncated or corrupt "
                                  f"({_damage(e)}); {_redownload_advice(self.path)}") from e
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


def choose_layout(name: str, tree: ArchiveTree) -> tuple[str, str]:
  layouts = _detect_layouts(tree.names)
  if not layouts:
    sample = ", ".join(tree.names[:5]) or "no files"
    raise DataError(
        f"{tree.path} holds no {name} data in a known layout (found {len(tree.names)} files: "
        f"{sample}{', ...' if len(tree.names) > 5 else ''}). Expected {ArchiveTree._expected()}. Point "
        f"data_dir at such an archive or folder, or use {OTHER_SOURCES_ADVICE}")
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


def _unpickle(tree: ArchiveTree, rel: str, data: bytes) -> dict:
  try:
    obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # noqa: BLE001 -- any failure means "not a CIFAR batch"
    raise DataError(f"{tree.where(rel)} is not a readable CIFAR python batch ({type(e).__name__}: "
                    f"{e}); the archive is damaged or of another kind: download it again.") from e
  if not isinstance(obj, dict):
    raise DataError(f"{tree.where(rel)} holds a {type(obj).__name__}, not a CIFAR batch dict; "
                    f"download the archive again.")
  return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_arrays(tree: ArchiveTree, rel: str, batch: dict, label_key: str) -> tuple[np.ndarray, np.ndarray]:
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


def _label_names(tree: ArchiveTree, rel: str, key: str, canonical: tuple[str, ...]) -> tuple[str, ...]:
  if rel not in set(tree.names):
    return canonical
  meta = _unpickle(tree, rel, tree.read(rel))
  names = meta.get(key)
  if not isinstance(names, (list, tuple)) or len(names) != len(canonical):
    return canonical
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _require(tree: ArchiveTree, fmt: str, names: Sequence[str]) -> None:
  present = set(tree.names)
  missing = [n for n in names if n not in present]
  if missing:
    raise DataError(f"{tree.path} holds {FORMATS[fmt]} but lacks {', '.join(missing)}; the copy is "
                    f"incomplete: download or unpack it again.")


def _read_python_batches(tree: ArchiveTree, fmt: str, root: str, train_files: Sequence[str], test_file: str,
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


def _read_cifar10_python(tree: ArchiveTree, root: str, name: str):
  arrays = _read_python_batches(tree, "cifar10-python", root,
                                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels")
  return (*arrays, _label_names(tree, _join(root, "batches.meta"), "label_names", CIFAR10_CLASSES))


def _read_cifar100_python(tree: ArchiveTree, root: str, name: str):
  arrays = _read_python_batches(tree, "cifar100-python", root, ["train"], "test", "fine_labels")
  return (*arrays, _label_names(tree, _join(root, "meta"), "fine_label_names", CIFAR100_CLASSES))


def _read_cifar10_binary(tree: ArchiveTree, root: str, name: str):
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


def _decode_image(tree: ArchiveTree, rel: str, data: bytes) -> np.ndarray:
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


def _read_image_folder(tree: ArchiveTree, root: str, name: str):
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


def _data_format(tree: ArchiveTree, fmt: str, root: str) -> str:
  """The :data:`~saat_jax.data.core.DATA_FORMATS` name of layout ``fmt`` at ``root``: an image
  folder is 'image-folder-jpeg' if any of its images is a JPEG file (lossy), else '-png'."""
  if fmt != "image-folder":
    return fmt
  prefix = f"{root}/" if root else ""
  for rel in tree.names:
    parts = rel[len(prefix):].split("/") if rel.startswith(prefix) else []
    if (len(parts) == 3 and parts[0] in ("train", "test")
        and PurePosixPath(rel).suffix.lower() in _JPEG_SUFFIXES):
      return "image-folder-jpeg"
  return "image-folder-png"


def decode_local(name: str, tree: ArchiveTree, fmt: str, root: str):
  """Decodes a local source; the slow step that the cache saves. Returns the arrays, the class
  names and the data format (:func:`_data_format`)."""
  train_x, train_y, test_x, test_y, class_names = _READERS[fmt](tree, root, name)
  canonical = CANONICAL_CLASSES[name]
  if len(class_names) != len(canonical):
    raise DataError(f"{tree.where(root or '.')} lists {len(class_names)} classes; {name} has "
                    f"{len(canonical)}. Point data_dir at {name} data.")
  return train_x, train_y, test_x, test_y, tuple(class_names), _data_format(tree, fmt, root)
