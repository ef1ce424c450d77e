"""Data readers: every archive format round-trips, the real JPEG archive, digits, TFDS (mocked),
the cache and bad input (saat_jax.data.archives, .cache, .sources, .dataset)."""

import gzip
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import saat_jax.data.cache as data_cache  # not `cache`: that name is the fixture below
from saat_jax import config_base
from saat_jax.data import CIFAR10_CLASSES, CIFAR100_CLASSES, DataError, archives, core, load_dataset
from saat_jax.testing import cifar_archive

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 20, 10


# ------------------------------------------------------------------------------------------------
# Helpers that write tiny archives of each format.


def random_split(seed, n, num_classes=10):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)  # every class when n >= num_classes
  return images, labels


make_cifar10_python = cifar_archive.write_cifar10_python  # the official layouts, as folders
make_cifar100_python = cifar_archive.write_cifar100_python
planar = cifar_archive.planar


def make_cifar10_binary(root, train, test):
  root.mkdir(parents=True)
  (tx, ty), (sx, sy) = train, test

  def records(x, y):
    return np.concatenate([y.astype(np.uint8)[:, None], planar(x)], axis=1).tobytes()

  per = len(tx) // 5
  for i in range(5):
    sl = slice(i * per, (i + 1) * per)
    (root / f"data_batch_{i + 1}.bin").write_bytes(records(tx[sl], ty[sl]))
  (root / "test_batch.bin").write_bytes(records(sx, sy))
  (root / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
  return root


def make_image_tree(root, splits, class_names, ext="png"):
  """root/{train,test}/<class>/NNNN.<ext>; returns {split: [(relpath, label_index_in_class_names)]}."""
  written = {}
  for split, (x, y) in splits.items():
    written[split] = []
    for i, (img, lab) in enumerate(zip(x, y)):
      d = root / split / class_names[lab]
      d.mkdir(parents=True, exist_ok=True)
      p = d / f"{i:04d}.{ext}"
      Image.fromarray(img).save(p, **({"quality": 90} if ext == "jpg" else {}))
      written[split].append(p)
  return written


def make_tar(src, dest, arcname=None, mode="w:gz"):
  with tarfile.open(dest, mode) as tf:
    tf.add(src, arcname=arcname if arcname is not None else src.name)
  return dest


def as_dict(images, labels):
  """{image bytes: label}; the random test images are all distinct."""
  d = {img.tobytes(): int(lab) for img, lab in zip(images, labels)}
  assert len(d) == len(images)
  return d


def multiset(images, labels):
  return sorted(img.tobytes() + bytes([int(lab)]) for img, lab in zip(images, labels))


def assert_same_examples(got_x, got_y, want_x, want_y):
  """The same (image, label) pairs, in any order."""
  assert got_x.dtype == np.uint8 and got_y.dtype == np.int32
  assert got_x.shape == want_x.shape and got_y.shape == want_y.shape
  assert as_dict(got_x, got_y) == as_dict(want_x, want_y)


@pytest.fixture(scope="module")
def tiny():
  return random_split(1, N_TRAIN), random_split(2, N_TEST)


@pytest.fixture
def cache(tmp_path):
  return str(tmp_path / "cache")


# ------------------------------------------------------------------------------------------------
# Each archive format round-trips exactly.


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_python_round_trip(tmp_path, tiny, cache, packed):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "cifar-10-batches-py", (tx, ty), (sx, sy))
  if packed:
    src = make_tar(src, tmp_path / "cifar-10-python.tar.gz")
  d = load_dataset("cifar10", str(src), cache_dir=cache)
  # The pickles keep their order: exact, ordered equality.
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.train_labels, ty)
  np.testing.assert_array_equal(d.test_images, sx)
  np.testing.assert_array_equal(d.test_labels, sy)
  assert d.train_labels.dtype == np.int32 and d.train_images.dtype == np.uint8
  assert d.num_classes == 10 and d.class_names == CIFAR10_CLASSES and d.image_shape == (32, 32, 3)
  assert d.val_images.shape == (0, 32, 32, 3) and d.val_labels.shape == (0,)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_binary_round_trip(tmp_path, tiny, cache, packed):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_binary(tmp_path / "cifar-10-batches-bin", (tx, ty), (sx, sy))
  if packed:
    src = make_tar(src, tmp_path / "cifar-10-binary.tar.gz")
  d = load_dataset("CIFAR10", str(src), cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.train_labels, ty)
  np.testing.assert_array_equal(d.test_images, sx)
  np.testing.assert_array_equal(d.test_labels, sy)
  assert d.name == "cifar10" and d.class_names == CIFAR10_CLASSES


def test_binary_and_python_formats_agree(tmp_path, tiny, cache):
  """The planes of the binary records and the pickled rows decode to the same pixels."""
  (tx, ty), (sx, sy) = tiny
  a = load_dataset("cifar10", str(make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))), cache_dir=cache)
  b = load_dataset("cifar10", str(make_cifar10_binary(tmp_path / "bin", (tx, ty), (sx, sy))), cache_dir=cache)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  # A channel-order mistake would show: pixel (0, 0) of image 0 is the first byte of each plane.
  row = planar(tx[:1])[0]
  assert tuple(a.train_images[0, 0, 0]) == (row[0], row[1024], row[2048])


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_cifar100_python_round_trip(tmp_path, cache, packed):
  (tx, ty), (sx, sy) = random_split(3, N_TRAIN, 100), random_split(4, N_TEST, 100)
  src = make_cifar100_python(tmp_path / "cifar-100-python", (tx, ty), (sx, sy))
  if packed:
    src = make_tar(src, tmp_path / "cifar-100-python.tar.gz")
  d = load_dataset("cifar100", str(src), cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.train_labels, ty)  # fine labels, not coarse
  np.testing.assert_array_equal(d.test_images, sx)
  np.testing.assert_array_equal(d.test_labels, sy)
  assert d.num_classes == 100 and d.class_names == CIFAR100_CLASSES


