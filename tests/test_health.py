"""Long-run health (issue: no recompilation after the first epoch, flat host memory, the same metrics
from the same seed run after run). The 30-epoch figures are benchmarks/health.py's."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from saat_jax import health

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import digits_config

TINY = {"data.num_train": 128, "batch_size": 64, "eval.num_test": 64, "eval.batch_size": 64,
        "eval.train_subset": 64, "progress": False, "model.kwargs": {"width": 4}, "num_epochs": 3}
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


def test_host_rss_is_this_process_memory():
  before = health.host_rss_mb()
  big = jnp.ones((64, 2**20), jnp.float32).block_until_ready()  # 256 MiB
  after = health.host_rss_mb()
  assert 100 < before and after - before > 200
  del big


def run(tmp_path, name):
  from saat_jax.train import train_and_evaluate
  c = digits_config("saat_up")
  c.update_from_flattened_dict(TINY)
  train_and_evaluate(c, str(tmp_path / name))
  return [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_no_recompilation_after_the_first_epoch_and_the_same_metrics_run_after_run(tmp_path):
  """Every later epoch compiles nothing (a shape or static argument changing per step would show
  here), and a second run of the same config and seed logs the same numbers bit for bit."""
  first = run(tmp_path, "a")
  assert first[0]["compiles"] > 0
  assert [r["compiles"] for r in first[1:]] == [0, 0]
  assert all(r["host_rss_mb"] > 0 for r in first)
  second = run(tmp_path, "b")
  strip = lambda recs: [{k: v for k, v in r.items() if k not in MACHINE_DEPENDENT} for r in recs]
  assert strip(first) == strip(second)
  assert len(strip(first)[0]) > 15  # losses, SA-PGD statistics and accuracies are compared
