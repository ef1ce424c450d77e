"""What a run does when things go wrong around it: resuming with another config, rerunning a finished
run, Ctrl-C, a damaged metrics.jsonl, two runs on one work dir, a failed checkpoint save, bad CLI
arguments, and evaluation every N epochs.

One tiny digits run (3 epochs, evaluated every 2) is trained once; each test works on a copy."""

import dataclasses
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from saat_jax import checkpointing, evaluate, parallel, train
from saat_jax import workdir
from saat_jax.train import ConfigChangeError, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
from saat_jax import main as launch
from saat_jax.testing.tiny import tiny_config



def cfg(method="natural", **over):
  return tiny_config(method, {"eval.every": 2, **over})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("base") / "run"
  hist = train_and_evaluate(cfg(), str(workdir))
  return workdir, hist


@pytest.fixture
def run_copy(base_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(base_run[0], workdir)
  return workdir


def snapshot(workdir):
  return {str(p.relative_to(workdir)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
          for p in sorted(Path(workdir).rglob("*"))}


def records(workdir):
  return [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


# ---- 10. evaluation every N epochs ---------------------------------------------------------


def test_eval_every_evaluates_every_nth_and_the_last_epoch(base_run):
  workdir, hist = base_run
  assert hist == records(workdir)
  assert [r["epoch"] for r in hist] == [0, 1, 2]
  assert [r["evaluated"] for r in hist] == [False, True, True]  # epochs 2 and 3 (1-based)
  assert not any(k.startswith(("test_", "trainsub_")) for k in hist[0])
  for r in hist[1:]:
    assert {"test_natural_accuracy", "test_pgd_accuracy", "trainsub_pgd_accuracy"} <= set(r)
  assert hist[0]["best_epoch"] == -1  # an epoch without evaluation cannot be `best`
  best = checkpointing.read_meta(str(workdir), "best")
  assert best["epoch"] == hist[-1]["best_epoch"] in (1, 2)
  with pytest.raises(ValueError, match="eval.every must be an integer >= 1"):
    train.validate_config(cfg(**{"eval.every": 0}))


# ---- 1. resuming with another config --------------------------------------------------------


def test_config_changes_ignores_keys_that_do_not_change_the_trajectory():
  saved = workdir.config_json(cfg())
  free = cfg(**{"progress": True, "check_every": 5, "num_epochs": 10, "eval.batch_size": 32, "eval.every": 3,
                "data.data_dir": "/x", "data.cache_dir": "/c", "allow_config_change": True})
  assert train.config_changes(saved, workdir.config_json(free)) == {}
  # a run saved before a key existed, resumed with the key at its default: no change
  old = json.loads(json.dumps(saved))
  del old["eval"]["every"], old["allow_config_change"]
  assert train.config_changes(old, workdir.config_json(cfg(**{"eval.every": 1}))) == {}
  changed = train.config_changes(saved, workdir.config_json(
      cfg(**{"data.name": "cifar10", "optim.lr_milestones": (1, 2), "model.kwargs": {"width": 8}, "seed": 1})))
  assert set(changed) == {"data.name", "optim.lr_milestones", "model.kwargs.width", "seed"}
  assert changed["model.kwargs.width"] == (4, 8)


@pytest.mark.slow
def test_resume_with_another_config_is_refused_unless_allowed(run_copy, capsys):
  workdir = run_copy
  before = snapshot(workdir)
  with pytest.raises(ConfigChangeError) as e:
    train_and_evaluate(cfg("at", **{"optim.lr": 0.1, "num_epochs": 4}), str(workdir))
  msg = str(e.value)
  assert 'method: "natural" -> "at"' in msg and "optim.lr: 0.05 -> 0.1" in msg
  assert "allow_config_change=True" in msg and str(workdir) in msg
  assert snapshot(workdir) == before  # nothing written, the lock released
  capsys.readouterr()

  # explicitly allowed; eval.batch_size and data.data_dir may differ anyway
  hist = train_and_evaluate(cfg(**{"optim.lr": 0.1, "num_epochs": 4, "allow_config_change": True,
                                   "eval.batch_size": 32, "data.data_dir": "/elsewhere"}), str(workdir))
  out = capsys.readouterr().out
  assert f"resuming {workdir} after epoch 3 of 4 (step 6)" in out
  assert "optim.lr: 0.05 -> 0.1" in out and "data.data_dir='/elsewhere' is ignored" in out
  assert [r["epoch"] for r in hist] == [0, 1, 2, 3] and hist[3]["evaluated"] and hist[3]["lr"] == pytest.approx(0.1)
  log = [json.loads(l) for l in (workdir / "configs.jsonl").read_text().splitlines()]
  assert [x["resumed_from_epoch"] for x in log] == [0, 3]
  assert log[0]["changed"] == {} and log[1]["changed"] == {"optim.lr": [0.05, 0.1]}
  assert log[1]["config"]["optim"]["lr"] == 0.1 and "time" in log[1]
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.1
  assert not (workdir / ".lock").exists()


def test_resume_on_another_copy_of_the_data_is_refused(run_copy, monkeypatch):
  """data.data_dir may change on resume (a moved copy), but not the data itself: a run trained on one
  format (here digits) does not continue on another (e.g. the official archive after the JPEG copy)."""
  from saat_jax import data as data_package

  real = data_package.load_dataset
  monkeypatch.setattr(train, "load_dataset", lambda *a, **kw: dataclasses.replace(
      real(*a, **kw), data_format="image-folder-jpeg"))
  before = snapshot(run_copy)
  with pytest.raises(ConfigChangeError, match=r"trained for 3 epoch\(s\) on data of format 'digits', but this "
                                              r"config reads 'image-folder-jpeg'"):
    train_and_evaluate(cfg(num_epochs=4), str(run_copy))
  assert snapshot(run_copy) == before


# ---- 2. a finished run ----------------------------------------------------------------------


def test_finished_run_says_complete_without_recomputing(run_copy, monkeypatch, capsys):
  before = snapshot(run_copy)

  def no_training(*a, **kw):
    raise AssertionError("a finished run must not train")

  monkeypatch.setattr(parallel, "shard_batch", no_training)
  assert launch.run(cfg(), str(run_copy)) == 0
  out = capsys.readouterr().out
  assert f"{run_copy} is complete: 3 epochs done" in out
  assert snapshot(run_copy) == before
  # The summary: the best and the last epoch (1-based) with their test accuracies and checkpoint folders
  # (0-based, as metrics.jsonl), and the next commands.
  recs = records(run_copy)
  best = recs[-1]["best_epoch"]
  assert recs[best]["evaluated"] and best != 1  # epoch 2 of 3 is not evaluated (eval.every=2)
  ckpt = run_copy.resolve() / "checkpoints"
  assert (f"best: epoch {best + 1} by test PGD-20: test natural {100 * recs[best]['test_natural_accuracy']:.2f}%, "
          f"PGD-20 {100 * recs[best]['test_pgd_accuracy']:.2f}% (eps 32/255) -> {ckpt / 'best' / str(best)}") in out
  assert (f"last: epoch 3: test natural {100 * recs[2]['test_natural_accuracy']:.2f}%, PGD-20 "
          f"{100 * recs[2]['test_pgd_accuracy']:.2f}% (eps 32/255) -> {ckpt / 'last' / '2'}") in out
  assert (ckpt / "best" / str(best)).is_dir() and (ckpt / "last" / "2").is_dir()
  assert 'epoch 3 is "epoch": 2 and checkpoints/last/2' in out
  for command in (f"python -m saat_jax.evaluate --workdir {run_copy}", f"python -m saat_jax.report {run_copy} --out",
                  f"python -m saat_jax.plot --workdir {run_copy}"):
    assert command in out


# ---- 3. Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_exits_130_naming_the_checkpoint_to_resume_from(run_copy, monkeypatch, capsys):
  def interrupt(*a, **kw):
    raise KeyboardInterrupt

  monkeypatch.setattr(parallel, "shard_batch", interrupt)
  assert launch.run(cfg(num_epochs=4), str(run_copy)) == 130
  err = capsys.readouterr().err
  assert ("interrupted at epoch 4 step 6; the last checkpoint is epoch 3: run the same command to resume"
          in err)
  assert "Traceback" not in err
  assert not (run_copy / ".lock").exists()
  assert checkpointing.read_meta(str(run_copy), "last")["epoch"] == 2


# ---- 4. a damaged metrics.jsonl -------------------------------------------------------------


def test_damaged_metrics_are_repaired_from_the_checkpoints(run_copy, capsys):
  """Every kept checkpoint (``last`` of epochs 2 and 3, ``best``) holds its epoch's record: a line
  lost from metrics.jsonl comes back from it; epoch 1's, kept nowhere else, is reported missing."""
  path = run_copy / "metrics.jsonl"
  lines = path.read_text().splitlines()
  orig = [json.loads(l) for l in lines]
  # epoch 1 truncated, epoch 2's line garbage, a record of an epoch the checkpoint never reached,
  # and epoch 3 (the checkpoint's) lost
  path.write_bytes((lines[0][:40] + "\n").encode() + b"\x00\xffgarbage\n"
                   + json.dumps({**orig[2], "epoch": 7}).encode() + b"\n")
  hist = train_and_evaluate(cfg(), str(run_copy))
  err = capsys.readouterr().err
  assert f"warning: {path} was damaged" in err and "line 1 is not JSON" in err and "line 2" in err
  assert "the records of epoch(s) 2, 3 were missing and are restored from the checkpoints" in err
  assert "epoch(s) 1 have no record" in err
  assert [r["epoch"] for r in hist] == [1, 2]
  assert records(run_copy) == hist == orig[1:]


# ---- 5. two runs on one work dir ------------------------------------------------------------


def test_second_run_on_a_work_dir_in_use_is_refused_and_a_stale_lock_taken_over(run_copy, capsys):
  lock = run_copy / ".lock"
  host = socket.gethostname()
  lock.write_text(json.dumps({"pid": os.getppid(), "host": host}))  # a live process
  assert launch.run(cfg(), str(run_copy)) == 2
  err = capsys.readouterr().err
  assert f"work dir {run_copy} is in use by pid {os.getppid()} on host {host}" in err
  assert json.loads(lock.read_text())["pid"] == os.getppid()  # not taken, not removed

  with pytest.raises(checkpointing.WorkdirLocked):
    checkpointing.RunLock(str(run_copy)).acquire()
  assert lock.exists()  # the refusal does not remove another run's lock

  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  dead = proc.pid  # exited and reaped
  lock.write_text(json.dumps({"pid": dead, "host": host}))
  assert launch.run(cfg(), str(run_copy)) == 0
  assert "taking over the stale lock" in capsys.readouterr().err
  assert not lock.exists()


def test_lock_is_exclusive_within_a_process_and_released_on_exceptions(tmp_path):
  workdir = str(tmp_path / "w")
  with checkpointing.RunLock(workdir):
    with pytest.raises(checkpointing.WorkdirLocked, match="is in use by pid"):
      checkpointing.RunLock(workdir).acquire()
  with pytest.raises(RuntimeError):
    with checkpointing.RunLock(workdir):
      raise RuntimeError
  assert os.listdir(workdir) == []


# ---- 6. a failed checkpoint save ------------------------------------------------------------


def test_failed_save_is_explained_and_keeps_the_previous_checkpoint(run_copy, monkeypatch):
  import orbax.checkpoint as ocp

  def full_disk(self, *a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpointing.CheckpointSaveError,
                     match=r"could not save the '(best|last)' checkpoint of epoch 4 in .*checkpoints.(best|last): "
                           r"OSError: .*No space left on device.*checkpoint \(epoch 3\) is intact"):
    train_and_evaluate(cfg(num_epochs=4), str(run_copy))
  monkeypatch.undo()
  assert not (run_copy / ".lock").exists()
  assert [r["epoch"] for r in records(run_copy)] == [0, 1, 2]  # not ahead of the checkpoints
  meta = checkpointing.read_meta(str(run_copy), "last")
  assert meta["epoch"] == 2
  c = cfg()
  model = train.model_from_spec(meta["model"])
  ck = checkpointing.RunCheckpoints(str(run_copy))
  state, _ = ck.restore("last", train.initial_state(model, train.make_optimizer(c, 2)[0], jax.random.key(0),
                                                    (8, 8, 1)))
  ck.close()
  assert int(state.step) == 6


def test_real_write_failure_in_orbax_keeps_the_previous_checkpoint(tmp_path):
  """TensorStore reports a failed write as a ValueError carrying the OS error; the file size limit
  makes one for real (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
  resource = pytest.importorskip("resource")
  ck = checkpointing.RunCheckpoints(str(tmp_path))
  ck.save("last", 0, {"a": np.zeros(3)}, {"epoch": 0})
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
  try:
    with pytest.raises(checkpointing.CheckpointSaveError,
                       match=r"'last' checkpoint of epoch 2 .*\(epoch 1\) is intact"):
      ck.save("last", 1, {"a": np.random.default_rng(0).random(400_000)}, {"epoch": 1})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  ck.close()
  assert sorted(os.listdir(tmp_path / "checkpoints" / "last")) == ["0"]  # the partial write removed
  ck = checkpointing.RunCheckpoints(str(tmp_path))
  state, meta = ck.restore("last", {"a": np.zeros(3)})
  ck.close()
  assert meta["epoch"] == 0 and np.array_equal(np.asarray(state["a"]), np.zeros(3))


# ---- 7, 9. CLI arguments and batch sizes ----------------------------------------------------


@pytest.mark.parametrize("argv,devices,match", [
    (["--eval.batch_size=0"], 1, "--eval.batch_size must be >= 1, got 0"),
    (["--eval.num_test=-5"], 1, "--eval.num_test must be >= 0"),
    (["--eval.batch_size=5"], 2, "--eval.batch_size=5 is not divisible by the 2 devices; use 4 or 6"),
])
def test_evaluate_cli_rejects_bad_batch_size_and_num_test(tmp_path, capsys, monkeypatch, argv, devices, match):
  monkeypatch.setattr(jax, "device_count", lambda: devices)
  assert evaluate.main(["--workdir", str(tmp_path), *argv]) == 2
  assert match in capsys.readouterr().err


def test_batch_size_that_does_not_divide_over_the_devices_suggests_the_nearest(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(ValueError) as e:
    train.validate_config(cfg(batch_size=100, **{"eval.batch_size": 4}))
  assert "batch_size=100: use 96 or 104 (the nearest multiples of the 8 devices)" in str(e.value)
  assert "eval.batch_size=4: use 8 (the smallest multiple of the 8 devices)" in str(e.value)


# ---- 8. --config.data.data_dir on the digits configs ----------------------------------------


@pytest.mark.parametrize("config", ["configs/saat_digits.py", "configs/digits.py:at"])
def test_digits_config_takes_a_data_dir_override(config, monkeypatch):
  from absl import flags
  from ml_collections import config_flags

  def parse(*overrides):
    argv = ["prog", f"--config={ROOT / config}", *overrides]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags registers the overrides it finds there
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
    fv(argv)
    return fv.config

  assert parse("--config.data.data_dir=/some/dir").data.data_dir == "/some/dir"
  assert parse().data.data_dir is None