def test_png_image_folder_round_trip_in_canonical_order(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES)
  d = load_dataset("cifar10", str(tmp_path / "tree"), cache_dir=cache)
  assert_same_examples(d.train_images, d.train_labels, tx, ty)  # PNG is lossless
  assert_same_examples(d.test_images, d.test_labels, sx, sy)
  assert d.class_names == CIFAR10_CLASSES
  # The order of a tree is a fixed shuffle, not class-blocked, and does not depend on the seed.
  assert not np.all(np.diff(d.train_labels) >= 0)
  d2 = load_dataset("cifar10", str(tmp_path / "tree"), seed=5, cache_dir=str(tmp_path / "other_cache"))
  np.testing.assert_array_equal(d.train_images, d2.train_images)


def test_image_folder_with_other_class_names_uses_sorted_order(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  names = ("zebra", "ant", "moose", "cow", "bat", "yak", "eel", "fox", "gnu", "hen")
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, names)
  d = load_dataset("cifar10", str(tmp_path / "tree"), cache_dir=cache)
  assert d.class_names == tuple(sorted(names))
  remap = np.asarray([sorted(names).index(n) for n in names], np.int32)
  assert_same_examples(d.train_images, d.train_labels, tx, remap[ty])
  assert_same_examples(d.test_images, d.test_labels, sx, remap[sy])


def test_cifar100_image_folder_in_canonical_order(tmp_path, cache):
  (tx, ty), (sx, sy) = random_split(5, 100, 100), random_split(6, 10, 100)
  ty = np.arange(100, dtype=np.int32)  # one image per class, so all 100 class folders exist
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR100_CLASSES)
  d = load_dataset("cifar100", str(tmp_path / "tree"), cache_dir=cache)
  assert d.num_classes == 100 and d.class_names == CIFAR100_CLASSES
  assert_same_examples(d.train_images, d.train_labels, tx, ty)
  assert_same_examples(d.test_images, d.test_labels, sx, sy)


@pytest.mark.parametrize("top_dir", ["cifar10", ""], ids=["with-top-dir", "no-top-dir"])
def test_jpeg_tree_tar_gz_matches_pillow(tmp_path, tiny, cache, top_dir):
  (tx, ty), (sx, sy) = tiny
  written = make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES, "jpg")
  archive = tmp_path / "cifar10-jpeg.tar.gz"
  with tarfile.open(archive, "w:gz") as tf:
    for split in ("train", "test"):
      tf.add(tmp_path / "tree" / split, arcname=f"{top_dir}/{split}" if top_dir else split)
  d = load_dataset("cifar10", str(archive), cache_dir=cache)
  for split, x, y in (("train", d.train_images, d.train_labels), ("test", d.test_images, d.test_labels)):
    want_x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in written[split]])
    want_y = np.asarray([CIFAR10_CLASSES.index(p.parent.name) for p in written[split]], np.int32)
    assert_same_examples(x, y, want_x, want_y)
  assert not np.array_equal(np.sort(d.train_images.ravel()), np.sort(tx.ravel()))  # JPEG is lossy


def test_parent_folder_holding_one_layout_is_accepted(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  make_cifar10_binary(tmp_path / "data" / "cifar-10-batches-bin", (tx, ty), (sx, sy))
  (tmp_path / "data" / "notes.txt").write_text("unrelated")
  d = load_dataset("cifar10", str(tmp_path / "data"), cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)


def test_relative_path_is_from_the_working_directory(tmp_path, monkeypatch, tiny, cache):
  """A relative data_dir is relative to the working directory, and only to it: the library knows
  no project root or data location (configs name none either).

  Needs no shared data: the archive is written under tmp_path.
  """
  assert config_base.base_config().data.data_dir is None
  assert not hasattr(archives, "_PROJECT_ROOT")
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "src" / "cifar-10-batches-py", (tx, ty), (sx, sy))
  (tmp_path / "shared" / "data").mkdir(parents=True)
  archive = make_tar(src, tmp_path / "shared" / "data" / "cifar10-tiny.tar.gz")
  rel = os.path.join("..", "shared", "data", "cifar10-tiny.tar.gz")
  (tmp_path / "project").mkdir()
  monkeypatch.chdir(tmp_path / "project")
  assert archives.resolve_path(rel).samefile(archive)
  d = load_dataset("cifar10", rel, cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.test_labels, sy)
  # From elsewhere the same string names another place: an error that says which, and only it.
  cwd = tmp_path / "elsewhere" / "cwd"
  cwd.mkdir(parents=True)
  monkeypatch.chdir(cwd)
  with pytest.raises(DataError) as err:
    load_dataset("cifar10", rel, cache_dir=cache)
  msg = str(err.value)
  assert f"data.data_dir {rel!r} (looked for {os.path.abspath(cwd / rel)}) does not exist" in msg, msg
  assert str(tmp_path / "shared") not in msg and str(ROOT) not in msg, msg


