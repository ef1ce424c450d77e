"""The official archives: the default CIFAR source and 'download' (saat_jax.data.download), and the
data errors' advice (issues 11 §2, 17 §2).

No internet: the archives are tiny copies in the official format (saat_jax.testing.cifar_archive),
served over HTTP on 127.0.0.1 (the ``cifar_server`` fixture of conftest.py) or by file:// URLs with
the expected checksum patched in.
"""

import os
import re

import numpy as np
import pytest

from saat_jax import config_base
from saat_jax.data import ARCHIVES, DataError, download, load_dataset, sources
from saat_jax.testing import cifar_archive
from saat_jax.testing.cifar_archive import md5_hex as md5_of


def official_like(tmp_path, name):
  """A tiny archive with the official name and layout; returns (path, train, test)."""
  num_classes = 10 if name == "cifar10" else 100
  train, test = cifar_archive.random_cifar(100 if name == "cifar100" else 20, 10, num_classes, seed=1)
  return cifar_archive.official_archive(tmp_path / ARCHIVES[name].filename, name, train, test), train, test


@pytest.fixture
def served(tmp_path, monkeypatch):
  """Points each official archive at a local tiny copy (its own checksum); returns name -> info."""
  out = {}
  for name in ARCHIVES:
    path, train, test = official_like(tmp_path / name, name)
    archive = download.Archive(path.as_uri(), ARCHIVES[name].filename, md5_of(path))
    monkeypatch.setitem(ARCHIVES, name, archive)
    out[name] = (path, train, test)
  return out


def no_network(*a, **k):
  raise AssertionError("downloaded although the archive is in the cache")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_verifies_caches_and_reads(tmp_path, served, monkeypatch, name):
  path, (tx, ty), (sx, sy) = served[name]
  cache = str(tmp_path / "cache")
  d = load_dataset(name, source="download", cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.train_labels, ty)
  np.testing.assert_array_equal(d.test_images, sx)
  np.testing.assert_array_equal(d.test_labels, sy)
  kept = download.download_dir(cache) / ARCHIVES[name].filename
  assert kept.read_bytes() == path.read_bytes()
  assert sorted(os.listdir(kept.parent)) == [kept.name]  # no temporary file left behind
  # The second call uses the cached archive: no network, even with the source gone.
  path.unlink()
  monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
  assert download.download_archive(name, cache_dir=cache) == kept
  again = load_dataset(name, source="download", cache_dir=cache)
  np.testing.assert_array_equal(again.train_images, tx)


def test_checksum_mismatch_names_both_and_keeps_nothing(tmp_path, served):
  path = served["cifar10"][0]
  cache = str(tmp_path / "cache")
  expected = "0" * 32
  with pytest.raises(DataError) as err:
    download.download_archive("cifar10", md5=expected, cache_dir=cache)
  msg = str(err.value)
  assert f"expected {expected}" in msg and f"MD5 is {md5_of(path)}" in msg, msg
  assert path.as_uri() in msg and "download_url" in msg
  assert os.listdir(download.download_dir(cache)) == []
  # A corrupted transfer (one flipped byte) is refused the same way against the true checksum.
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  bad = tmp_path / "corrupt.tar.gz"
  bad.write_bytes(bytes(data))
  with pytest.raises(DataError, match=f"expected {ARCHIVES['cifar10'].md5}"):
    load_dataset("cifar10", source="download", cache_dir=cache, download_url=bad.as_uri())
  assert os.listdir(download.download_dir(cache)) == []


