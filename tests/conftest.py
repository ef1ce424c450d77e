"""Fixtures shared by the tests (fixtures only).

The tests name their data explicitly, never through a config's default: the real CIFAR-10 copy of
this checkout (``cifar10_jpeg``: ``../shared/data/cifar10-jpeg.tar.gz`` beside the project root, or
``$SAAT_JAX_TEST_DATA/cifar10-jpeg.tar.gz``; the test is skipped when it is absent; mark such tests
``data``), and tiny archives in the official format served over HTTP on 127.0.0.1
(``cifar_server``, :mod:`saat_jax.testing.cifar_archive`) for the download path.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from saat_jax.testing import cifar_archive

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
  """Where the real data of the tests lies: ``$SAAT_JAX_TEST_DATA``, else ``<project>/../shared/data``."""
  return Path(os.environ.get("SAAT_JAX_TEST_DATA") or ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
  """The absolute path of the real CIFAR-10 JPEG archive (60,000 images); skips when it is absent."""
  path = shared_data_dir() / "cifar10-jpeg.tar.gz"
  if not path.is_file():
    pytest.skip(f"needs the real CIFAR-10 archive {path} (../shared/data/cifar10-jpeg.tar.gz beside the "
                f"project root, or set $SAAT_JAX_TEST_DATA to its folder), absent here")
  return path


@dataclasses.dataclass(frozen=True)
class Served:
  """One tiny official-format archive on the test server: where, its MD5, the arrays it holds."""
  url: str
  md5: str
  path: Path
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]


@pytest.fixture
def cifar_server(tmp_path):
  """An :class:`~saat_jax.testing.cifar_archive.ArchiveServer` holding a tiny ``cifar-10-python.tar.gz``
  (20 train / 10 test images) and ``cifar-100-python.tar.gz`` (100 / 10) at ``/<file name>``.

  Yields ``(server, {name: Served})``; ``server.requests`` counts the downloads, ``server.truncate``
  cuts one short.
  """
  served, files = {}, {}
  for name, (n_train, n_classes) in {"cifar10": (20, 10), "cifar100": (100, 100)}.items():
    train, test = cifar_archive.random_cifar(n_train, 10, n_classes, seed=len(name))
    path = cifar_archive.official_archive(tmp_path / "served" / name / cifar_archive.FILENAMES[name], name,
                                          train, test)
    files["/" + path.name] = path.read_bytes()
    served[name] = Served("", cifar_archive.md5_hex(path), path, train, test)
  with cifar_archive.ArchiveServer(files) as server:
    yield server, {n: dataclasses.replace(s, url=server.url("/" + s.path.name)) for n, s in served.items()}
