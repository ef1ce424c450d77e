"""``saat_jax.checkpointing`` on its own, on small pytrees (no model, no training: a few seconds).

The training tests prove the same contracts end to end (resume bit for bit, fall back past a damaged
checkpoint, refuse a locked work dir); these pin each function's own behaviour, so that a change to
one (the number of checkpoints kept, which step is "newest", what a lock's owner looks like, which
message names what) fails here in seconds. They are also the fast selection for mutation testing
of this module (docs/mutation.md).
"""

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from saat_jax import checkpointing
from saat_jax.checkpointing import (CheckpointError, CheckpointSaveError, RunCheckpoints, RunLock, WorkdirError,
                                    WorkdirLocked)


def state(v: float, n: int = 3) -> dict:
  return {"w": np.full((n,), v, np.float32), "step": np.asarray(int(v), np.int32)}


def steps(workdir, kind) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints", kind)))


@pytest.fixture
def ck(tmp_path):
  c = RunCheckpoints(str(tmp_path))
  yield c
  c.close()


def test_checkpoint_dir_is_absolute_per_kind_and_rejects_unknown_kinds(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert checkpointing.checkpoint_dir("run", "best") == str(tmp_path / "run" / "checkpoints" / "best")
  assert checkpointing.checkpoint_dir("run", "partial").endswith(os.path.join("checkpoints", "partial"))
  with pytest.raises(CheckpointError, match=r"unknown checkpoint 'lats'; use one of \('last', 'best'\)"):
    checkpointing.checkpoint_dir("run", "lats")


def test_save_restore_round_trip_and_the_newest_two_last_kept(ck, tmp_path):
  assert ck.latest_epoch() is None and ck.latest_epoch("best") is None
  for epoch in range(3):
    ck.save("last", epoch, state(epoch + 1), {"epoch": epoch, "model": {"name": "m"}})
  ck.save("best", 0, state(7), {"epoch": 0})
  ck.save("best", 2, state(9), {"epoch": 2})
  assert steps(tmp_path, "last") == ["1", "2"]  # the fallback needs the one before the newest
  assert steps(tmp_path, "best") == ["2"]
  assert ck.latest_epoch() == 2 and ck.latest_epoch("best") == 2

  got, meta = ck.restore("last", state(0))
  assert meta == {"epoch": 2, "model": {"name": "m"}}
  np.testing.assert_array_equal(got["w"], np.full(3, 3.0, np.float32))
  assert got["w"].dtype == np.float32 and int(got["step"]) == 3
  got, meta = ck.restore("last", state(0), epoch=1)
  assert meta["epoch"] == 1 and float(got["w"][0]) == 2.0
  got, meta = ck.restore("best", state(0))
  assert meta["epoch"] == 2 and float(got["w"][0]) == 9.0
  assert ck.restore_meta() == {"epoch": 2, "model": {"name": "m"}}
  assert ck.restore_meta("last", epoch=1)["epoch"] == 1
  assert ck.restore_meta("best")["epoch"] == 2


def test_saving_an_epoch_already_on_disk_keeps_the_one_on_disk(ck):
  ck.save("best", 4, state(1), {"epoch": 4, "v": "first"})
  ck.save("best", 4, state(2), {"epoch": 4, "v": "second"})
  got, meta = ck.restore("best", state(0))
  assert meta["v"] == "first" and float(got["w"][0]) == 1.0


def test_nothing_to_restore_is_a_clear_error(ck, tmp_path):
  where = str(tmp_path / "checkpoints" / "last")
  with pytest.raises(CheckpointError, match=f"no 'last' checkpoint in {where}$"):
    ck.restore("last", state(0))
  with pytest.raises(CheckpointError, match="no 'best' checkpoint in .*best$"):
    ck.restore_meta("best")


def damage(step_dir):
  (step_dir / "meta" / "metadata").write_text("{not json")
  for name in os.listdir(step_dir / "state"):
    p = step_dir / "state" / name
    if p.is_file():
      p.write_bytes(b"\0garbage")


def test_an_unreadable_newest_is_named_set_aside_and_the_one_before_used(ck, tmp_path, capsys):
  for epoch in range(3):
    ck.save("last", epoch, state(epoch + 1), {"epoch": epoch})
  last = tmp_path / "checkpoints" / "last"
  damage(last / "2")
  capsys.readouterr()
  got, meta = ck.restore("last", state(0))
  err = capsys.readouterr().err
  assert meta["epoch"] == 1 and float(got["w"][0]) == 2.0
  assert f"warning: the 'last' checkpoint {last / '2'} is unreadable (" in err
  assert re.search(r"is unreadable \([A-Za-z]+Error: [^)]", err), err
  assert "using the one before it, step 1" in err
  aside = [n for n in os.listdir(last) if n.startswith("2.unreadable-")]
  assert len(aside) == 1 and int(aside[0].split("-")[1]) <= time.time()
  assert f"moved the unreadable 'last' checkpoint {last / '2'} to {last / aside[0]}" in err
  assert ck.latest_epoch() == 1  # the manager forgot the set-aside step: epoch 2 is saved anew
  ck.save("last", 2, state(5), {"epoch": 2})
  assert ck.restore("last", state(0))[1]["epoch"] == 2


def test_none_readable_stops_with_every_step_named(ck, tmp_path):
  for epoch in range(2):
    ck.save("last", epoch, state(epoch + 1), {"epoch": epoch})
  for s in ("0", "1"):
    damage(tmp_path / "checkpoints" / "last" / s)
  with pytest.raises(CheckpointError, match=r"no 'last' checkpoint in .* can be read for this config: .*"
                                            r"\(step 1: [A-Za-z]+Error: .+; step 0: [A-Za-z]+Error: .+\)\. Nothing was "
                                            r"started over"):
    ck.restore("last", state(0))
  assert steps(tmp_path, "last") == ["0", "1"]  # nothing moved or deleted when none is readable


def test_a_checkpoint_of_another_shape_does_not_restore(ck):
  ck.save("last", 0, state(1, n=3), {"epoch": 0})
  with pytest.raises(CheckpointError, match=r"does not fit the model of this config, or it is damaged \(step 0: "
                                            r"ValueError: \['w'\] has shape \(3,\) in the checkpoint, \(5,\) in this "
                                            r"config's state\)"):
    ck.restore("last", state(0, n=5))


def test_restore_follows_the_target_dtype_and_sharding(ck):
  """The target gives each array its dtype and placement (a multi-host restore goes straight into
  the replicated sharding this way), not the saved file."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from saat_jax import parallel

  ck.save("last", 0, {"w": np.arange(4, dtype=np.float32)}, {"epoch": 0})
  repl = NamedSharding(parallel.make_mesh(), PartitionSpec())
  target = {"w": jax.device_put(jnp.zeros(4, jnp.bfloat16), repl)}
  got, _ = ck.restore("last", target)
  assert isinstance(got["w"], jax.Array) and got["w"].dtype == jnp.bfloat16
  assert got["w"].sharding == repl
  np.testing.assert_array_equal(np.asarray(got["w"], np.float32), np.arange(4, dtype=np.float32))


def test_partial_positions(ck, tmp_path):
  assert ck.restore_partial(state(0), after_step=0) is None
  metrics = {"loss": np.arange(4, dtype=np.float32)}
  ck.save_partial(10, state(1), {"epoch": 2, "step": 10}, metrics)
  ck.save_partial(12, state(2), {"epoch": 2, "step": 12}, {"loss": np.arange(6, dtype=np.float32)})
  assert steps(tmp_path, "partial") == ["12"]  # one position is kept
  got = ck.restore_partial(state(0), after_step=11)
  assert got is not None
  st, meta, m = got
  assert meta == {"epoch": 2, "step": 12} and float(st["w"][0]) == 2.0
  np.testing.assert_array_equal(m["loss"], np.arange(6, dtype=np.float32))
  assert ck.restore_partial(state(0), after_step=12) is None  # not past the last epoch's end
  ck.clear_partial()
  assert steps(tmp_path, "partial") == []
  assert ck.restore_partial(state(0), after_step=0) is None


def test_an_unreadable_partial_position_falls_back_to_the_epoch_end(ck, tmp_path, capsys):
  ck.save_partial(7, state(1), {"step": 7}, {"loss": np.zeros(2, np.float32)})
  damage(tmp_path / "checkpoints" / "partial" / "7")
  capsys.readouterr()
  assert ck.restore_partial(state(0), after_step=3) is None
  err = capsys.readouterr().err
  assert f"no 'partial' checkpoint in {tmp_path / 'checkpoints' / 'partial'} can be read" in err
  assert "resuming from the end of the last epoch instead" in err


def test_a_failed_save_removes_its_temporary_directory_only_and_names_the_previous(ck, tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  ck.save("last", 0, state(1), {"epoch": 0})
  where = tmp_path / "checkpoints" / "last"
  (where / "1.orbax-checkpoint-tmp-99").mkdir()  # what a write that failed half way leaves
  (where / "11.orbax-checkpoint-tmp-5").mkdir()  # another step's: not this save's to remove

  def full_disk(self, *a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(CheckpointSaveError, match=r"could not save the 'last' checkpoint of epoch 2 in .*last: OSError: "
                                                r".*No space left on device\. The previous 'last' checkpoint \(epoch 1\) "
                                                r"is intact\. Free disk space or fix the permissions of "):
    ck.save("last", 1, state(2), {"epoch": 1})
  assert sorted(os.listdir(where)) == ["0", "11.orbax-checkpoint-tmp-5"]
  with pytest.raises(CheckpointSaveError, match=r"'best' checkpoint of epoch 1 .*\(none yet\)"):
    ck.save("best", 0, state(2), {"epoch": 0})
  partial = tmp_path / "checkpoints" / "partial"
  (partial / "5.orbax-checkpoint-tmp-7").mkdir()
  with pytest.raises(CheckpointSaveError, match=r"could not save the position at step 5 in .*partial: OSError: "
                                                r".*No space left on device\. The 'last' checkpoint is intact"):
    ck.save_partial(5, state(2), {}, {"loss": np.zeros(1)})
  assert os.listdir(partial) == []
  monkeypatch.undo()
  assert ck.restore("last", state(0))[1]["epoch"] == 0


def test_read_meta_writes_nothing_and_reads_the_newest_readable(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert checkpointing.read_meta(workdir) is None
  assert not os.path.exists(workdir)
  c = RunCheckpoints(workdir)
  assert checkpointing.read_meta(workdir) is None  # directories, no step yet
  for epoch in range(2):
    c.save("last", epoch, state(epoch), {"epoch": epoch})
  c.save("best", 0, state(0), {"epoch": 0, "best": True})
  c.close()
  assert checkpointing.read_meta(workdir) == {"epoch": 1}
  assert checkpointing.read_meta(workdir, "best") == {"epoch": 0, "best": True}
  (tmp_path / "run" / "checkpoints" / "last" / "1" / "meta" / "metadata").write_text("{not json")
  assert checkpointing.read_meta(workdir) == {"epoch": 0}
  assert "the 'last' checkpoint" in capsys.readouterr().err


def test_an_unwritable_work_dir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(WorkdirError, match=f"cannot create the checkpoint directories of {blocker} "
                                         r"\((NotADirectoryError|FileExistsError): .+\); check its permissions"):
    RunCheckpoints(str(blocker))
  with pytest.raises(WorkdirError, match=f"cannot create the work dir {blocker}: FileExistsError: "):
    RunLock(str(blocker)).acquire()


@pytest.mark.parametrize("fail", ["open", "write"])
def test_a_lock_that_cannot_be_written_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch, fail):
  import errno

  workdir = str(tmp_path / "w")

  def denied(*a, **kw):
    raise OSError(errno.EACCES, "Permission denied")

  monkeypatch.setattr(checkpointing.os, "open" if fail == "open" else "fdopen", denied)
  with pytest.raises(WorkdirError, match=f"cannot write to the work dir {workdir} \\(PermissionError: .*Permission denied\\); "
                                         "check its permissions and free space"):
    RunLock(workdir).acquire()
  monkeypatch.undo()
  assert os.listdir(workdir) == []


def test_a_lock_released_while_looking_is_taken_and_one_never_readable_refused(tmp_path, monkeypatch):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  path = os.path.join(workdir, ".lock")
  open(path, "w").close()
  real_read = RunLock._read

  def released_meanwhile(self):  # the holder finished between our open and our read
    os.remove(path)
    return None

  monkeypatch.setattr(RunLock, "_read", released_meanwhile)
  lock = RunLock(workdir).acquire()
  monkeypatch.setattr(RunLock, "_read", real_read)
  assert lock.held and json.loads(open(path).read())["token"] == lock.token
  lock.release()

  open(path, "w").close()
  monkeypatch.setattr(RunLock, "_read", lambda self: None)  # always gone when read, always back when opened
  with pytest.raises(WorkdirLocked, match=f"work dir {workdir}: could not take its lock {path}; another run is "
                                          "starting there"):
    RunLock(workdir).acquire()


def test_check_same_model_names_both_models():
  checkpointing.check_same_model({"model": {"name": "a"}}, {"name": "a"}, "w")
  with pytest.raises(CheckpointError, match=r"work dir w holds a checkpoint of model \{'name': 'a'\}, but the "
                                            r"config asks for \{'name': 'b'\}"):
    checkpointing.check_same_model({"model": {"name": "a"}}, {"name": "b"}, "w")
  with pytest.raises(CheckpointError, match="model None"):
    checkpointing.check_same_model({}, {"name": "b"}, "w")


# ---- the work dir's lock -------------------------------------------------------------------------


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid  # exited and reaped


def test_pid_alive_only_asks_and_counts_another_users_process_as_alive(monkeypatch):
  # a live process that a real signal would end (SIGHUP restored to its default): asking leaves it running
  child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                                                  "time.sleep(60)"])
  try:
    time.sleep(0.5)
    assert checkpointing.pid_alive(child.pid)
    time.sleep(0.2)
    assert child.poll() is None
  finally:
    child.kill()
    child.wait()
  assert not checkpointing.pid_alive(dead_pid())
  for error in (PermissionError, OSError):  # EPERM: another user's process, alive
    def kill(pid, sig, error=error):
      raise error("no")
    monkeypatch.setattr(checkpointing.os, "kill", kill)
    assert checkpointing.pid_alive(12345)


def test_lock_records_its_holder_and_only_the_holder_removes_it(tmp_path):
  workdir = str(tmp_path / "w")
  assert RunLock(workdir).held is False
  lock = RunLock(workdir).acquire()
  holder = json.loads((tmp_path / "w" / ".lock").read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  assert holder["token"] == lock.token and lock.held is True and re.fullmatch("[0-9a-f]{32}", lock.token)
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "w" / ".lock").st_mode) == 0o644 & ~umask
  assert time.strptime(holder["started"], "%Y-%m-%dT%H:%M:%S%z")
  with pytest.raises(WorkdirLocked, match=rf"work dir {workdir} is in use by pid {os.getpid()} on host "
                                          rf"{socket.gethostname()} \(since {re.escape(holder['started'])}\)"):
    RunLock(workdir).acquire()  # the same process: its own lock is not stale
  # a lock that another run took over meanwhile (its token) is not removed by the old holder
  other = dict(holder, token=RunLock(workdir).token)
  (tmp_path / "w" / ".lock").write_text(json.dumps(other))
  lock.release()
  assert json.loads((tmp_path / "w" / ".lock").read_text()) == other
  os.remove(tmp_path / "w" / ".lock")
  lock.release()  # not held any more: nothing to do, no error
  assert lock.held is False
  with RunLock(workdir) as again:
    assert again.held
  assert again.held is False and os.listdir(workdir) == []


def test_stale_locks_are_taken_over_and_live_or_foreign_ones_refused(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  path = os.path.join(workdir, ".lock")
  host = socket.gethostname()

  def write(holder):
    with open(path, "w") as f:
      f.write(holder if isinstance(holder, str) else json.dumps(holder))

  write({"pid": dead_pid(), "host": host})
  capsys.readouterr()
  with RunLock(workdir):
    assert json.loads(open(path).read())["pid"] == os.getpid()
  assert f"taking over the stale lock {path} (pid" in capsys.readouterr().err

  for holder, why in [({"pid": os.getppid(), "host": host}, f"pid {os.getppid()} on host {host} \\(since \\?\\)"),
                      ({"pid": dead_pid(), "host": host + "-other"}, "pid [0-9]+ on host " + host + "-other"),
                      ({"pid": "12", "host": host}, "pid 12 on host"),
                      ("{torn", "a run \\(the lock file is unreadable\\)"),  # young: perhaps being written
                      ("[1, 2]", "a run \\(the lock file is unreadable\\)")]:
    write(holder)
    with pytest.raises(WorkdirLocked, match=f"is in use by {why}.*delete {path}"):
      RunLock(workdir).acquire()
    assert os.path.exists(path)  # a refusal never removes another run's lock

  write("{torn")  # unreadable and old: a leftover
  old = time.time() - RunLock.STALE_UNREADABLE_S - 5
  os.utime(path, (old, old))
  with RunLock(workdir):
    pass
  assert "(unreadable and 6" in capsys.readouterr().err
  assert not os.path.exists(path)


# ---- checksums, a partial restore, checkpoints from before checksums -------------------------------


def meta_file(workdir, kind, step):
  return os.path.join(workdir, "checkpoints", kind, str(step), "meta", "metadata")


def edit_meta(workdir, kind, step, edit):
  """Rewrite a checkpoint's meta (a JSON file Orbax wrote) through ``edit(meta)``."""
  path = meta_file(workdir, kind, step)
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def test_every_array_has_its_checksum_in_the_meta_on_disk_not_in_the_meta_returned(ck, tmp_path):
  import hashlib

  s = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.asarray(7, np.int32)}
  ck.save("last", 0, s, {"epoch": 0})
  on_disk = json.loads(open(meta_file(tmp_path, "last", 0)).read())
  assert on_disk["checksums"] == {"sha256": {
      "state.w": ["float32", [2, 3], hashlib.sha256(s["w"].tobytes()).hexdigest()],
      "state.step": ["int32", [], hashlib.sha256(s["step"].tobytes()).hexdigest()]}}
  like = {"w": np.zeros((2, 3), np.float32), "step": np.asarray(0, np.int32)}
  assert ck.restore("last", like)[1] == {"epoch": 0} == ck.restore_meta() == checkpointing.read_meta(str(tmp_path))
  ck.save_partial(3, s, {"step": 3}, {"loss": np.arange(2, dtype=np.float32)})
  sums = json.loads(open(meta_file(tmp_path, "partial", 3)).read())["checksums"]["sha256"]
  assert sorted(sums) == ["state.step", "state.w", "step_metrics.loss"]
  assert ck.restore_partial(like, after_step=0)[1] == {"step": 3}


