"""Tiny CIFAR archives in the official format and a local HTTP server for them (tests only, no torch).

The download path (:mod:`saat_jax.data.download`) is tested without the internet: build a small
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` laid out as the archives of
https://www.cs.toronto.edu/~kriz/cifar.html (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``, ``readme.html``; ``cifar-100-python/train``, ``test``, ``meta``:
Python-2 pickles of dicts with bytes keys, ``b'data'`` an (N, 3072) uint8 array of the R, G and B
planes, ``b'labels'`` / ``b'fine_labels'`` lists of ints), then serve it with :class:`ArchiveServer`
and point ``data.download_url`` / ``data.download_md5`` at it::

  (train, test) = random_cifar(20, 10)
  path = official_archive(tmp / "cifar-10-python.tar.gz", "cifar10", train, test)
  with ArchiveServer({"/cifar-10-python.tar.gz": path.read_bytes()}) as server:
    load_dataset("cifar10", download_url=server.url("/cifar-10-python.tar.gz"),
                 download_md5=md5_hex(path), cache_dir=str(tmp / "cache"))

The server can also cut a response short (``truncate``: it announces the whole Content-Length,
sends fewer bytes and closes), answers 404 for a path it does not hold, and records every request
(``requests``); :func:`closed_port_url` gives an address where nothing listens (no network).
"""

from __future__ import annotations

import hashlib
import http.server
import pickle
import socket
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from saat_jax.data.core import CIFAR10_CLASSES, CIFAR100_CLASSES

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
FILENAMES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def random_cifar(num_train: int, num_test: int, num_classes: int = 10, seed: int = 0):
  """``(train_x, train_y), (test_x, test_y)``: random uint8 32x32x3 images and int32 labels.

  Labels cycle through the classes (every class occurs when n >= num_classes), in a random order.
  """
  rng = np.random.default_rng(seed)
  out = []
  for n in (num_train, num_test):
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    out.append((images, labels))
  return tuple(out)


def planar(images: np.ndarray) -> np.ndarray:
  """NHWC uint8 -> CIFAR's (N, 3072) rows: the R plane, then G, then B (row-major 32x32 each)."""
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _pickle(path: Path, obj) -> None:
  path.write_bytes(pickle.dumps(obj, protocol=2))  # the official batches are protocol-2 pickles


def write_cifar10_python(folder, train, test) -> Path:
  """``folder`` (created) holding ``cifar-10-batches-py``'s files for ``train`` / ``test``.

  The training examples are split in order over ``data_batch_1`` .. ``data_batch_5``.
  """
  folder = Path(folder)
  folder.mkdir(parents=True)
  (tx, ty), (sx, sy) = train, test
  for i, part in enumerate(np.array_split(np.arange(len(tx)), 5)):
    _pickle(folder / f"data_batch_{i + 1}", {
        b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": [int(v) for v in ty[part]],
        b"data": planar(tx[part]), b"filenames": [b"x.png"] * len(part)})
  _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in sy],
                                  b"data": planar(sx), b"filenames": [b"x.png"] * len(sx)})
  _pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                    b"num_cases_per_batch": len(tx) // 5, b"num_vis": 3072})
  (folder / "readme.html").write_text("<html></html>")
  return folder


def write_cifar100_python(folder, train, test) -> Path:
  """``folder`` (created) holding ``cifar-100-python``'s ``train``, ``test`` and ``meta``."""
  folder = Path(folder)
  folder.mkdir(parents=True)
  for fname, (x, y) in (("train", train), ("test", test)):
    _pickle(folder / fname, {b"filenames": [b"x.png"] * len(x), b"batch_label": fname.encode(),
                             b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y],
                             b"data": planar(x)})
  _pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                            b"coarse_label_names": [b"c%d" % i for i in range(20)]})
  return folder


def official_archive(path, name: str = "cifar10", train=None, test=None) -> Path:
  """Writes ``path`` (and its folder): a ``.tar.gz`` of ``name``'s official layout holding ``train`` / ``test``.

  ``train`` / ``test`` default to :func:`random_cifar` (20 and 10 examples). Returns ``path``.
  """
  if name not in FOLDERS:
    raise ValueError(f"official_archive builds {' or '.join(FOLDERS)}, not {name!r}")
  if train is None or test is None:
    train, test = random_cifar(20 if name == "cifar10" else 100, 10, 10 if name == "cifar10" else 100)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = write_cifar10_python if name == "cifar10" else write_cifar100_python
  with tempfile.TemporaryDirectory() as staging:
    src = writer(Path(staging) / FOLDERS[name], train, test)
    with tarfile.open(path, "w:gz") as tf:
      tf.add(src, arcname=FOLDERS[name])
  return path


def md5_hex(path) -> str:
  return hashlib.md5(Path(path).read_bytes()).hexdigest()


class ArchiveServer:
  """An HTTP server on 127.0.0.1 (a free port) serving ``files`` (URL path -> bytes) from a thread.

  ``truncate[path] = n`` sends only the first ``n`` bytes of that file while announcing its whole
  length, then closes the connection (a download cut off). Any other path gets 404. ``requests``
  lists the paths asked for, in order. Use it as a context manager.
  """

  def __init__(self, files: Mapping[str, bytes], truncate: Optional[Mapping[str, int]] = None):
    self.files = dict(files)
    self.truncate = dict(truncate or {})
    self.requests: list[str] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # noqa: N802 - http.server's name
        server.requests.append(self.path)
        data = server.files.get(self.path)
        if data is None:
          self.send_error(404, "File not found")
          return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:server.truncate.get(self.path, len(data))])
        self.wfile.flush()
        self.close_connection = True

      def log_message(self, *args):  # quiet
        pass

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                    daemon=True)

  @property
  def port(self) -> int:
    return self._httpd.server_address[1]

  def url(self, path: str) -> str:
    return f"http://127.0.0.1:{self.port}{path if path.startswith('/') else '/' + path}"

  def __enter__(self) -> "ArchiveServer":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=10)


def closed_port_url(path: str = "/cifar-10-python.tar.gz") -> str:
  """An http URL on 127.0.0.1 where nothing listens: a connection to it is refused (no network)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}{path}"

