"""Fixtures shared by the tests (fixtures only).

The tests name their data explicitly, never through a config's default: the real CIFAR-10 copy of
this checkout (``cifar10_jpeg``: ``../shared/data/cifar10-jpeg.tar.gz`` beside the project root, or
``$SAAT_JAX_TEST_DATA/cifar10-jpeg.tar.gz``; the test is skipped when it is absent; mark such tests
``data``), and tiny archives in the official format served over HTTP on 127.0.0.1
(``cifar_server``, :mod:`saat_jax.testing.cifar_archive`) for the download path.

The whole run shares one persistent XLA compilation cache (``JAX_COMPILATION_CACHE_DIR``, a fresh
temporary folder set here before JAX starts, removed at the end): the xdist workers and every
process a test starts (two-process runs, the CLI, the notebook, the fresh clone) inherit it, so a
program compiled once -- the tiny digits step, its evaluation -- is loaded, not compiled again.
It changes no result (a cached executable is the one XLA compiled), only compile time; a test about
compilation itself turns it off for its processes (:func:`saat_jax.testing.processes.without_compile_cache`). Set
``SAAT_JAX_TEST_COMPILE_CACHE=0`` to run without it, or set ``JAX_COMPILATION_CACHE_DIR`` to keep one.

The tests compile with XLA:CPU's LLVM optimisations off (``XLA_FLAGS=--xla_backend_optimization_level=0``,
inherited like the cache, :func:`saat_jax.testing.processes.xla_flags`): over a third of the suite's
CPU time was LLVM optimising programs that then run for a fraction of a second, while the large
convolutions and matrix products call the same precompiled Eigen kernels either way. On the 2-core
development machine the whole suite went from 27:42 to 17:43 (3262 -> 2076 s of the two workers),
the quick check from 2:52 to 2:09; the tests dominated by running, not compiling (10 epochs of
digits training, the PyTorch references) took as long as before. It changes results in their last
bits (tests/test_parallel.py's one-step parameters by up to 7e-9), which no test depends on: every
comparison is between programs compiled alike, or has a tolerance. The fresh-clone test runs as a
stranger would, with XLA's default settings. ``SAAT_JAX_TEST_FAST_COMPILE=0`` keeps the defaults
everywhere; a level already named in ``XLA_FLAGS`` is kept.
"""

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

_OWN_CACHE = None
if os.environ.get("SAAT_JAX_TEST_COMPILE_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # Set in the pytest process before any test module imports JAX (xdist workers start later and
  # inherit it). Programs that take 0.1 s or more to compile are cached, whatever their size. No
  # maximum size: with one, JAX locks the folder and lists all of it on every write, which costs
  # more than it saves with thousands of entries. Two processes writing the same entry at once can
  # at worst let a third read it half-written, which JAX warns of and then compiles itself.
  _OWN_CACHE = tempfile.mkdtemp(prefix="saat_jax_test_xla_cache_")
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _OWN_CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})


from saat_jax.testing.processes import OPT_LEVEL_FLAG  # noqa: E402 (imports no JAX)

if os.environ.get("SAAT_JAX_TEST_FAST_COMPILE", "1") != "0" and OPT_LEVEL_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL_FLAG}=0".strip()


def pytest_unconfigure(config):
  if _OWN_CACHE is not None and not os.environ.get("PYTEST_XDIST_WORKER"):  # the process that made it
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

import numpy as np
import pytest

from saat_jax.testing import cifar_archive, durations
from saat_jax.testing import tiny

ROOT = Path(__file__).resolve().parents[1]

# Each test file's duration in the last full run (.ci/run writes it): the files run longest first,
# so that the two xdist workers finish together (saat_jax/testing/durations.py says why).
DURATIONS = ROOT / ".ci" / "test-durations.json"
# .ci/run sets this to DURATIONS: the run then records its files' durations there.
RECORD_ENV = "SAAT_JAX_TEST_DURATIONS"
_tests: dict = {}  # seconds by test id
_slow: dict = {}  # whether each test id carries the slow mark


def pytest_configure(config):
  # xdist's loadfile scheduler would otherwise reorder the files by their number of tests.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
  items[:] = durations.longest_first(items, [durations.file_of(i.nodeid) for i in items], durations.read(DURATIONS))


def pytest_runtest_logreport(report):
  if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller (it sees every worker's reports), or a plain run
    _tests[report.nodeid] = _tests.get(report.nodeid, 0.0) + report.duration
    _slow[report.nodeid] = "slow" in report.keywords


def pytest_sessionfinish(session, exitstatus):
  if os.environ.get(RECORD_ENV) and _tests:  # _tests is empty on a worker, which records nothing
    durations.write(Path(os.environ[RECORD_ENV]), durations.by_file(_tests), ROOT)


def pytest_terminal_summary(terminalreporter):
  over = durations.unmarked_slow(_tests, _slow)
  if over:  # empty on a worker, which records nothing
    terminalreporter.section(f"tests over {durations.SLOW_S:g} s not marked slow")
    terminalreporter.write_line("The quick check (-m 'not slow') runs these: mark them @pytest.mark.slow or make them "
                                "faster (saat_jax/testing/durations.py).")
    for test, s in over:
      terminalreporter.write_line(f"{s:7.1f}s {test}")


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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
  """Finished tiny digits runs (:class:`saat_jax.testing.tiny.TinyRuns`): ``tiny_runs["saat_up"]``
  is the work dir of a 3-epoch run, trained once per session (by the first xdist worker that asks
  for it; the others wait and read it). Read only:
  copy a run (``shutil.copytree``) before writing into it; the end of the session fails a test run
  that changed one."""
  # One root for the session's workers (xdist's basetemp is <session folder>/popen-gwN): each run is
  # trained by the first worker that needs it, and read by the others.
  base = tmp_path_factory.getbasetemp()
  shared = os.environ.get("PYTEST_XDIST_WORKER") and tiny.CAN_SHARE
  runs = tiny.TinyRuns(base.parent / "tiny_runs" if shared else base / "tiny_runs")
  yield runs
  changed = runs.changed()
  assert not changed, f"a test wrote into the shared runs of the tiny_runs fixture (copy them first): {changed}"