def test_leaf_names_are_orbaxs_and_the_same_for_a_dataclass_and_its_dicts():
  import jax

  from saat_jax.train import TrainState

  ts = TrainState(step=np.int32(1), params={"conv": {"kernel": np.ones(2)}}, batch_stats={},
                  opt_state=({"trace": {"conv": {"kernel": np.zeros(2)}}}, ()), ema=None)
  names = [checkpointing.leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(ts)[0]]
  assert names == ["step", "params.conv.kernel", "opt_state.0.trace.conv.kernel"]
  as_dicts = {"params": {"conv": {"kernel": np.ones(2)}}}  # what a restore of a part gives
  assert set(checkpointing.checksums({"state": as_dicts})) <= set(checkpointing.checksums({"state": ts}))


@pytest.mark.slow
def test_an_array_that_does_not_match_its_checksum_makes_the_checkpoint_unreadable(ck, tmp_path, capsys):
  for epoch in range(2):
    ck.save("last", epoch, state(epoch + 1), {"epoch": epoch})

  def forge(meta):  # as if the bytes on disk had changed since: the recorded sum is another's
    meta["checksums"]["sha256"]["state.w"][2] = "0" * 64

  edit_meta(tmp_path, "last", 1, forge)
  capsys.readouterr()
  got, meta = ck.restore("last", state(0))
  assert meta["epoch"] == 0 and float(got["w"][0]) == 1.0
  err = capsys.readouterr().err
  assert (f"the 'last' checkpoint {tmp_path / 'checkpoints' / 'last' / '1'} is unreadable (ChecksumError: state.w "
          "does not match its checksum (sha256 ") in err and ", 0000000000000000... when saved)" in err
  ck.save("last", 1, state(2), {"epoch": 1})
  edit_meta(tmp_path, "last", 1, lambda m: m["checksums"]["sha256"]["state.w"].__setitem__(1, [4]))
  with pytest.raises(CheckpointError, match=r"step 1: ChecksumError: state.w does not match its checksum \(float32 "
                                            r"\(3,\), float32 \(4,\) when saved\)"):
    ck.restore("last", state(0), epoch=1)
  edit_meta(tmp_path, "last", 1, lambda m: m["checksums"]["sha256"].pop("state.w"))
  with pytest.raises(CheckpointError, match=r"ChecksumError: state.w has no checksum in the checkpoint's meta"):
    ck.restore("last", state(0), epoch=1)


