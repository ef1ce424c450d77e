"""Preemption and broken checkpoints: SIGTERM finishes the step, saves the position inside the epoch
and stops (launch.py exits 143: tests/test_distributed.py sends the signal to real processes); the
next launch continues from that step and ends with the parameters and metrics of an uninterrupted
run, bit for bit. ``checkpoint_every_steps`` bounds what a hard kill loses. The two
newest ``last`` checkpoints are kept: an unreadable newest one is named and the run falls back to
the one before; with none readable the run stops, never silently starting over. Where several
processes agree on a stop (``preemption.StopAgreement``): about once a second at a steady pace,
after the steps have finished, one interval after the request at the latest; one process reads its
request after every step without exchanging anything."""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from saat_jax import checkpointing, parallel, preemption, run_state, train
from saat_jax.workdir import TrainingPreempted

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.testing.tiny import STEPS_INSIDE, tiny_config

# 5 steps an epoch, augmentation on, SA-PGD: every source of randomness is in play
TINY = {**STEPS_INSIDE, "check_every": 2}
from saat_jax.health import MACHINE_DEPENDENT_KEYS as MACHINE_DEPENDENT  # noqa: E402


def config(**over):
  return tiny_config("saat_up", {**TINY, **over})


def outcome(workdir):
  _, variables, _, _ = run_state.restore_for_eval(str(workdir), "last")
  recs = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return variables, [{k: v for k, v in r.items() if k not in MACHINE_DEPENDENT} for r in recs]


def assert_same(a, b):
  (va, ra), (vb, rb) = a, b
  for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert ra == rb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ref") / "run"
  train.train_and_evaluate(config(), str(workdir))
  return workdir, outcome(workdir)


def on_batch(monkeypatch, n, action):
  """Run ``action()`` when the n-th training batch (1-based) is put on the devices: the calls from
  the training loop (``saat_jax.train``) count, the evaluator's batches do not."""
  real, calls = parallel.shard_batch, [0]

  def shard_batch(*args, **kwargs):
    if sys._getframe(1).f_globals.get("__name__") == "saat_jax.train":
      calls[0] += 1
      if calls[0] == n:
        action()
    return real(*args, **kwargs)

  monkeypatch.setattr(train.parallel, "shard_batch", shard_batch)


@pytest.mark.slow
def test_sigterm_saves_the_position_and_the_next_launch_ends_as_an_uninterrupted_run(
    uninterrupted, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  on_batch(monkeypatch, 8, lambda: os.kill(os.getpid(), signal.SIGTERM))  # epoch 2, step 3 of 5
  with pytest.raises(TrainingPreempted, match=r"SIGTERM at epoch 2, step 3 of 5 .*run the same command"):
    train.train_and_evaluate(config(), str(workdir))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
  assert os.listdir(workdir / "checkpoints" / "partial") == ["8"]
  monkeypatch.undo()
  capsys.readouterr()
  train.train_and_evaluate(config(), str(workdir))
  assert "continuing epoch 2 from step 3 of 5 (global step 8)" in capsys.readouterr().out
  assert_same(outcome(workdir), uninterrupted[1])
  assert os.listdir(workdir / "checkpoints" / "partial") == []  # cleared once its epoch ended


@pytest.mark.slow
def test_sigterm_during_an_epochs_last_step_stops_after_its_checkpoint(uninterrupted, tmp_path, monkeypatch):
  """Noticed after the epoch's last step: the epoch is finished, evaluated and saved, then the run
  stops (the next epoch is not begun); the next launch resumes after it."""
  workdir = tmp_path / "run"
  on_batch(monkeypatch, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))  # the last step of epoch 1
  with pytest.raises(TrainingPreempted, match=r"SIGTERM after epoch 1; its checkpoint is saved"):
    train.train_and_evaluate(config(), str(workdir))
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
  assert os.listdir(workdir / "checkpoints" / "partial") == []
  monkeypatch.undo()
  train.train_and_evaluate(config(), str(workdir))
  assert_same(outcome(workdir), uninterrupted[1])


