"""The work dir of a run (``saat_jax.workdir.RunDir``): a refusal (a locked work dir, a changed
config, another model) leaves every file of it byte for byte as it was; the resume decision of a work
dir whose metrics.jsonl lost a line restores that record from the checkpoint; the lock is released
on every way out; and the one metrics.jsonl reader agrees with itself: every line its lenient reading
(a resume, which repairs) leaves out, its strict reading (the report) refuses."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from saat_jax import checkpointing, metric_writer, train
from saat_jax.checkpointing import CheckpointError, RunLock, WorkdirLocked
from saat_jax.testing.tiny import tiny_config
from saat_jax.data import load_dataset
from saat_jax.report.runs import ReportError, read_metrics as report_read_metrics
from saat_jax.run_state import model_from_spec, model_spec, run_keys
from saat_jax.workdir import ConfigChangeError, Resume, RunDir

def config(**over):
  """Natural training of the tests' tiny run (2 steps an epoch), for 2 epochs."""
  return tiny_config("natural", {"num_epochs": 2, **over})


def tree_hashes(root) -> dict:
  """``{relative path: sha256}`` of every file under ``root`` (directories by their presence)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    out[rel + "/"] = ""
    for name in filenames:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 2-epoch run, to copy."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  history = train.train_and_evaluate(config(), str(workdir))
  assert [r["epoch"] for r in history] == [0, 1]
  return workdir


def copy_of(trained, tmp_path) -> Path:
  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


@pytest.mark.parametrize("refusal", ["locked", "config", "model"])
def test_a_refusal_leaves_the_work_dir_byte_identical(trained, tmp_path, refusal):
  workdir = copy_of(trained, tmp_path)
  over, error, match = {"num_epochs": 3}, None, None
  holder = None
  if refusal == "locked":
    holder = RunLock(str(workdir)).acquire()  # another run holds it
    error, match = WorkdirLocked, "is in use by"
  elif refusal == "config":
    over["optim.lr"] = 0.5
    error, match = ConfigChangeError, r"optim\.lr: 0\.05 -> 0\.5"
  else:
    over["model.kwargs"] = {"width": 8}
    error, match = CheckpointError, "holds a checkpoint of model"
  before = tree_hashes(workdir)
  try:
    with pytest.raises(error, match=match):
      train.train_and_evaluate(config(**over), str(workdir))
    assert tree_hashes(workdir) == before
  finally:
    if holder is not None:
      holder.release()
  assert not (workdir / checkpointing.LOCK_NAME).exists()  # nothing left behind by the refused run


def test_a_lost_metrics_line_is_restored_from_the_checkpoint(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  metrics.write_text(lines[0] + "\n" + '{"epoch": 1, "test_pgd' + "\n")  # a kill in the middle of line 2
  before = tree_hashes(workdir)
  with RunDir(str(workdir)) as run:
    decision = run.resume(config(), model_spec(config(), 10), "digits", 2, fresh_state=None)
    assert tree_hashes(workdir) == {**before, "./.lock": tree_hashes(workdir)["./.lock"]}  # decided, nothing written
    assert isinstance(decision, Resume) and decision.complete and decision.start_epoch == 2
    assert decision.state is None  # a complete run builds no state (fresh_state is not called)
    assert decision.history[1] == checkpointing.read_meta(str(workdir), "last")["record"]
    assert decision.history[0] == json.loads(lines[0])
    assert any("line 2 is not JSON" in d for d in decision.damage)
    assert "the record of epoch 2 was missing and is restored from the checkpoint" in decision.damage
    run.start(config(), decision)  # the repair is written
  assert [json.loads(l) for l in metrics.read_text().splitlines()] == list(decision.history)
  assert [r["epoch"] for r in report_read_metrics(str(metrics))] == [0, 1]  # and the report reads it again


def test_the_resume_of_an_unfinished_run_continues_after_its_checkpoint(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  meta = checkpointing.read_meta(str(workdir), "last")
  calls = []
  cfg = config(num_epochs=3)
  data = load_dataset("digits", None, val_size=0, seed=int(cfg.seed))
  model = model_from_spec(model_spec(cfg, 10))
  tx, _ = train.make_optimizer(cfg, 2)

  def fresh_state():
    calls.append(1)
    return train.initial_state(model, tx, run_keys(int(cfg.seed))[0], data.train_images.shape[1:])

  with RunDir(str(workdir)) as run:
    d = run.resume(cfg, model_spec(cfg, 10), "digits", 2, fresh_state)
  assert calls == [1] and not d.complete and d.start_epoch == 2 and int(d.state.step) == meta["step"]
  assert (d.best_metric, d.best_epoch) == (meta["best_metric"], meta["best_epoch"])
  assert d.damage == () and d.resume_at is None and d.changes == {} and len(d.history) == 2


def test_the_lock_is_released_on_every_way_out(trained, tmp_path):
  def free(workdir):
    assert not (Path(workdir) / checkpointing.LOCK_NAME).exists()
    RunLock(str(workdir)).acquire().release()  # another run can take it

  fresh = tmp_path / "fresh"
  with RunDir(str(fresh)) as run:
    assert run.lock.held and (fresh / checkpointing.LOCK_NAME).exists()
  free(fresh)
  for exc in (ValueError("boom"), KeyboardInterrupt(), train.TrainingPreempted("stop")):
    with pytest.raises(type(exc)):
      with RunDir(str(fresh)):
        raise exc
    free(fresh)
  workdir = copy_of(trained, tmp_path)
  with pytest.raises(ConfigChangeError):
    with RunDir(str(workdir)) as run:
      run.resume(config(**{"optim.lr": 0.5}), model_spec(config(), 10), "digits", 2, fresh_state=None)
  free(workdir)
  with pytest.raises(WorkdirLocked):  # a refused lock: the holder's lock stays, ours was never taken
    with RunLock(str(workdir)):
      with RunDir(str(workdir)):
        pass
  free(workdir)


@pytest.mark.parametrize("where", ["writing the lock", "agreeing after it"])
def test_ctrl_c_while_the_lock_is_taken_leaves_no_lock(tmp_path, monkeypatch, where):
  """Ctrl-C (or SIGTERM, raised from its handler) in the instant after the lock file appeared --
  while its holder is written, or while the processes agree that they see it -- leaves no lock: the
  same command runs again. (Before: a lock file of this pid, or an empty one, refused the rerun.)"""
  from saat_jax import distributed

  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  if where == "writing the lock":
    monkeypatch.setattr(checkpointing.json, "dump", interrupt)
  else:
    monkeypatch.setattr(distributed, "agree", interrupt)
  workdir = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    with RunDir(str(workdir)):
      pytest.fail("the body ran")
  assert not (workdir / checkpointing.LOCK_NAME).exists()
  monkeypatch.undo()
  with RunDir(str(workdir)) as run:
    assert run.lock.held


GOOD = {"epoch": 0, "test_natural_accuracy": 0.5, "test_pgd_accuracy": 0.25, "best_epoch": 0}
BAD_LINES = [b"not json", b'{"epoch": 1, "test_pgd', b"[1, 2]", b"null", b"3", b'"a string"', b"{}",
             b'{"epoch": true}', b'{"epoch": 1.0}', b'{"epoch": "1"}', b'{"epoch": null}', b'\xff\xfe{"epoch": 1}',
             b'{"best_epoch": 1}']


@pytest.mark.parametrize("bad", BAD_LINES, ids=[b.decode("utf-8", "replace") for b in BAD_LINES])
def test_a_line_the_lenient_reader_leaves_out_the_strict_one_refuses(tmp_path, bad):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n")
  records, problems = metric_writer.read_metrics(str(path))
  assert records == [GOOD] and len(problems) == 1 and problems[0].startswith("line 2 ")
  with pytest.raises(metric_writer.MetricsFileError, match=re.escape(str(path)) + " (is damaged at )?line 2"):
    metric_writer.read_metrics(str(path), strict=True)
  with pytest.raises(ReportError, match=re.escape(str(path)) + " (is damaged at )?line 2"):
    report_read_metrics(str(path))


def test_both_readings_take_the_same_records(tmp_path):
  path = tmp_path / "metrics.jsonl"
  recs = [GOOD, {**GOOD, "epoch": 1, "evaluated": True}, {"epoch": 2, "best_epoch": 1, "evaluated": False}]
  path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
  assert metric_writer.read_metrics(str(path)) == (recs, [])
  assert metric_writer.read_metrics(str(path), strict=True) == (recs, [])
  assert report_read_metrics(str(path)) == recs
  assert metric_writer.read_metrics(str(tmp_path / "none.jsonl")) == ([], [])
  with pytest.raises(metric_writer.MetricsFileError, match="none.jsonl is missing"):
    metric_writer.read_metrics(str(tmp_path / "none.jsonl"), strict=True)