@pytest.mark.slow
def test_a_partial_restore_reads_and_verifies_only_its_part(tmp_path, capsys):
  ck = RunCheckpoints(str(tmp_path))
  full = {"params": {"w": np.arange(3, dtype=np.float32)}, "batch_stats": {}, "opt": {"m": np.ones(4, np.float32)}}
  for epoch in range(2):
    ck.save("last", epoch, full, {"epoch": epoch})
  ck.close()
  part, meta = checkpointing.restore_part(str(tmp_path), "last", ("params", "batch_stats"))
  assert meta == {"epoch": 1} and list(part) == ["params"]  # no arrays in batch_stats
  np.testing.assert_array_equal(part["params"]["w"], full["params"]["w"])
  assert isinstance(part["params"]["w"], np.ndarray)
  # a damaged optimizer state does not concern a restore of the weights; damaged weights do
  edit_meta(tmp_path, "last", 1, lambda m: m["checksums"]["sha256"]["state.opt.m"].__setitem__(2, "f" * 64))
  assert checkpointing.restore_part(str(tmp_path), "last", ("params",))[1] == {"epoch": 1}
  edit_meta(tmp_path, "last", 1, lambda m: m["checksums"]["sha256"]["state.params.w"].__setitem__(2, "f" * 64))
  capsys.readouterr()
  assert checkpointing.restore_part(str(tmp_path), "last", ("params",))[1] == {"epoch": 0}
  assert "the 'last' checkpoint" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "checkpoints" / "last")) == ["0", "1"]  # evaluation moves nothing
  assert checkpointing.restore_part(str(tmp_path), "last", ("ema",)) == ({}, {"epoch": 1})  # read nothing, so fine
  edit_meta(tmp_path, "last", 0, lambda m: m["checksums"]["sha256"]["state.params.w"].__setitem__(2, "f" * 64))
  with pytest.raises(CheckpointError, match=r"^no 'last' checkpoint in \S+ can be read: it is damaged \(step 1: "
                                            r"ChecksumError: .*; step 0: ChecksumError: .*\)\. Evaluate another "
                                            r"checkpoint \(--eval.checkpoints\), or restore \S+ from a backup$"):
    checkpointing.restore_part(str(tmp_path), "last", ("params",))
  with pytest.raises(CheckpointError, match="no 'best' checkpoint in .*best$"):
    checkpointing.restore_part(str(tmp_path / "elsewhere"), "best", ("params",))


