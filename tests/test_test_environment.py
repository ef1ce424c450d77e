"""The tests' own environment: the compile settings of tests/conftest.py reach the processes they start."""

import os

from saat_jax.testing import processes


def test_started_processes_keep_the_compile_settings_and_get_their_own_device_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8 --x=1")
  assert processes.xla_flags(2) == "--xla_backend_optimization_level=0 --x=1 --xla_force_host_platform_device_count=2"
  assert processes.xla_flags() == "--xla_backend_optimization_level=0 --x=1"
  assert processes.env(4)["XLA_FLAGS"] == "--xla_backend_optimization_level=0 --x=1 --xla_force_host_platform_device_count=4"
  monkeypatch.delenv("XLA_FLAGS")
  assert processes.xla_flags(3) == "--xla_force_host_platform_device_count=3" and processes.xla_flags() == ""


def test_the_run_compiles_with_one_llvm_optimisation_level():
  """tests/conftest.py adds level 0 unless told not to (SAAT_JAX_TEST_FAST_COMPILE=0) or the
  environment already names a level, which it keeps."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  levels = [f for f in flags if f.startswith(processes.OPT_LEVEL_FLAG + "=")]
  assert len(levels) <= 1, flags
  if os.environ.get("SAAT_JAX_TEST_FAST_COMPILE", "1") != "0":
    assert len(levels) == 1, flags
  # ... and so does a process started with processes.env (the device counts are checked where they
  # matter: tests/test_parallel.py and tests/test_distributed.py ask JAX how many devices it sees).
  assert processes.env(3)["XLA_FLAGS"].split() == [
      f for f in flags if not f.startswith(processes.DEVICE_COUNT_FLAG)] + ["--xla_force_host_platform_device_count=3"]