# ------------------------------------------------------------------------------------------------
# What the data was read from: Dataset.data_format, kept by the cache; the JPEG copy is labelled.


def _png_or_jpeg_tree(root, tiny, jpeg_files):
  """A CIFAR-10 tree of PNG files, with the first ``jpeg_files`` training images saved as JPEG."""
  (tx, ty), (sx, sy) = tiny
  written = make_image_tree(root, {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES)
  for p in written["train"][:jpeg_files]:
    Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=75)
    p.unlink()
  return root


@pytest.mark.parametrize("layout,want", [
    ("cifar10-python", "cifar10-python"), ("cifar10-python.tar.gz", "cifar10-python"),
    ("cifar10-binary", "cifar10-binary"), ("cifar100-python.tar.gz", "cifar100-python"),
    ("png-tree", "image-folder-png"), ("jpeg-tree.tar.gz", "image-folder-jpeg"),
    ("png-tree-with-one-jpeg", "image-folder-jpeg")])
def test_data_format_names_what_was_read_and_survives_the_cache(tmp_path, tiny, cache, monkeypatch, layout, want):
  (tx, ty), (sx, sy) = tiny
  name = "cifar100" if layout.startswith("cifar100") else "cifar10"
  if layout.startswith("cifar10-python"):
    src = make_cifar10_python(tmp_path / "cifar-10-batches-py", (tx, ty), (sx, sy))
  elif layout == "cifar10-binary":
    src = make_cifar10_binary(tmp_path / "cifar-10-batches-bin", (tx, ty), (sx, sy))
  elif layout.startswith("cifar100"):
    src = make_cifar100_python(tmp_path / "cifar-100-python", random_split(3, N_TRAIN, 100),
                               random_split(4, N_TEST, 100))
  else:
    src = _png_or_jpeg_tree(tmp_path / "tree", tiny, {"png-tree": 0, "png-tree-with-one-jpeg": 1}.get(layout, N_TRAIN))
    if layout.startswith("jpeg"):
      for p in src.rglob("*.png"):
        Image.open(p).save(p.with_suffix(".jpg"), quality=75)
        p.unlink()
  if layout.endswith(".tar.gz"):
    src = make_tar(src, tmp_path / "packed.tar.gz")
  calls = count_decodes(monkeypatch)
  d = load_dataset(name, str(src), cache_dir=cache)
  again = load_dataset(name, str(src), cache_dir=cache)  # from the cache
  assert calls == [name]
  assert d.data_format == again.data_format == want and want in core.DATA_FORMATS
  assert repr(d).endswith(f"data_format={want!r})")
  if want == "image-folder-jpeg":
    assert d.data_note == "JPEG re-encoded, not the official CIFAR-10"
  else:
    assert d.data_note == ""


def test_data_format_of_digits_tfds_and_a_cifar100_jpeg_copy(tmp_path, cache):
  import tensorflow_datasets as tfds  # a dependency; TensorFlow is not needed

  assert load_dataset("digits").data_format == "digits"
  with tfds.testing.mock_data(num_examples=4):
    assert load_dataset("cifar10", source="tfds").data_format == "tfds"
  (tx, ty), (sx, sy) = random_split(5, 100, 100), random_split(6, 10, 100)
  ty = np.arange(100, dtype=np.int32)
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR100_CLASSES, "jpg")
  d = load_dataset("cifar100", str(tmp_path / "tree"), cache_dir=cache)
  assert (d.data_format, d.data_note) == ("image-folder-jpeg", "JPEG re-encoded, not the official CIFAR-100")
  assert core.Dataset("cifar10", tx, ty, tx[:0], ty[:0], sx, sy, 10, CIFAR10_CLASSES).data_format == "unknown"


@pytest.mark.slow
def test_training_on_a_jpeg_copy_says_so_in_the_log_and_every_epoch(tmp_path, tiny, capsys):
  """train.py records data_format in each epoch of metrics.jsonl (the report marks such rows) and
  notes the lossy copy once at the start. One tiny epoch of a small CNN (~10 s, most of it
  compilation): the end-to-end check that the label reaches metrics.jsonl."""
  import json

  from saat_jax.train import train_and_evaluate

  (tx, ty), (sx, sy) = tiny
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES, "jpg")
  c = config_base.saat_digits_config()
  c.update_from_flattened_dict({
      "data.name": "cifar10", "data.data_dir": str(tmp_path / "tree"), "data.cache_dir": str(tmp_path / "cache"),
      "model.normalization": "cifar10", "method": "natural", "num_epochs": 1, "batch_size": 10,
      "eval.steps": 1, "eval.batch_size": 10, "eval.train_subset": 10, "progress": False})
  records = train_and_evaluate(c, str(tmp_path / "run"))
  lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["data_format"] for r in records] == [r["data_format"] for r in lines] == ["image-folder-jpeg"]
  out = capsys.readouterr().out
  assert out.count("note: this cifar10 is JPEG re-encoded, not the official CIFAR-10") == 1, out