def test_a_checkpoint_without_checksums_loads_with_one_note_unless_it_holds_nan(ck, tmp_path, capsys):
  """Checkpoints written before checksums were recorded: used unverified (one info line), but a
  saved state never holds NaN or inf, so one that does is unreadable."""
  for epoch in range(2):
    ck.save("last", epoch, state(epoch + 1), {"epoch": epoch})
  for step in (0, 1):
    edit_meta(tmp_path, "last", step, lambda m: m.pop("checksums"))
  capsys.readouterr()
  got, meta = ck.restore("last", state(0))
  out, err = capsys.readouterr()
  assert meta == {"epoch": 1} and float(got["w"][0]) == 2.0 and err == ""
  note = (f"the 'last' checkpoint {tmp_path / 'checkpoints' / 'last' / '1'} has no checksums (written before "
          "saat_jax recorded them): its arrays are used unverified\n")
  assert out == note
  assert ck.unverified == str(tmp_path / "checkpoints" / "last" / "1")
  ck.save("last", 2, state(3), {"epoch": 2})
  assert ck.unverified is None  # the run's own state is saved: a NaN from here on is the run's
  assert checkpointing.restore_part(str(tmp_path), "last", ("w",), epoch=1)[1] == {"epoch": 1}
  assert capsys.readouterr().out == note

  ck.save("last", 3, {"w": np.array([1.0, np.inf, 0.0], np.float32), "step": np.asarray(4, np.int32)}, {"epoch": 3})
  edit_meta(tmp_path, "last", 3, lambda m: m.pop("checksums"))
  got, meta = ck.restore("last", state(0))
  assert meta["epoch"] == 2 and ck.unverified is None
  assert "is unreadable (ValueError: state.w holds NaN or inf, which a saved training state never does)" in \
      capsys.readouterr().err