@pytest.mark.slow
def test_checkpoint_every_steps_bounds_what_a_hard_kill_loses(uninterrupted, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"

  def killed():
    raise SystemExit("killed")  # as a process killed in the middle of epoch 2: nothing more is written

  on_batch(monkeypatch, 10, killed)  # epoch 2, step 5: positions were saved at global steps 3, 6, 9
  with pytest.raises(SystemExit):
    train.train_and_evaluate(config(checkpoint_every_steps=3), str(workdir))
  monkeypatch.undo()
  capsys.readouterr()
  train.train_and_evaluate(config(checkpoint_every_steps=3), str(workdir))
  assert "continuing epoch 2 from step 4 of 5 (global step 9)" in capsys.readouterr().out
  assert_same(outcome(workdir), uninterrupted[1])


def damage(step_dir: Path):
  (step_dir / "meta" / "metadata").write_text("{not json")
  shutil.rmtree(step_dir / "state")


@pytest.mark.slow
def test_an_unreadable_newest_checkpoint_is_named_and_the_one_before_is_used(uninterrupted, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  last = workdir / "checkpoints" / "last"
  assert sorted(os.listdir(last)) == ["1", "2"]  # the two newest epochs are kept
  damage(last / "2")
  # a save killed half way leaves Orbax's temporary directory, which is never read
  (last / "3.orbax-checkpoint-tmp-1234").mkdir()
  capsys.readouterr()
  train.train_and_evaluate(config(), str(workdir))
  out, err = capsys.readouterr()
  assert f"the 'last' checkpoint {last / '2'} is unreadable" in err and "using the one before it, step 1" in err
  assert "resuming" in out and "after epoch 2 of 3" in out
  assert_same(outcome(workdir), uninterrupted[1])  # epoch 3 trained again, to the same numbers


@pytest.mark.slow
def test_no_readable_checkpoint_stops_the_run_instead_of_starting_over(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  for step in ("1", "2"):
    damage(workdir / "checkpoints" / "last" / step)
  before = (workdir / "metrics.jsonl").read_text()
  with pytest.raises(checkpointing.CheckpointError, match="Nothing was started over"):
    train.train_and_evaluate(config(), str(workdir))
  assert (workdir / "metrics.jsonl").read_text() == before


# ---- where several processes agree on a stop (preemption.StopAgreement) --------------------------


def test_next_interval_fits_the_pace_in_the_time_and_at_most_doubles():
  from saat_jax.preemption import next_interval

  assert next_interval(8, 0.8, every_s=1.0) == 10  # 0.1 s a step: 10 steps a second
  assert next_interval(4, 0.4, every_s=1.0) == 8  # 10 would fit, but an interval at most doubles
  assert next_interval(5, 2.5, every_s=1.0) == 2  # 0.5 s a step
  assert next_interval(1, 30.0, every_s=1.0) == 1  # the first step (compiling) is slow: still every step
  assert next_interval(3, 0.0, every_s=1.0) == 6  # no measurable time: double


class FakeProcesses:
  """Two processes as ``StopAgreement`` sees them: a clock, and the exchange of its flag and
  process 0's proposal (recorded; the other process is given ``other_flag``)."""

  def __init__(self, monkeypatch, pace_s=0.1):
    self.now, self.pace_s, self.exchanges, self.other_flag = 0.0, pace_s, [], False
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.distributed, "agree_on_stop", self.exchange)
    monkeypatch.setattr(preemption.time, "monotonic", lambda: self.now)

  def exchange(self, flag, next_step):
    self.exchanges.append((flag, next_step))
    return flag or self.other_flag, next_step

  def run(self, agreement, steps, start=0):
    """``{step: stop}`` for the steps at which the processes exchanged their flags."""
    out = {}
    for step in range(start + 1, start + steps + 1):
      self.now += self.pace_s
      n = len(self.exchanges)
      stop = agreement.after_steps(step)
      if len(self.exchanges) > n:
        out[step] = stop
      else:
        assert stop is False
    return out


def test_processes_agree_about_every_second_and_a_stop_waits_for_the_next_agreement(monkeypatch):
  from saat_jax.preemption import StopAgreement, StopRequest

  procs, request = FakeProcesses(monkeypatch, pace_s=0.125), StopRequest()
  agreement = StopAgreement(request, step=0, every_s=1.5)
  # 1, 2, 4, 8 steps, then the 12 that fit in 1.5 s at 0.125 s a step
  assert procs.run(agreement, 39) == {1: False, 3: False, 7: False, 15: False, 27: False, 39: False}
  request.signum = signal.SIGTERM  # arrives after step 39: acted on at 51, one interval (1.5 s) later
  assert procs.run(agreement, 12, start=39) == {51: True}
  assert [f for f, _ in procs.exchanges] == [False] * 6 + [True]
  # steps that become 3x slower stretch one interval, then the pace is caught up with
  procs.pace_s = 0.375
  assert procs.run(agreement, 20, start=51) == {63: True, 67: True, 71: True}
  # after an epoch's end (at step 80) the next agreement is one interval on, the pace kept
  request.signum = None
  agreement.between_epochs(80)
  assert procs.run(agreement, 4, start=80) == {84: False}


def test_a_request_on_another_process_stops_this_one_too(monkeypatch):
  from saat_jax.preemption import StopAgreement, StopRequest

  procs = FakeProcesses(monkeypatch)
  agreement = StopAgreement(StopRequest(), step=100)
  procs.other_flag = True
  assert procs.run(agreement, 3, start=100) == {101: True, 103: True}


def test_the_request_is_read_after_the_dispatched_steps_have_finished(monkeypatch):
  """A SIGTERM that comes while the devices finish the interval's steps is acted on at this
  agreement, not the next one."""
  from saat_jax.preemption import StopAgreement, StopRequest

  FakeProcesses(monkeypatch)
  request = StopRequest()

  class Pending:  # the last dispatch's output: the signal comes while waiting for it
    def block_until_ready(self):
      request.signum = signal.SIGTERM
      return self

  assert StopAgreement(request, step=0).after_steps(1, Pending()) is True


def test_one_process_reads_its_request_after_every_step_without_exchanging(monkeypatch):
  from saat_jax.preemption import StopAgreement, StopRequest

  def exchange(*args):
    raise AssertionError("one process exchanged its flag")

  monkeypatch.setattr(preemption.distributed, "agree_on_stop", exchange)
  request = StopRequest()
  agreement = StopAgreement(request, step=0)
  assert [agreement.after_steps(s) for s in (1, 2)] == [False, False]
  request.signum = signal.SIGTERM
  assert agreement.after_steps(3) is True