def test_training_passes_the_data_settings_to_load_dataset(monkeypatch):
  """data.download_url / download_md5 / cache_dir / source reach load_dataset (checked before any work)."""
  from saat_jax import train

  seen = {}

  class Stop(Exception):
    pass

  def spy(name, data_dir=None, **kwargs):
    seen.update(name=name, data_dir=data_dir, **kwargs)
    raise Stop

  monkeypatch.setattr(train, "load_dataset", spy)
  c = config_base.paper_config("at")
  c.update_from_flattened_dict({"data.download_url": "http://mirror/c.tar.gz", "data.download_md5": "0" * 32,
                                "data.cache_dir": "/cache", "data.source": "download"})
  with pytest.raises(Stop):
    train.train_and_evaluate(c, "/nonexistent/workdir")
  assert seen == dict(name="cifar10", data_dir=None, val_size=0, seed=0, cache_dir="/cache", source="download",
                      download_url="http://mirror/c.tar.gz", download_md5="0" * 32)


# ------------------------------------------------------------------------------------------------
# The real CIFAR-10 JPEG archive.


@pytest.mark.slow
@pytest.mark.data
def test_real_cifar10_jpeg_archive(tmp_path, cifar10_jpeg):
  cache = str(tmp_path / "cache")
  t0 = time.time()
  d = load_dataset("cifar10", str(cifar10_jpeg), cache_dir=cache)
  t_decode = time.time() - t0
  assert d.train_images.shape == (50000, 32, 32, 3) and d.train_images.dtype == np.uint8
  assert d.test_images.shape == (10000, 32, 32, 3) and d.test_images.dtype == np.uint8
  assert d.train_labels.dtype == np.int32 and d.class_names == CIFAR10_CLASSES
  assert (d.data_format, d.data_note) == ("image-folder-jpeg", "JPEG re-encoded, not the official CIFAR-10")
  np.testing.assert_array_equal(np.bincount(d.train_labels, minlength=10), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(d.test_labels, minlength=10), [1000] * 10)
  # A prefix is class-mixed (evaluate.py's num_test and train.py's num_train slice prefixes).
  assert len(np.unique(d.test_labels[:100])) == 10
  # Known files land with their class's canonical label.
  with tarfile.open(cifar10_jpeg) as tf:
    names = [n for n in tf.getnames() if n.endswith("cat/0000.jpg") or n.endswith("truck/0007.jpg")]
    assert len(names) == 4, names
    for n in names:
      want = np.asarray(Image.open(io.BytesIO(tf.extractfile(n).read())).convert("RGB"))
      split_x, split_y = (d.train_images, d.train_labels) if "train/" in n else (d.test_images, d.test_labels)
      hits = np.flatnonzero((split_x == want).all(axis=(1, 2, 3)))
      assert len(hits) >= 1, n
      assert set(split_y[hits]) == {CIFAR10_CLASSES.index(n.split("/")[-2])}, n
  # The second load comes from the cache: identical arrays, much faster.
  t0 = time.time()
  d2 = load_dataset("cifar10", str(cifar10_jpeg), cache_dir=cache)
  t_cached = time.time() - t0
  np.testing.assert_array_equal(d2.train_images, d.train_images)
  np.testing.assert_array_equal(d2.test_labels, d.test_labels)
  assert t_cached < max(3.0, t_decode / 3), (t_cached, t_decode)
  print(f"\nreal archive: decode {t_decode:.1f}s, cached load {t_cached:.2f}s")


# ------------------------------------------------------------------------------------------------
# digits.