def test_orbax_bare_exception_is_damage_and_a_wrapped_ctrl_c_is_not(capsys):
  """Orbax re-raises a failed read of an array as ``Exception(...) from`` TensorStore's ValueError,
  whose one-line message the warning quotes; it wraps a KeyboardInterrupt the same way."""

  def orbax_wrapped(cause):
    try:
      raise cause
    except BaseException as e:
      try:
        raise Exception("Encountered error while reading array index: (slice(0, 3, 1),).\n"
                        "  See full TensorStore details: {\n 'driver': 'zarr',\n}") from e
      except Exception as wrapped:
        return wrapped

  read_error = orbax_wrapped(ValueError('OUT_OF_RANGE: Error reading "params.w/0" in OCDBT database at\nlocal file'))

  def read(step):
    if step == 1:
      raise read_error
    return "older"

  capsys.readouterr()
  assert checkpointing.newest_readable("/w", "last", [0, 1], read) == ("older", 0)
  assert ('warning: the \'last\' checkpoint /w/1 is unreadable (ValueError: OUT_OF_RANGE: Error reading "params.w/0" '
          'in OCDBT database at local file); using the one before it, step 0\n') == capsys.readouterr().err
  with pytest.raises(KeyboardInterrupt):
    checkpointing.newest_readable("/w", "last", [0], lambda step: (_ for _ in ()).throw(
        orbax_wrapped(KeyboardInterrupt())))
  with pytest.raises(ZeroDivisionError):  # a bug is not damage
    checkpointing.newest_readable("/w", "last", [1, 0], lambda step: 1 / 0)


