"""The official CIFAR python archives, fetched once into the data cache (the default CIFAR source).

CIFAR comes from here when no ``data.data_dir`` is given (``source='auto'``, as torchvision's
``CIFAR10(download=True)`` or TFDS), or with ``--config.data.source=download``: it needs neither
TensorFlow nor a local copy, so it works on a fresh clone or Colab runtime (GPU or TPU).
:func:`download_archive` fetches ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html into ``<cache_dir>/downloads/`` with a progress bar
and checks its MD5 against the published checksum (the same values torchvision's
``CIFAR10``/``CIFAR100`` check). The file is written to a temporary name in that folder and renamed
into place only after it arrived whole (as many bytes as the server announced) and the checksum
matched, so a killed, cut-off or concurrent download never leaves a damaged archive where a later
run would read it; a later call finds the archive and does not download again. The archive is
then read by :mod:`saat_jax.data.archives` and its decoded arrays cached as for any local archive.

``url`` (``data.download_url``) replaces the official address, e.g. a mirror or a ``file://`` copy;
the checksum stays that of the official archive unless ``md5`` (``data.download_md5``) is given,
e.g. for a local server holding another file; such a file is kept under its own name
(``cifar-10-python-<md5>.tar.gz``), never in the official archive's place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from saat_jax.data.cache import atomic_file, default_cache_dir
from saat_jax.data.core import DataError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Archive:
  """An archive the ``download`` source can fetch: where from, its file name and MD5."""
  url: str
  filename: str
  md5: str


ARCHIVES = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def download_dir(cache_dir: Optional[str] = None) -> Path:
  """Where downloaded archives are kept: ``<cache_dir>/downloads`` (default cache: see cache.py)."""
  base = Path(os.path.expanduser(str(cache_dir))) if cache_dir else default_cache_dir()
  return base / "downloads"


def cached_archive_path(name: str, md5: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
  """Where :func:`download_archive` keeps ``name``'s archive: the official file name, or for an
  ``md5`` other than the official archive's, ``<name>-<md5>.tar.gz`` beside it."""
  archive = ARCHIVES[name]
  md5 = (md5 or archive.md5).strip().lower()
  filename = archive.filename
  if md5 != archive.md5:
    filename = f"{filename[:-len('.tar.gz')]}-{md5}.tar.gz"
  return download_dir(cache_dir) / filename


def download_archive(name: str, *, url: Optional[str] = None, md5: Optional[str] = None,
                     cache_dir: Optional[str] = None, progress: bool = True) -> Path:
  """The path of ``name``'s archive in the cache, downloaded and checksum-verified if not there yet.

  Args:
    name: 'cifar10' or 'cifar100'.
    url: where to fetch it from (http(s), ftp or file URL); None for the official address.
    md5: the expected MD5 (32 hex digits); None for the official archive's.
    cache_dir: the data cache; the archive goes to ``<cache_dir>/downloads/``.
    progress: show a progress bar while downloading.

  Raises:
    DataError: for a data set without a download, a malformed ``md5``, a failed download (naming
      the URL, the cause and the ways out), a download cut off (the bytes received and announced)
      or a checksum mismatch (naming the expected and the received MD5). Nothing is kept then.
  """
  if name not in ARCHIVES:
    raise DataError(f"data.source='download' fetches {' or '.join(ARCHIVES)}, not {name!r}; "
                    f"choose another data.source for {name}.")
  archive = ARCHIVES[name]
  url = url or archive.url
  md5 = (md5 or archive.md5).strip().lower()
  if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
    raise DataError(f"data.download_md5 {md5!r} is not an MD5 checksum (32 hex digits); set "
                    f"--config.data.download_md5 to the MD5 of the archive at {url}, or leave it unset "
                    f"for the official archive's ({archive.md5}).")
  target = cached_archive_path(name, md5, cache_dir)
  if target.is_file():
    return target
  logger.info("downloading %s from %s into %s", archive.filename, url, target.parent)
  try:
    with atomic_file(target) as f:  # renamed into place only if whole and the checksum matches
      got, size = _fetch(url, f, archive.filename, progress)
      if got != md5:
        raise DataError(
            f"the download of {name} from {url} is damaged or not the expected file: its MD5 is "
            f"{got}, expected {md5} ({size} bytes received). Nothing was kept; run again to "
            f"download it again, or set --config.data.download_url to a working copy of "
            f"{archive.filename} (and --config.data.download_md5 to its MD5).")
  except OSError as e:
    raise DataError(f"cannot write {target} ({e}); set --config.data.cache_dir (or "
                    f"$SAAT_JAX_CACHE) to a writable folder with room for the archive.") from e
  return target


def _fetch(url: str, out, filename: str, progress: bool) -> tuple[str, int]:
  """Streams ``url`` into the open file ``out``; returns (MD5 hex digest, number of bytes)."""
  from tqdm.auto import tqdm

  digest = hashlib.md5()
  size, total = 0, None
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      announced = response.headers.get("Content-Length")
      total = int(announced) if announced and announced.isdigit() else None
      with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {filename}",
                disable=not progress) as bar:
        while True:
          chunk = response.read(_CHUNK)
          if not chunk:
            break
          out.write(chunk)
          digest.update(chunk)
          size += len(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
    raise DataError(
        f"could not download {filename} from {url} ({type(e).__name__}: {e}). Check the internet "
        f"connection, or set --config.data.download_url to a reachable copy (a mirror or a "
        f"file:// URL), or download it yourself and pass --config.data.source=local "
        f"--config.data.data_dir=<the .tar.gz>.") from e
  # http.client ends a body that stops short of its Content-Length without an error: check it here.
  if total is not None and size != total:
    raise DataError(
        f"the download of {filename} from {url} was cut off after {size} of {total} bytes; nothing "
        f"was kept. Run again to download it again, or set --config.data.download_url to a working "
        f"copy, or download it yourself and pass --config.data.data_dir=<the .tar.gz>.")
  return digest.hexdigest(), size