def test_digits_split_is_fixed_and_stratified():
  from sklearn.datasets import load_digits

  d = load_dataset("digits", seed=0)
  assert d.train_images.shape == (1397, 8, 8, 1) and d.test_images.shape == (400, 8, 8, 1)
  assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int32
  assert d.num_classes == 10 and d.image_shape == (8, 8, 1)
  assert d.train_images.max() == 255 and d.train_images.min() == 0
  # Values 0..16 scaled to 0..255 by round(v * 255 / 16): only those 17 levels occur.
  levels = set(np.round(np.arange(17) * 255 / 16).astype(int))
  assert set(np.unique(d.test_images)) <= levels
  # Stratified: each class has its share of the 400 test images (within one).
  y = load_digits().target
  share = 400 * np.bincount(y) / len(y)
  assert np.all(np.abs(np.bincount(d.test_labels, minlength=10) - share) < 1)
  # Train and test partition the 1,797 images.
  want = np.round(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
  cat = np.concatenate
  got = multiset(cat([d.train_images, d.test_images]), cat([d.train_labels, d.test_labels]))
  assert got == multiset(want, y)
  # The split ignores the run's seed and data_dir; the whole load is deterministic.
  d2 = load_dataset("digits", "/does/not/matter", seed=7)
  np.testing.assert_array_equal(d.test_images, d2.test_images)
  np.testing.assert_array_equal(d.train_labels, d2.train_labels)


def test_val_split_is_a_seeded_partition_of_train():
  full = load_dataset("digits")
  a = load_dataset("digits", val_size=100, seed=1)
  b = load_dataset("digits", val_size=100, seed=1)
  c = load_dataset("digits", val_size=100, seed=2)
  assert a.val_images.shape == (100, 8, 8, 1) and a.train_images.shape == (1297, 8, 8, 1)
  np.testing.assert_array_equal(a.val_images, b.val_images)
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  assert not np.array_equal(a.val_images, c.val_images)
  # val and train partition the full training set (as multisets of (image, label)).
  cat = np.concatenate
  got = multiset(cat([a.train_images, a.val_images]), cat([a.train_labels, a.val_labels]))
  assert got == multiset(full.train_images, full.train_labels)
  np.testing.assert_array_equal(a.test_images, full.test_images)


# ------------------------------------------------------------------------------------------------
# TFDS (mocked: TensorFlow is not needed for the test).


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_source_with_mock_data(tmp_path, name, num_classes):
  import tensorflow_datasets as tfds  # a dependency; TensorFlow is not needed
  with tfds.testing.mock_data(num_examples=12):
    d = load_dataset(name, str(tmp_path / "tfds"), source="tfds", val_size=2, seed=0)
  assert d.train_images.shape == (10, 32, 32, 3) and d.val_images.shape == (2, 32, 32, 3)
  assert d.test_images.shape == (12, 32, 32, 3)
  assert d.train_images.dtype == np.uint8 and d.test_labels.dtype == np.int32
  assert d.num_classes == num_classes and d.class_names == core.CANONICAL_CLASSES[name]
  assert 0 <= d.test_labels.min() and d.test_labels.max() < num_classes
  assert d.test_images.std() > 0  # real (random) pixels came through


def test_tfds_without_tensorflow_says_what_to_install(monkeypatch):
  import tensorflow_datasets as tfds  # a dependency; TensorFlow is not needed

  def load(*a, **k):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

  def data_source(*a, **k):
    raise FileNotFoundError("no prepared cifar10 found")

  monkeypatch.setattr(tfds, "load", load)
  monkeypatch.setattr(tfds, "data_source", data_source)
  with pytest.raises(DataError, match=r"(?s)'tensorflow' is missing.*pip install tensorflow tensorflow-datasets`.*source=download"):
    load_dataset("cifar10", source="tfds")


def test_tfds_other_failure_becomes_data_error(monkeypatch):
  import tensorflow_datasets as tfds  # a dependency; TensorFlow is not needed

  def load(*a, **k):
    raise ConnectionError("network unreachable")

  monkeypatch.setattr(tfds, "load", load)
  with pytest.raises(DataError, match=r"(?s)network unreachable.*source=download.*local CIFAR archive"):
    load_dataset("cifar100", source="tfds")


# ------------------------------------------------------------------------------------------------
# The cache.


def count_decodes(monkeypatch):
  calls = []
  real = archives.decode_local

  def counting(*a, **k):
    calls.append(a[0])
    return real(*a, **k)

  monkeypatch.setattr(archives, "decode_local", counting)
  return calls


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_second_load_hits_the_cache(tmp_path, tiny, cache, monkeypatch, packed):
  (tx, ty), (sx, sy) = tiny
  src = make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES)
  src = tmp_path / "tree"
  if packed:
    src = make_tar(src, tmp_path / "tree.tar.gz", arcname="")
  calls = count_decodes(monkeypatch)
  a = load_dataset("cifar10", str(src), cache_dir=cache, val_size=4, seed=3)
  b = load_dataset("cifar10", str(src), cache_dir=cache, val_size=4, seed=3)
  assert calls == ["cifar10"]
  for f in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert getattr(a, f).dtype == getattr(b, f).dtype
  assert b.class_names == a.class_names
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind
  # A changed source is decoded again.
  time.sleep(0.01)
  if packed:
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
  else:
    Image.fromarray(tx[0]).save(next((tmp_path / "tree" / "train").rglob("*.png")))
    os.utime(next((tmp_path / "tree" / "train").rglob("*.png")), ns=(time.time_ns(), time.time_ns() + 10**9))
  load_dataset("cifar10", str(src), cache_dir=cache)
  assert calls == ["cifar10", "cifar10"]


def test_cache_dir_defaults_to_env(tmp_path, tiny, monkeypatch):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))
  monkeypatch.setenv("SAAT_JAX_CACHE", str(tmp_path / "envcache"))
  load_dataset("cifar10", str(src))
  assert len(list((tmp_path / "envcache").glob("cifar10-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-arrays", "old-format-name"])
def test_corrupt_cache_is_rebuilt(tmp_path, tiny, cache, monkeypatch, damage):
  (tx, ty), (sx, sy) = tiny
  src = make_tar(make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy)), tmp_path / "py.tar.gz")
  calls = count_decodes(monkeypatch)
  load_dataset("cifar10", str(src), cache_dir=cache)
  (file,) = Path(cache).glob("*.npz")
  if damage == "garbage":
    file.write_bytes(b"not an npz at all")
  elif damage == "truncated":
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
  elif damage == "wrong-arrays":
    np.savez(file, train_images=np.zeros(3), train_labels=np.zeros(3))
  else:  # as version 1 wrote it: the layout, not the data format
    with np.load(file) as z:
      arrays = dict(z)
    np.savez(file, **{**arrays, "format": np.asarray("image-folder")})
  d = load_dataset("cifar10", str(src), cache_dir=cache)
  assert calls == ["cifar10", "cifar10"]
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.test_labels, sy)
  load_dataset("cifar10", str(src), cache_dir=cache)  # the rebuilt file is good again
  assert calls == ["cifar10", "cifar10"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "killed"])
def test_interrupted_cache_write_leaves_nothing_behind(tmp_path, tiny, cache, monkeypatch, capsys, failure):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))

  def savez(f, **arrays):
    f.write(b"PK\x03\x04 half of an npz")
    raise failure

  monkeypatch.setattr(data_cache.np, "savez", savez)
  if isinstance(failure, OSError):
    d = load_dataset("cifar10", str(src), cache_dir=cache)
    assert "warning: could not write the data cache" in capsys.readouterr().err
    np.testing.assert_array_equal(d.train_images, tx)  # the load itself succeeds
  else:
    with pytest.raises(KeyboardInterrupt):
      load_dataset("cifar10", str(src), cache_dir=cache)
  assert os.listdir(cache) == []