# ---- a save: Ctrl-C held back, Orbax's log of a failure in a file --------------------------------


def test_ctrl_c_during_a_save_is_delivered_once_the_checkpoint_is_complete(ck, tmp_path, monkeypatch):
  import signal

  import orbax.checkpoint as ocp

  real_wait = ocp.CheckpointManager.wait_until_finished
  arrived = []

  def ctrl_c_then_wait(self):
    if not arrived:  # once, while Orbax's thread writes
      os.kill(os.getpid(), signal.SIGINT)
      arrived.append(os.path.isdir(tmp_path / "checkpoints" / "last" / "0"))
    real_wait(self)

  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", ctrl_c_then_wait)
  with pytest.raises(KeyboardInterrupt):
    ck.save("last", 0, state(1), {"epoch": 0})
  assert arrived == [False]  # it arrived before the checkpoint was complete ...
  assert ck.latest_epoch() == 0  # ... and was raised after
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  monkeypatch.undo()
  assert ck.restore("last", state(0))[1] == {"epoch": 0}
  ck.save_partial(3, state(1), {"step": 3}, {"loss": np.zeros(2, np.float32)})
  real_delete = ocp.CheckpointManager.delete

  def ctrl_c_then_delete(self, step):
    os.kill(os.getpid(), signal.SIGINT)
    real_delete(self, step)

  monkeypatch.setattr(ocp.CheckpointManager, "delete", ctrl_c_then_delete)
  with pytest.raises(KeyboardInterrupt):
    ck.clear_partial()  # deleting the positions inside an epoch is held back the same way
  assert steps(tmp_path, "partial") == []
  monkeypatch.undo()

  def ctrl_c_in_a_failing_save(self, *a, **kw):
    os.kill(os.getpid(), signal.SIGINT)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", ctrl_c_in_a_failing_save)
  with pytest.raises(CheckpointSaveError, match="No space left on device"):  # its own error ends the run
    ck.save("last", 1, state(2), {"epoch": 1})
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_real_failed_write_keeps_orbaxs_tracebacks_off_the_console_and_in_errors_log(tmp_path, capfd, caplog):
  """TensorStore's write fails for real past the file size limit (EFBIG; Python ignores SIGXFSZ);
  Orbax logs it from its threads, with tracebacks, several times over."""
  import logging

  resource = pytest.importorskip("resource")
  ck = RunCheckpoints(str(tmp_path))
  ck.save("last", 0, {"a": np.zeros(3)}, {"epoch": 0})
  capfd.readouterr()
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
  try:
    with caplog.at_level(logging.INFO), pytest.raises(CheckpointSaveError) as e:
      ck.save("last", 1, {"a": np.random.default_rng(0).random(400_000)}, {"epoch": 1})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  log_path = tmp_path / "checkpoints" / "errors.log"
  assert re.fullmatch(r"could not save the 'last' checkpoint of epoch 2 in \S+: ValueError: [^\n]+ The previous "
                      r"'last' checkpoint \(epoch 1\) is intact\. [^\n]+ What Orbax logged about it \([1-9][0-9]* "
                      rf"records\) and the traceback are in {re.escape(str(log_path))}\.", str(e.value))
  out, err = capfd.readouterr()
  assert out == err == "" and not [r for r in caplog.records if r.name == "absl"]
  written = log_path.read_text()
  assert "ERROR [" in written and "Traceback (most recent call last)" in written and "Error writing" in written
  assert ck.errors_log() == str(log_path)
  ck.close()


