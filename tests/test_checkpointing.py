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
    assert checkpointing._pid_alive(child.pid)
    time.sleep(0.2)
    assert child.poll() is None
  finally:
    child.kill()
    child.wait()
  assert not checkpointing._pid_alive(dead_pid())
  for error in (PermissionError, OSError):  # EPERM: another user's process, alive
    def kill(pid, sig, error=error):
      raise error("no")
    monkeypatch.setattr(checkpointing.os, "kill", kill)
    assert checkpointing._pid_alive(12345)


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