def test_interrupted_download_leaves_no_cache_entry(tmp_path, served, monkeypatch):
  cache = str(tmp_path / "cache")

  def interrupted(url, out, filename, progress):
    out.write(b"\x1f\x8b partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(download, "_fetch", interrupted)
  with pytest.raises(KeyboardInterrupt):
    download.download_archive("cifar10", cache_dir=cache)
  assert os.listdir(download.download_dir(cache)) == []
  monkeypatch.undo()


def test_download_url_overrides_the_address(tmp_path, served, monkeypatch):
  path = served["cifar10"][0]
  moved = download.Archive("file:///nonexistent/cifar-10-python.tar.gz",
                           ARCHIVES["cifar10"].filename, ARCHIVES["cifar10"].md5)
  monkeypatch.setitem(ARCHIVES, "cifar10", moved)
  cache = str(tmp_path / "cache")
  with pytest.raises(DataError, match=r"(?s)could not download cifar-10-python\.tar\.gz from "
                                      r"file:///nonexistent.*--config\.data\.download_url"):
    load_dataset("cifar10", source="download", cache_dir=cache)
  d = load_dataset("cifar10", "ignored/by/download.tar.gz", source="download", cache_dir=cache,
                   download_url=path.as_uri())
  np.testing.assert_array_equal(d.test_labels, served["cifar10"][2][1])


def test_download_source_is_only_for_cifar():
  with pytest.raises(DataError, match="fetches cifar10 or cifar100, not 'svhn'"):
    download.download_archive("svhn")


def test_config_default_is_the_official_address():
  c = config_base.base_config()
  assert c.data.download_url is None
  assert ARCHIVES["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
  assert ARCHIVES["cifar100"].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


# ------------------------------------------------------------------------------------------------
# Over HTTP (a local server): the default source, checksums, cut-off downloads, no network, 404.


def downloads(cache):
  folder = download.download_dir(cache)
  return sorted(os.listdir(folder)) if folder.exists() else []


def test_no_data_dir_downloads_the_archive_once_and_says_where_it_comes_from(tmp_path, cifar_server, capsys):
  server, served = cifar_server
  s = served["cifar10"]
  cache = str(tmp_path / "cache")
  d = load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)  # source 'auto'
  for got, want in zip((d.train_images, d.train_labels, d.test_images, d.test_labels), (*s.train, *s.test)):
    np.testing.assert_array_equal(got, want)
  assert server.requests == ["/cifar-10-python.tar.gz"]
  assert (d.data_format, d.data_note) == ("cifar10-python", "")  # the official layout, lossless
  kept = download.download_dir(cache) / f"cifar-10-python-{s.md5}.tar.gz"  # not the official file's name
  assert downloads(cache) == [kept.name] and kept.read_bytes() == s.path.read_bytes()
  out = capsys.readouterr().out
  assert f"downloading cifar-10-python.tar.gz from {s.url}" in out, out
  assert f"data: cifar10 (cifar10-python) from {s.url}, kept in {kept} (no data.data_dir given)" in out, out
  # The second load reads the cached archive (and decoded arrays): no request.
  again = load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)
  np.testing.assert_array_equal(again.train_images, s.train[0])
  assert server.requests == ["/cifar-10-python.tar.gz"]
  assert "downloading" not in capsys.readouterr().out


def test_download_of_cifar100_over_http(tmp_path, cifar_server):
  server, served = cifar_server
  s = served["cifar100"]
  d = load_dataset("cifar100", source="download", download_url=s.url, download_md5=s.md5.upper(),
                   cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(d.train_labels, s.train[1])
  np.testing.assert_array_equal(d.test_images, s.test[0])
  assert d.num_classes == 100 and server.requests == ["/cifar-100-python.tar.gz"]


def test_a_wrong_checksum_over_http_keeps_nothing(tmp_path, cifar_server):
  server, served = cifar_server
  s = served["cifar10"]
  cache = str(tmp_path / "cache")
  wrong = "f" * 32
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=wrong)
  msg = str(err.value)
  assert f"its MD5 is {s.md5}, expected {wrong} ({s.path.stat().st_size} bytes received)" in msg, msg
  assert "Nothing was kept" in msg and "--config.data.download_md5" in msg
  assert downloads(cache) == []
  # Against the official checksum (no download_md5), the tiny archive is refused the same way.
  with pytest.raises(DataError, match=f"expected {ARCHIVES['cifar10'].md5}"):
    load_dataset("cifar10", cache_dir=cache, download_url=s.url)
  assert downloads(cache) == [] and len(server.requests) == 2


def test_a_cut_off_download_says_how_much_arrived_and_keeps_nothing(tmp_path, cifar_server):
  server, served = cifar_server
  s = served["cifar10"]
  size = s.path.stat().st_size
  server.truncate["/cifar-10-python.tar.gz"] = size // 3
  cache = str(tmp_path / "cache")
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)
  msg = str(err.value)
  assert f"the download of cifar-10-python.tar.gz from {s.url} was cut off after {size // 3} of {size} bytes" in msg
  assert "nothing was kept" in msg and "Run again" in msg
  assert downloads(cache) == []
  # The next attempt, with the connection whole again, succeeds.
  del server.truncate["/cifar-10-python.tar.gz"]
  d = load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)
  np.testing.assert_array_equal(d.test_labels, s.test[1])


def test_no_network_names_the_url_and_the_ways_out(tmp_path):
  url = cifar_archive.closed_port_url()
  cache = str(tmp_path / "cache")
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", cache_dir=cache, download_url=url)
  msg = str(err.value)
  assert f"could not download cifar-10-python.tar.gz from {url} (URLError: " in msg, msg
  assert "Connection refused" in msg
  for way_out in ("--config.data.download_url", "--config.data.source=local", "--config.data.data_dir"):
    assert way_out in msg, (way_out, msg)
  assert downloads(cache) == []