# ---- the records kept in checkpoints, for the repair of metrics.jsonl ----------------------------


def test_kept_records_are_those_of_every_readable_checkpoint_and_fill_the_gaps_of_the_history(tmp_path):
  from saat_jax.workdir import history_at

  workdir = str(tmp_path / "run")
  assert checkpointing.kept_records(workdir) == []  # nothing there, nothing created
  assert not os.path.exists(workdir)
  c = RunCheckpoints(workdir)
  rec = {e: {"epoch": e, "loss": float(e)} for e in range(5)}
  for e in (2, 3, 4):
    c.save("last", e, state(e), {"epoch": e, "record": rec[e]})
  c.save("best", 1, state(1), {"epoch": 1, "record": rec[1]})
  c.save("best", 5, state(1), {"epoch": 5})  # a meta without a record (from before records were kept)
  c.close()
  kept = checkpointing.kept_records(workdir)  # last 3 and 4 (two kept); best 5 replaced best 1, and has no record
  assert sorted(r["epoch"] for r in kept) == [3, 4]
  open(meta_file(workdir, "last", 3), "w").write("{not json")
  assert [r["epoch"] for r in checkpointing.kept_records(workdir)] == [4]

  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(json.dumps({**rec[0], "loss": -1.0}) + "\n" + json.dumps(rec[4]) + "\n")
  kept = [rec[1], {**rec[4], "loss": 9.0}, {**rec[2], "epoch": True}, {"epoch": 5}]  # past epoch 4, or no epoch
  hist, problems = history_at(str(metrics), {"epoch": 3, "record": rec[3]}, kept)
  # the file's lines first; the checkpoint's own record and the kept ones fill what it lacks, up to its epoch
  assert hist == [{**rec[0], "loss": -1.0}, rec[1], rec[3]]
  assert problems == ["the records of epoch(s) 2, 4 were missing and are restored from the checkpoints",
                      "epoch(s) 3 have no record"]
  hist, problems = history_at(str(metrics), {"epoch": 1, "record": rec[1]})
  assert hist == [{**rec[0], "loss": -1.0}, rec[1]]
  assert problems == ["the record of epoch 2 was missing and is restored from the checkpoint"]


