"""The ``download`` source: the official CIFAR python archives, fetched once into the data cache.

``source='download'`` (``--config.data.source=download``) needs neither TensorFlow nor a local copy,
so it works on a fresh Colab runtime (GPU or TPU). :func:`download_archive` fetches
``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html into ``<cache_dir>/downloads/`` and checks its MD5
against the published checksum (the same values torchvision's ``CIFAR10``/``CIFAR100`` check).
The file is written to a temporary name in that folder and renamed into place only after the
checksum matched, so a killed or concurrent download never leaves a damaged archive where a later
run would read it; a later call finds the archive and does not download again. The archive is
then read by :mod:`saat_jax.data.archives` and its decoded arrays cached as for any local archive.

``url`` (``data.download_url``) replaces the official address, e.g. a mirror or a ``file://`` copy;
the checksum stays that of the official archive unless ``md5`` is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from saat_jax.data.cache import atomic_file, default_cache_dir
from saat_jax.data.core import DataError

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


def download_archive(name: str, *, url: Optional[str] = None, md5: Optional[str] = None,
                     cache_dir: Optional[str] = None, progress: bool = True) -> Path:
  """The path of ``name``'s archive in the cache, downloaded and checksum-verified if not there yet.

  Args:
    name: 'cifar10' or 'cifar100'.
    url: where to fetch it from (http(s), ftp or file URL); None for the official address.
    md5: the expected MD5 (hex); None for the official archive's.
    cache_dir: the data cache; the archive goes to ``<cache_dir>/downloads/``.
    progress: show a progress bar while downloading.

  Raises:
    DataError: for a data set without a download, a failed download (naming the URL and the
      cause) or a checksum mismatch (naming the expected and the received MD5; nothing is kept).
  """
  if name not in ARCHIVES:
    raise DataError(f"data.source='download' fetches {' or '.join(ARCHIVES)}, not {name!r}; "
                    f"choose another data.source for {name}.")
  archive = ARCHIVES[name]
  url = url or archive.url
  md5 = (md5 or archive.md5).lower()
  target = download_dir(cache_dir) / archive.filename
  if target.is_file():
    return target
  try:
    with atomic_file(target) as f:  # renamed into place only if the checksum matches
      got, size = _fetch(url, f, archive.filename, progress)
      if got != md5:
        raise DataError(
            f"the download of {name} from {url} is damaged or not the expected file: its MD5 is "
            f"{got}, expected {md5} ({size} bytes received). Nothing was kept; run again to "
            f"download it again, or set --config.data.download_url to a working copy of "
            f"{archive.filename}.")
  except OSError as e:
    raise DataError(f"cannot write {target} ({e}); set --config.data.cache_dir (or "
                    f"$SAAT_JAX_CACHE) to a writable folder with room for the archive.") from e
  return target


def _fetch(url: str, out, filename: str, progress: bool) -> tuple[str, int]:
  """Streams ``url`` into the open file ``out``; returns (MD5 hex digest, number of bytes)."""
  from tqdm.auto import tqdm

  digest = hashlib.md5()
  size = 0
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      total = response.headers.get("Content-Length")
      with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                desc=f"downloading {filename}", disable=not progress) as bar:
        while True:
          chunk = response.read(_CHUNK)
          if not chunk:
            break
          out.write(chunk)
          digest.update(chunk)
          size += len(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, OSError, ValueError) as e:
    raise DataError(
        f"could not download {filename} from {url} ({type(e).__name__}: {e}). Check the internet "
        f"connection, or set --config.data.download_url to a reachable copy (a mirror or a "
        f"file:// URL), or download it yourself and pass --config.data.source=local "
        f"--config.data.data_dir=<the .tar.gz>.") from e
  return digest.hexdigest(), size