def test_a_404_names_the_url(tmp_path, cifar_server):
  server, _ = cifar_server
  url = server.url("/elsewhere/cifar-10-python.tar.gz")
  cache = str(tmp_path / "cache")
  with pytest.raises(DataError, match=re.escape(f"from {url} (HTTPError: HTTP Error 404: File not found)")):
    load_dataset("cifar10", cache_dir=cache, download_url=url)
  assert server.requests == ["/elsewhere/cifar-10-python.tar.gz"] and downloads(cache) == []


def test_a_malformed_md5_is_refused_before_downloading(tmp_path, cifar_server):
  server, served = cifar_server
  with pytest.raises(DataError, match=r"data\.download_md5 'abc' is not an MD5 checksum \(32 hex digits\)"):
    load_dataset("cifar10", download_url=served["cifar10"].url, download_md5="abc", cache_dir=str(tmp_path))
  assert server.requests == []


# ------------------------------------------------------------------------------------------------
# The errors' advice: flag wording, every path once, the download source, what TFDS needs.


def test_missing_relative_copy_is_named_once_with_flag_advice(tmp_path, monkeypatch):
  """A relative data_dir is looked for from the working directory only (no project-root rule)."""
  monkeypatch.chdir(tmp_path)
  rel = "../shared/data/cifar10-jpeg.tar.gz"
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", rel)
  msg = str(err.value)
  assert msg.count(rel) == 1, msg
  assert f"(looked for {os.path.abspath(tmp_path / rel)})" in msg, msg
  assert msg.count("cifar10-jpeg.tar.gz") == 2, msg  # as given, and where it was looked for: nowhere else
  assert "--config.data.data_dir" in msg and "--config.data.source=download" in msg
  assert "--config.data.source=tfds" in msg and "pip install tensorflow tensorflow-datasets" in msg
  assert "source='" not in msg  # flag wording, not Python's


def test_missing_absolute_path_is_printed_once(tmp_path):
  missing = str(tmp_path / "nope.tar.gz")
  with pytest.raises(DataError) as err:
    load_dataset("cifar100", missing)
  assert str(err.value).count(missing) == 1, str(err.value)
  assert "looked for" not in str(err.value)


def test_unknown_source_lists_download_in_flag_wording():
  with pytest.raises(DataError, match=r"--config\.data\.source to one of auto, local, download, tfds"):
    load_dataset("cifar10", source="kaggle")


def test_tfds_never_gets_the_archive_path_as_its_data_dir(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  seen = []
  for fn in ("load", "data_source"):  # data_source: the TF-free path, taken without TensorFlow
    def spy(*a, _real=getattr(tfds, fn), **k):
      seen.append(k)
      return _real(*a, **k)
    monkeypatch.setattr(tfds, fn, spy)
  with tfds.testing.mock_data(num_examples=6):
    d = load_dataset("cifar10", "/some/local/cifar10-jpeg.tar.gz", source="tfds")
  assert d.test_images.shape == (6, 32, 32, 3)
  assert seen and all("data_dir" not in k for k in seen), seen


def test_tfds_missing_module_says_what_to_install_and_where_tfds_keeps_data(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def load(*a, **k):
    raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

  def data_source(*a, **k):
    assert "data_dir" not in k
    raise FileNotFoundError("no prepared copy")

  monkeypatch.setattr(tfds, "load", load)
  monkeypatch.setattr(tfds, "data_source", data_source)
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", "/some/archive.tar.gz", source="tfds")
  msg = str(err.value)
  assert "`pip install tensorflow tensorflow-datasets importlib_resources`" in msg, msg
  assert "'importlib_resources' is missing" in msg
  tfds_dir = sources.tfds_data_dir(tfds)
  assert msg.count(tfds_dir) == 1 and "$TFDS_DATA_DIR" in msg
  assert "/some/archive.tar.gz" not in msg
  assert "--config.data.source=download" in msg and "source='" not in msg


def test_tfds_data_folder_follows_the_environment(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", "/elsewhere/tfds")
  assert sources.tfds_data_dir(tfds) == "/elsewhere/tfds"


def test_missing_tfds_package_message(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_tfds(name, *a, **k):
    if name == "tensorflow_datasets":
      raise ModuleNotFoundError("No module named 'tensorflow_datasets'", name="tensorflow_datasets")
    return real_import(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_tfds)
  with pytest.raises(DataError) as err:
    load_dataset("cifar100", source="tfds")
  msg = str(err.value)
  assert re.search(r"`pip install tensorflow tensorflow-datasets`\. Or use --config\.data\.source=download",
                   msg), msg
