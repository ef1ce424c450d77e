"""Long-run health (issue: no recompilation after the first epoch, flat host memory, the same metrics
from the same seed run after run). The 30-epoch figures are benchmarks/health.py's."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from saat_jax import health

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.testing.tiny import TinyRuns

from saat_jax.health import MACHINE_DEPENDENT_KEYS as MACHINE_DEPENDENT  # noqa: E402


def test_compile_counter_counts_backend_compilations_only_while_started():
  f = jax.jit(lambda x: jnp.sin(x) * 3)
  x3, x4 = jnp.ones(3), jnp.ones(4)
  with health.CompileCounter() as c:
    f(x3)
    assert c.count == 1
    f(x3)  # cached
    assert c.count == 1
    f(x4)  # a new shape compiles again
    assert c.count == 2
  f(jnp.ones(5))
  assert c.count == 2


_LOAD_TWICE = """
import sys
import jax, jax.numpy as jnp
from saat_jax import health
hits = []
jax.monitoring.register_event_listener(lambda e, **kw: hits.append(e) if e.endswith("/cache_hits") else None)
with health.CompileCounter() as c:
  jax.jit(lambda x: jnp.cos(x) * 7 + 1)(jnp.ones(11)).block_until_ready()
print(c.count, len(hits))
"""


@pytest.mark.slow
def test_compile_counter_counts_a_program_loaded_from_the_persistent_cache(tmp_path):
  """With JAX_COMPILATION_CACHE_DIR set, a second process loads the programs instead of compiling
  them, and they count the same: a run's ``compiles`` shows its first epoch's programs (and any
  recompilation) with the cache on as off (the tests run with it on)."""
  import os
  import subprocess
  import sys

  from saat_jax.testing.processes import ROOT as CHECKOUT, without_compile_cache
  env = dict(without_compile_cache(os.environ), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "c"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             PYTHONPATH=str(CHECKOUT))
  (count1, hits1), (count2, hits2) = [
      map(int, subprocess.run([sys.executable, "-c", _LOAD_TWICE], env=env, capture_output=True, text=True,
                              check=True).stdout.split()[-2:]) for _ in range(2)]
  assert hits1 == 0 and hits2 > 0, "the second process did not load from the cache"
  assert count1 == count2 >= 1


def test_host_rss_is_this_process_memory():
  before = health.host_rss_mb()
  big = jnp.ones((64, 2**20), jnp.float32).block_until_ready()  # 256 MiB
  after = health.host_rss_mb()
  assert 100 < before and after - before > 200
  del big


def records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_no_recompilation_after_the_first_epoch_and_the_same_metrics_run_after_run(tiny_runs, tmp_path):
  """Every later epoch compiles nothing (a shape or static argument changing per step would show
  here), and a second run of the same config and seed logs the same numbers bit for bit."""
  from saat_jax.train import train_and_evaluate

  first = tiny_runs.records("saat_up")
  assert first[0]["compiles"] > 0
  assert [r["compiles"] for r in first[1:]] == [0, 0]
  assert all(r["host_rss_mb"] > 0 for r in first)
  train_and_evaluate(TinyRuns.config("saat_up"), str(tmp_path / "again"))
  second = records(tmp_path / "again")
  strip = lambda recs: [{k: v for k, v in r.items() if k not in MACHINE_DEPENDENT} for r in recs]
  assert strip(first) == strip(second)
  assert len(strip(first)[0]) > 15  # losses, SA-PGD statistics and accuracies are compared