@pytest.mark.slow
def test_two_processes_filling_the_cache_at_once_leave_one_valid_file(tmp_path, tiny, cache):
  """Both decode and write (neither finds a cache yet); each write goes to its own temporary file
  renamed into place, so the cache folder ends with one complete file that a third load reads."""
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))
  code = ("import sys, time; from saat_jax.data import load_dataset\n"
          "while time.time() < float(sys.argv[1]): time.sleep(0.005)\n"  # start together
          "d = load_dataset('cifar10', sys.argv[2], cache_dir=sys.argv[3]); print(int(d.train_images.sum()))")
  start = str(time.time() + 8)
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  procs = [subprocess.Popen([sys.executable, "-c", code, start, str(src), cache], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert {o.strip().splitlines()[-1] for o, _ in outs} == {str(int(tx.sum()))}  # after the data's log lines
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".npz"), files  # no temporary file left
  d = load_dataset("cifar10", str(src), cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tx)
  np.testing.assert_array_equal(d.test_labels, sy)


# ------------------------------------------------------------------------------------------------
# Bad input: a DataError that names the problem and the fix.


def test_unknown_dataset_name():
  with pytest.raises(DataError, match=r"(?s)'mnist'.*cifar10, cifar100, digits"):
    load_dataset("mnist", "/tmp")


def test_unknown_source():
  with pytest.raises(DataError, match="unknown data source 'kaggle'"):
    load_dataset("cifar10", "/tmp", source="kaggle")


def test_missing_path_names_it_and_the_other_sources(tmp_path):
  match = r"(?s)nope\.tar\.gz.*does not exist.*--config\.data\.data_dir.*--config\.data\.source=download"
  with pytest.raises(DataError, match=match) as err:
    load_dataset("cifar10", str(tmp_path / "nope.tar.gz"))
  assert "shared" not in str(err.value)  # the library names no location of this checkout


def test_no_data_dir_with_the_local_source():
  with pytest.raises(DataError, match=r"(?s)no data.data_dir given for cifar10 with --config\.data\.source=local.*"
                                      r"--config.data.source=download.*--config.data.source=tfds"):
    load_dataset("cifar10", source="local")


def test_zip_archive_is_refused(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))
  z = tmp_path / "cifar.zip"
  with zipfile.ZipFile(z, "w") as zf:
    for p in src.iterdir():
      zf.write(p, arcname=f"cifar-10-batches-py/{p.name}")
  with pytest.raises(DataError, match=r"(?s)cifar\.zip is a zip archive.*Unzip it"):
    load_dataset("cifar10", str(z), cache_dir=cache)
  assert not os.path.exists(cache)


def test_tar_of_unrelated_files(tmp_path, cache):
  (tmp_path / "stuff").mkdir()
  (tmp_path / "stuff" / "notes.txt").write_text("hello")
  (tmp_path / "stuff" / "model.ckpt").write_bytes(b"\0" * 100)
  archive = make_tar(tmp_path / "stuff", tmp_path / "stuff.tar.gz")
  match = r"(?s)no cifar10 data in a known layout.*notes\.txt.*cifar-10-batches-py"
  with pytest.raises(DataError, match=match):
    load_dataset("cifar10", str(archive), cache_dir=cache)
  with pytest.raises(DataError, match="no cifar10 data in a known layout"):
    load_dataset("cifar10", str(tmp_path / "stuff"), cache_dir=cache)


@pytest.mark.parametrize("kind", ["truncated-gzip", "gzip-of-non-tar", "random-bytes"])
def test_broken_archives(tmp_path, tiny, cache, kind):
  (tx, ty), (sx, sy) = tiny
  bad = tmp_path / "cifar10.tar.gz"
  if kind == "truncated-gzip":
    make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES, "jpg")
    good = make_tar(tmp_path / "tree", tmp_path / "good.tar.gz")
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    match = r"(?s)cifar10\.tar\.gz.*truncated or corrupt.*download it again"
  elif kind == "gzip-of-non-tar":
    bad.write_bytes(gzip.compress(b"just some text, not a tar archive" * 50))
    match = r"(?s)cifar10\.tar\.gz.*not a tar archive inside"
  else:
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    match = r"(?s)cifar10\.tar\.gz.*not a tar archive"
  with pytest.raises(DataError, match=match):
    load_dataset("cifar10", str(bad), cache_dir=cache)
  assert not os.path.exists(cache) or os.listdir(cache) == []


# A damaged archive of the right layout (issue 18): a corrupt-archive error naming where reading
# stopped, never "no cifar10 data in a known layout" or silently wrong pixels.

OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"  # cifar-10-python.tar.gz, as published


def official_tar(tmp_path, tiny):
  """The uncompressed tar of a tiny cifar-10-batches-py and its members (in archive order)."""
  src = make_cifar10_python(tmp_path / "src" / "cifar-10-batches-py", *tiny)
  tar = make_tar(src, tmp_path / "official.tar", mode="w")
  with tarfile.open(tar) as tf:
    return tar.read_bytes(), tf.getmembers()


