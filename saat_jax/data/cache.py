"""The cache of decoded arrays: a local source is decoded once, then read back as uint8 ``.npz``.

Files live in ``cache_dir``, by default ``$SAAT_JAX_CACHE`` or ``~/.cache/saat_jax``, and are
written atomically. A file is keyed by the data set, the absolute path and the size and
modification time of what was read, so a changed archive is decoded again; a damaged file is
decoded again too, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from saat_jax.data import archives
from saat_jax.data.core import CANONICAL_CLASSES, DATA_FORMATS, DataError

logger = logging.getLogger(__name__)

# Bump when what a cache file holds, or the order of examples, changes. 2: "format" holds the
# data format (image-folder-png / image-folder-jpeg, not the layout image-folder).
_CACHE_VERSION = 2


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
    fmt = str(arrays["format"])
    ok = (tx.dtype == np.uint8 and sx.dtype == np.uint8 and tx.ndim == 4 and sx.ndim == 4
          and ty.dtype == np.int32 and sy.dtype == np.int32 and ty.shape == (len(tx),)
          and sy.shape == (len(sx),) and len(arrays["class_names"]) == len(CANONICAL_CLASSES[name])
          and fmt in DATA_FORMATS)
    if not ok:
      raise ValueError("unexpected arrays")
  except Exception as e:  # noqa: BLE001 -- a damaged cache is rebuilt, never trusted
    logger.warning("ignoring the unreadable cache file %s (%s: %s); decoding again",
                   file, type(e).__name__, e)
    return None
  return tx, ty, sx, sy, tuple(str(c) for c in arrays["class_names"]), fmt


@contextlib.contextmanager
def atomic_file(file: Path):
  """A binary file open for writing in place of ``file``, which appears only if the block succeeds.

  The data goes to a temporary file in ``file``'s folder, which is renamed to ``file`` when the
  block ends without an error (atomic: readers see no file or the old one, or the complete new
  one) and deleted when it raises, so an interrupted writer never leaves a partial ``file``.
  """
  file.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, file)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def _write_cache(file: Path, arrays) -> None:
  train_x, train_y, test_x, test_y, class_names, fmt = arrays
  try:
    with atomic_file(file) as f:
      np.savez(f, train_images=train_x, train_labels=train_y, test_images=test_x,
               test_labels=test_y, class_names=np.asarray(class_names, dtype=str),
               format=np.asarray(fmt))
  except OSError as e:
    logger.warning("could not write the data cache %s (%s); the data will be decoded again next time. "
                   "Set cache_dir or $SAAT_JAX_CACHE to a writable folder.", file, e)


def load_local_cached(name: str, path: Path, cache_dir: Optional[str]):
  """The arrays of the archive or folder ``path``: from the cache, else decoded and then cached.

  Returns ``train_x, train_y, test_x, test_y, class_names, data_format``.
  """
  if path.is_file():
    # An archive is keyed by its own size and mtime, so a cache hit never opens it.
    st = path.stat()
    file = _cache_file(cache_dir, name, "archive", path, [st.st_size, st.st_mtime_ns])
    cached = _read_cache(file, name)
    if cached is not None:
      return cached
    tree = archives.ArchiveTree(path)
    try:
      fmt, root = archives.choose_layout(name, tree)
      t0 = time.time()
      arrays = archives.decode_local(name, tree, fmt, root)
    finally:
      tree.close()
  elif path.is_dir():
    tree = archives.ArchiveTree(path)
    fmt, root = archives.choose_layout(name, tree)
    prefix = f"{root}/" if root else ""
    used = [n for n in tree.names if n.startswith(prefix)]
    file = _cache_file(cache_dir, name, fmt, path / root, tree.stat_signature(used))
    cached = _read_cache(file, name)
    if cached is not None:
      return cached
    t0 = time.time()
    arrays = archives.decode_local(name, tree, fmt, root)
  else:
    raise DataError(f"data_dir {path} is neither a file nor a folder; pass a CIFAR archive or folder.")
  logger.info("decoded %s (%s) from %s in %.1fs; caching the arrays in %s",
              name, arrays[-1], path, time.time() - t0, file)
  _write_cache(file, arrays)
  return arrays
