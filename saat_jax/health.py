"""Long-run health of a training process: XLA compilations and host memory, logged every epoch.

A run that recompiles after its first epoch (a shape, dtype or static argument that changes from
step to step) or whose host memory grows epoch after epoch (arrays kept alive by a Python list)
works, but slowly or until it is killed; both are cheap to see in ``metrics.jsonl`` as
``compiles`` (XLA backend compilations during the epoch, evaluation included; with JAX's
persistent compilation cache on, ``JAX_COMPILATION_CACHE_DIR``, a program loaded from it counts as
well, since JAX times the load as the compilation: a recompilation is seen either way) and
``host_rss_mb`` (the resident set size at the epoch's end).
"""

from __future__ import annotations

import os

import jax

# The keys of a metrics record that measure the machine rather than the training (time, compilations,
# memory): equal runs differ only in these.
MACHINE_DEPENDENT_KEYS = ("train_time_s", "eval_time_s", "compiles", "host_rss_mb")

# JAX records one event of this name per XLA backend compilation (jax/_src/dispatch.py), around
# compiler.compile_or_get_cached: a load from the persistent compilation cache records it too.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts XLA backend compilations in this process between ``start()`` and ``stop()`` (or in a
  ``with`` block)."""

  def __init__(self):
    self.count = 0

  def _listener(self, event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs, kwargs
    if event == BACKEND_COMPILE_EVENT:
      self.count += 1

  def start(self) -> "CompileCounter":
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def stop(self) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listener)

  def __enter__(self) -> "CompileCounter":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def host_rss_mb() -> float:
  """Resident set size of this process in MiB (Linux /proc; elsewhere the peak from getrusage)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