def load_corrupt(path, cache):
  with pytest.raises(core.CorruptArchiveError) as err:
    load_dataset("cifar10", str(path), cache_dir=cache)
  msg = str(err.value)
  assert "known layout" not in msg and "\n" not in msg, msg  # one line: the CLI prints it as one
  assert not os.path.exists(cache) or os.listdir(cache) == []  # nothing cached
  return msg


def md5_advice(path):
  return f"download it again: cifar-10-python.tar.gz should have MD5 {OFFICIAL_MD5}, this file has " \
         f"{hashlib.md5(path.read_bytes()).hexdigest()}."


def test_a_garbled_tar_header_names_the_member_before_it(tmp_path, tiny, cache):
  data, members = official_tar(tmp_path, tiny)
  victim = next(m for m in members if m.name.endswith("data_batch_3"))
  garbled = bytearray(data)
  garbled[victim.offset:victim.offset + 256] = np.random.default_rng(0).integers(0, 256, 256, np.uint8).tobytes()
  before = members[members.index(victim) - 1].name
  for packed in ("tar", "gz"):  # the header checks do not depend on the compression
    path = tmp_path / packed / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(bytes(garbled)) if packed == "gz" else bytes(garbled))
    msg = load_corrupt(path, cache)
    assert f"{path} is truncated or corrupt: a tar header is garbled (" in msg, msg
    assert f"reading stopped at byte {victim.offset} of the unpacked tar, after member {before!r}" in msg, msg
    assert msg.endswith(md5_advice(path)), msg


def test_one_flipped_byte_fails_the_gzip_crc(tmp_path, tiny, cache):
  """Before, the listing stopped at tar's end marker, so gzip's CRC was never checked: a flipped
  pixel byte loaded without an error."""
  data, members = official_tar(tmp_path, tiny)
  packed = bytearray(gzip.compress(data, compresslevel=0, mtime=0))  # stored blocks: byte i of the tar
  victim = next(m for m in members if m.name.endswith("data_batch_2"))  # sits at 10 + 5 + i in the file
  assert victim.offset_data + 1000 < 65535
  packed[10 + 5 + victim.offset_data + 1000] ^= 0x01
  path = tmp_path / "cifar-10-python.tar.gz"
  path.write_bytes(bytes(packed))
  msg = load_corrupt(path, cache)
  assert "its data fails gzip's CRC check: some bytes are damaged (BadGzipFile: CRC check failed" in msg, msg
  assert f"reading stopped at the end of the gzip stream, after all {len(members)} members" in msg, msg
  assert msg.endswith(md5_advice(path)), msg


@pytest.mark.parametrize("packed", ["tar.gz", "tar"])
def test_a_truncated_archive_names_where_it_ends(tmp_path, tiny, cache, packed):
  data, members = official_tar(tmp_path, tiny)
  victim = next(m for m in members if m.name.endswith("data_batch_4"))
  cut = victim.offset_data + victim.size // 2  # in the middle of data_batch_4
  path = tmp_path / "cifar-10-python.tar.gz"
  path.write_bytes(gzip.compress(data[:cut]) if packed == "tar.gz" else data[:cut])
  msg = load_corrupt(path, cache)
  assert "its data ends early: the file is cut off or garbled" in msg, msg
  assert f"after member {victim.name!r}" in msg and msg.endswith(md5_advice(path)), msg


def test_a_tar_without_its_end_marker_is_cut_off(tmp_path, tiny, cache):
  """Cut exactly between two members: tarfile alone would list the first ones as the whole archive."""
  data, members = official_tar(tmp_path, tiny)
  victim = next(m for m in members if m.name.endswith("data_batch_5"))
  path = tmp_path / "batches.tar"  # not an official name: no MD5 to compare
  path.write_bytes(data[:victim.offset])
  msg = load_corrupt(path, cache)
  assert "its tar data ends without tar's end-of-archive marker: the file is cut off" in msg, msg
  assert f"reading stopped at byte {victim.offset} of the unpacked tar" in msg, msg
  assert msg.endswith("download it again (or pass the unpacked folder)."), msg


