"""Several processes of this project started together, for the tests of many-process runs.

:class:`Procs` starts commands at once (each with its own forced number of CPU devices, the
checkout on ``PYTHONPATH``), keeps their output in files and kills them all when they outlive a
timeout, so a hang fails a test instead of stalling CI. :func:`free_port` gives a coordinator
port; :func:`has_cpu_collectives` says whether this jaxlib can run one computation over several
CPU processes (gloo).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding saat_jax/ (a checkout's root)
TIMEOUT_S = 240  # for one group of processes


def has_cpu_collectives() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# The settings of JAX's persistent compilation cache (tests/conftest.py turns it on for a test run).
COMPILE_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_COMPILATION_CACHE_MAX_SIZE")


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# XLA:CPU's LLVM optimisation level: tests/conftest.py sets it to 0 for the test run.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"


def without_compile_cache(env: dict) -> dict:
  """``env`` without the persistent compilation cache, for a process that must compile every
  program itself (a test of compilation: is compiling twice bit-identical?)."""
  return {k: v for k, v in env.items() if k not in COMPILE_CACHE_ENV}


def xla_flags(devices: int | None = None) -> str:
  """This process's ``XLA_FLAGS`` (the tests' compile settings, tests/conftest.py) without its forced
  device count, and with ``devices`` CPU devices when given: for a process the test starts."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  if devices is not None:
    flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
  return " ".join(flags)


def env(devices: int) -> dict:
  """The environment of a process with ``devices`` CPU devices that imports this checkout."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu",
              PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Procs:
  """Processes started together, their output in files; ``wait`` kills them all on a timeout."""

  def __init__(self, logdir: Path, commands: list[list[str]], devices: int = 2):
    logdir.mkdir(parents=True, exist_ok=True)
    self.logs = [(logdir / f"p{i}.out", logdir / f"p{i}.err") for i in range(len(commands))]
    self.procs = []
    for cmd, (out, err) in zip(commands, self.logs):
      with open(out, "w") as o, open(err, "w") as e:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(devices), stdout=o, stderr=e))

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def text(self, i: int) -> tuple[str, str]:
    return self.logs[i][0].read_text(), self.logs[i][1].read_text()

  def wait(self, timeout: float = TIMEOUT_S) -> list[int]:
    """The exit codes; after ``timeout`` seconds every process is killed and AssertionError raised
    with their output."""
    deadline = time.monotonic() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f"processes still running after {timeout} s, killed:\n" + self.dump()) from None
    return [p.returncode for p in self.procs]

  def dump(self) -> str:
    return "\n".join(f"--- process {i} (rc {p.returncode}):\n{o[-3000:]}\n{e[-3000:]}"
                     for i, p in enumerate(self.procs) for o, e in [self.text(i)])