def test_only_the_reports_of_orbaxs_pending_reads_are_dropped_after_a_failed_read(monkeypatch):
  """After a failed read, "Exception ignored in ..." reports of Orbax's coroutines left on its closed
  event loop, or of TensorStore completing them there, are dropped; any other report goes through."""
  import logging
  import types

  from orbax.checkpoint._src.serialization import serialization

  got = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: got.append((u.object, str(u.exc_value))))
  checkpointing.drop_failed_read()
  checkpointing.drop_failed_read()  # one filter, not two in a row
  previous = sys.unraisablehook.__defaults__[0]  # what the filter passes the other reports on to
  assert sys.unraisablehook.drops_orbax_leftovers and not hasattr(previous, "drops_orbax_leftovers")
  orbax_coroutine = serialization._read_array_index_and_device_put.__code__
  report = lambda obj, exc: types.SimpleNamespace(object=obj, exc_value=exc, exc_type=type(exc), err_msg=None)
  mine = (lambda: (yield))()  # any object that is not one of Orbax's coroutines
  sys.unraisablehook(report(types.SimpleNamespace(cr_code=orbax_coroutine), Exception("Encountered error while ...")))
  sys.unraisablehook(report(None, RuntimeError("Event loop is closed")))
  sys.unraisablehook(report(None, RuntimeError("something else")))
  sys.unraisablehook(report(mine, ValueError("mine")))
  assert got == [(None, "something else"), (mine, "mine")]
  assert not logging.getLogger("asyncio").disabled  # silenced only while collecting
