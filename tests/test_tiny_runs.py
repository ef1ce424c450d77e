"""The shared finished runs of the tests (``saat_jax.testing.tiny.TinyRuns``): several processes
(the xdist workers) share one root, and each run is trained once."""

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from saat_jax.testing import tiny

pytestmark = pytest.mark.skipif(not tiny.CAN_SHARE, reason="no fcntl: each process keeps its own runs")


def _fake_training(calls):
  def train_and_evaluate(config, workdir):
    calls.append((config.method, workdir))
    Path(workdir).mkdir(parents=True)
    (Path(workdir) / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "method": config.method}) + "\n")
    return []
  return train_and_evaluate


def test_a_run_is_trained_once_for_every_process_sharing_the_root(tmp_path, monkeypatch):
  from saat_jax import train

  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
  first, second = tiny.TinyRuns(tmp_path / "runs"), tiny.TinyRuns(tmp_path / "runs")
  assert first["at"] == second["at"] == tmp_path / "runs" / "at"
  assert calls == [("at", str(tmp_path / "runs" / "at"))]  # the second found it done
  assert second.records("at") == [{"epoch": 0, "method": "at"}] and calls[1:] == []
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["at"]  # the locks live beside the runs
  (tmp_path / "runs" / "at" / "metrics.jsonl").write_text("changed\n")
  assert first.changed() == second.changed() == ["at/metrics.jsonl"]


def test_a_run_left_half_written_is_trained_again(tmp_path, monkeypatch):
  from saat_jax import train

  (tmp_path / "runs" / "at").mkdir(parents=True)
  (tmp_path / "runs" / "at" / "partial").write_text("a process died here")  # no at.done beside its lock
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
  runs = tiny.TinyRuns(tmp_path / "runs")
  assert sorted(p.name for p in runs["at"].iterdir()) == ["metrics.jsonl"] and len(calls) == 1


def _hold_and_train(root, started, release):
  import fcntl

  locks = Path(root).with_name(Path(root).name + ".locks")
  locks.mkdir(parents=True, exist_ok=True)
  with open(locks / "at", "a") as lock:  # another process training "at"
    fcntl.flock(lock, fcntl.LOCK_EX)
    started.set()
    release.wait(30)
    (Path(root) / "at").mkdir(parents=True)
    (Path(root) / "at" / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (locks / "at.done").touch()


@pytest.mark.slow  # a spawned Python process: 4 s alone, 9 s on the loaded CI machine
def test_a_process_waits_for_the_one_training_the_run(tmp_path, monkeypatch):
  from saat_jax import train

  ctx = multiprocessing.get_context("spawn")
  started, release = ctx.Event(), ctx.Event()
  other = ctx.Process(target=_hold_and_train, args=(str(tmp_path / "runs"), started, release))
  other.start()
  try:
    assert started.wait(60)
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    threading.Timer(0.5, release.set).start()  # the other process finishes while this one waits on the lock
    assert tiny.TinyRuns(tmp_path / "runs").records("at") == [{"epoch": 0}]
    assert calls == []  # read, not trained again
  finally:
    release.set()
    other.join(30)
    other.kill()