def test_garbled_compressed_bytes_in_the_middle(tmp_path, tiny, cache):
  """As issue 18 found it: 256 bytes of the official-format .tar.gz overwritten in the middle."""
  (tx, ty), (sx, sy) = tiny
  archive = cifar_archive.official_archive(tmp_path / "good" / "cifar-10-python.tar.gz", "cifar10",
                                           (tx // 32 * 32, ty), (sx // 32 * 32, sy))  # compressible pixels
  data = bytearray(archive.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 256] = np.random.default_rng(1).integers(0, 256, 256, np.uint8).tobytes()
  path = tmp_path / "cifar-10-python.tar.gz"
  path.write_bytes(bytes(data))
  msg = load_corrupt(path, cache)
  assert f"{path} is truncated or corrupt: " in msg and "reading stopped at" in msg, msg
  assert msg.endswith(md5_advice(path)), msg


def test_bytes_after_a_whole_gzip_stream_are_ignored_as_gzip_does(tmp_path, tiny, cache):
  """Padding after the last gzip member (``gzip -d``: "trailing garbage ignored") is no damage."""
  data, _ = official_tar(tmp_path, tiny)
  path = tmp_path / "cifar-10-python.tar.gz"
  path.write_bytes(gzip.compress(data) + b"\0" * 300 + b"trailing bytes of a padded copy")
  d = load_dataset("cifar10", str(path), cache_dir=cache)
  np.testing.assert_array_equal(d.train_images, tiny[0][0])


def test_a_damaged_cached_download_says_to_delete_it(tmp_path, cifar_server):
  server, served = cifar_server
  s = served["cifar10"]
  cache = str(tmp_path / "cache")
  load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)
  for f in Path(cache).glob("*.npz"):
    f.unlink()  # the decoded arrays gone: the archive is read again
  kept = next((Path(cache) / "downloads").iterdir())
  kept.write_bytes(kept.read_bytes()[:-100])
  with pytest.raises(core.CorruptArchiveError) as err:
    load_dataset("cifar10", cache_dir=cache, download_url=s.url, download_md5=s.md5)
  msg = str(err.value)
  assert f"should have MD5 {s.md5}, this file has {hashlib.md5(kept.read_bytes()).hexdigest()}" in msg, msg
  assert msg.endswith(f"It is the cached download: delete {kept} and run again to download it again."), msg
  assert server.requests == ["/cifar-10-python.tar.gz"]


@pytest.mark.data
def test_a_garbled_copy_of_the_real_archive(tmp_path, cifar10_jpeg, cache):
  data = bytearray(cifar10_jpeg.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 256] = np.random.default_rng(2).integers(0, 256, 256, np.uint8).tobytes()
  path = tmp_path / cifar10_jpeg.name
  path.write_bytes(bytes(data))
  msg = load_corrupt(path, cache)
  stopped_after_a_jpeg = r"reading stopped at byte \d+ of the unpacked tar, after member '(train|test)/\w+/\d{4}\.jpg'"
  assert re.search(stopped_after_a_jpeg, msg) or "reading stopped at the end of the gzip stream" in msg, msg
  assert msg.endswith("download it again (or pass the unpacked folder)."), msg


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_corrupt_jpeg_is_named(tmp_path, tiny, cache, packed):
  (tx, ty), (sx, sy) = tiny
  written = make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES, "jpg")
  victim = written["train"][7]
  victim.write_bytes(victim.read_bytes()[:40])  # a truncated JPEG
  rel = f"train/{victim.parent.name}/{victim.name}"
  src = make_tar(tmp_path / "tree", tmp_path / "tree.tar.gz") if packed else tmp_path / "tree"
  with pytest.raises(DataError, match=rf"(?s)cannot decode image.*{rel}.*replace or delete it"):
    load_dataset("cifar10", str(src), cache_dir=cache)
  assert not os.path.exists(cache) or os.listdir(cache) == []


def test_wrong_image_size_is_named(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  written = make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES)
  victim = written["test"][3]
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(victim)
  with pytest.raises(DataError, match=rf"(?s){victim.name}.*28x28.*32x32 RGB"):
    load_dataset("cifar10", str(tmp_path / "tree"), cache_dir=cache)


def test_cifar100_given_a_ten_class_tree(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  make_image_tree(tmp_path / "tree", {"train": (tx, ty), "test": (sx, sy)}, CIFAR10_CLASSES)
  with pytest.raises(DataError, match=r"(?s)cifar100 has 100 classes.*10 class folders"):
    load_dataset("cifar100", str(tmp_path / "tree"), cache_dir=cache)


def test_cifar100_given_cifar10_archive(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "cifar-10-batches-py", (tx, ty), (sx, sy))
  with pytest.raises(DataError, match=r"(?s)cifar10-python.*not cifar100.*set the data set name to cifar10"):
    load_dataset("cifar100", str(src), cache_dir=cache)


def test_two_layouts_in_one_folder_is_ambiguous(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  make_cifar10_python(tmp_path / "data" / "cifar-10-batches-py", (tx, ty), (sx, sy))
  make_cifar10_binary(tmp_path / "data" / "cifar-10-batches-bin", (tx, ty), (sx, sy))
  with pytest.raises(DataError, match=r"(?s)several cifar10 data sets.*point data_dir at one"):
    load_dataset("cifar10", str(tmp_path / "data"), cache_dir=cache)
  # Naming one of them works.
  d = load_dataset("cifar10", str(tmp_path / "data" / "cifar-10-batches-bin"), cache_dir=cache)
  np.testing.assert_array_equal(d.train_labels, ty)


def test_incomplete_archive_names_the_missing_file(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_binary(tmp_path / "cifar-10-batches-bin", (tx, ty), (sx, sy))
  (src / "data_batch_4.bin").unlink()
  with pytest.raises(DataError, match=r"(?s)lacks .*data_batch_4\.bin.*incomplete"):
    load_dataset("cifar10", str(src), cache_dir=cache)
  (src / "data_batch_4.bin").write_bytes(b"\0" * 100)  # not a whole number of records
  with pytest.raises(DataError, match=r"(?s)data_batch_4\.bin.*3073-byte"):
    load_dataset("cifar10", str(src), cache_dir=cache)


def test_malicious_pickle_is_not_executed(tmp_path, tiny, cache):
  (tx, ty), (sx, sy) = tiny
  src = make_cifar10_python(tmp_path / "py", (tx, ty), (sx, sy))
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.mkdir, (str(marker),))

  (src / "data_batch_2").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
  with pytest.raises(DataError, match=r"(?s)data_batch_2.*not a readable CIFAR python batch"):
    load_dataset("cifar10", str(src), cache_dir=cache)
  assert not marker.exists()


@pytest.mark.parametrize("val_size", [1397, 5000, -1])
def test_impossible_val_size(val_size):
  with pytest.raises(DataError, match="val_size"):
    load_dataset("digits", val_size=val_size)
