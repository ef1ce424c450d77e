"""Faults injected into a real checkpoint as an operator would meet them (issue 18): a data file of
the newest ``last`` truncated, deleted or emptied, one flipped byte in the weights (bit rot), 256
garbled bytes in the momentum. Each makes that checkpoint unreadable: named in a warning, set aside
by training, and the one before restored bit for bit, by training and by evaluation alike; with
none readable the evaluation CLI says so in one line. A checkpoint from before checksums loads
unverified, and a NaN loss right after resuming from one names it.

One tiny run (natural training of small_cnn on digits, 2 steps an epoch) is trained once; each test
damages a copy. A data file is found through TensorStore's own index of the checkpoint (OCDBT), so
each fault hits the array it means to.
"""

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorstore as ts

from saat_jax import checkpointing, evaluate, run_state, train
from saat_jax.run_state import model_from_spec

ROOT = Path(__file__).resolve().parents[1]
from saat_jax import main as launch
from saat_jax.testing.tiny import tiny_config
from saat_jax.health import MACHINE_DEPENDENT_KEYS  # noqa: E402

WEIGHTS = "params.conv2.kernel/0.0.0.0"  # arrays of small_cnn big enough to live in a data file
MOMENTUM = "opt_state.1.0.trace.fc1.kernel/0.0"


def cfg(**over):
  return tiny_config("natural", over)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "run"
  train.train_and_evaluate(cfg(), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints" / "last")) == ["1", "2"]
  return workdir


@pytest.fixture(scope="module")
def target(run):
  """A state of the run's structure to restore into (its values are not used)."""
  meta = checkpointing.read_meta(str(run))
  return train.initial_state(model_from_spec(meta["model"]), train.make_optimizer(cfg(), 2)[0], jax.random.key(0),
                             (8, 8, 1))


@pytest.fixture
def copy(run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  return workdir


def restored(workdir, target, epoch=None):
  ck = checkpointing.RunCheckpoints(str(workdir))
  try:
    return ck.restore("last", target, epoch)
  finally:
    ck.close()


def assert_same_arrays(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@contextlib.contextmanager
def reported():
  """What would be printed as "Exception ignored in ..." while the block runs or when its garbage is
  collected after it: the reads a failed one leaves pending in Orbax (evaluating a damaged
  checkpoint printed them, "Event loop is closed") must not be. (Whether a failed read leaves any
  depends on the threads' timing: most of this module's failed reads do.)"""
  got, previous = [], sys.unraisablehook
  sys.unraisablehook = lambda u: got.append(f"{u.err_msg} {u.object!r}: {u.exc_value!r}")
  try:
    yield got
    gc.collect()
  finally:
    sys.unraisablehook = previous


def locate(step_dir: Path, key: str) -> tuple[Path, int, int]:
  """``(data file, offset, length)`` of the value ``key`` (an array's chunk) in a checkpoint's state."""
  kv = ts.KvStore.open({"driver": "file", "path": f"{step_dir / 'state'}/"}).result()
  version = ts.ocdbt.dump(kv).result()["versions"][-1]
  assert version["root_height"] == 0  # one B-tree node holds every key of a checkpoint this small
  for entry in ts.ocdbt.dump(kv, version["root"]["location"]).result()["entries"]:
    if entry["key"] == key.encode():
      prefix, name, offset, length = entry["indirect_value"][len("value:"):].split(":")
      return step_dir / "state" / prefix / name, int(offset), int(length)
  raise KeyError(key)


def damage(step_dir: Path, fault: str) -> None:
  path, offset, length = locate(step_dir, MOMENTUM if fault == "garbled momentum" else WEIGHTS)
  data = bytearray(path.read_bytes())
  if fault == "truncated":
    data = data[:offset + length // 2]
  elif fault == "emptied":
    data = b""
  elif fault == "flipped byte":
    data[offset + length // 2] ^= 0x10
  elif fault == "garbled momentum":
    data[offset + length // 2:offset + length // 2 + 256] = np.random.default_rng(0).bytes(256)
  if fault == "deleted":
    path.unlink()
  else:
    path.write_bytes(bytes(data))


# what each fault makes of the newest checkpoint: TensorStore cannot read it, or its checksum differs
# (the arrays are read concurrently: the first error may be of any array in the damaged data file)
WHY = {"truncated": r"ValueError: OUT_OF_RANGE: Error reading \"[a-z_.0-9]+\.kernel/0\.0[.0]*\"",
       "deleted": r"ValueError: [A-Z_]+: Error reading \"[a-z_.0-9]+\.kernel/0\.0[.0]*\"",
       "emptied": r"ValueError: OUT_OF_RANGE: Error reading \"[a-z_.0-9]+\.kernel/0\.0[.0]*\"",
       "flipped byte": r"ChecksumError: state\.params\.conv2\.kernel does not match its checksum \(sha256 [0-9a-f]{16}"
                       r"\.\.\., [0-9a-f]{16}\.\.\. when saved\): the data changed after it was written",
       "garbled momentum": r"ChecksumError: state\.opt_state\.1\.0\.trace\.fc1\.kernel does not match its checksum"}


@pytest.mark.parametrize("fault", list(WHY))
@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_named_set_aside_and_the_one_before_restored_bit_for_bit(
    fault, run, copy, target, capsys):
  last = copy / "checkpoints" / "last"
  damage(last / "2", fault)
  capsys.readouterr()
  # evaluation (the weights only, nothing moved) ...
  with reported() as printed:
    variables, meta = run_state.restore_weights(str(copy), "last")
  assert printed == []
  err = capsys.readouterr().err
  if fault == "garbled momentum":  # not read by an evaluation: the weights of epoch 3 are sound
    assert meta["epoch"] == 2 and err == ""
    assert_same_arrays(variables, run_state.restore_weights(str(run), "last")[0])
  else:
    assert meta["epoch"] == 1
    assert re.fullmatch(rf"warning: the 'last' checkpoint {re.escape(str(last / '2'))} is unreadable \({WHY[fault]}"
                        r"[^\n]*\); using the one before it, step 1\n", err), err
    assert_same_arrays(variables, run_state.restore_weights(str(run), "last", epoch=1)[0])
  assert sorted(os.listdir(last)) == ["1", "2"]
  # ... and training: every array verified, the damaged checkpoint set aside
  with reported() as printed:
    state, meta = restored(copy, target)
  assert printed == []
  err = capsys.readouterr().err
  assert meta["epoch"] == 1
  assert re.search(rf"the 'last' checkpoint {re.escape(str(last / '2'))} is unreadable \({WHY[fault]}", err), err
  assert_same_arrays(state, restored(run, target, epoch=1)[0])
  aside = [n for n in os.listdir(last) if n.startswith("2.unreadable-")]
  assert sorted(os.listdir(last)) == ["1"] + aside and len(aside) == 1
  assert f"moved the unreadable 'last' checkpoint {last / '2'} to {last / aside[0]}" in err


@pytest.mark.slow
def test_a_resume_past_a_garbled_momentum_repeats_the_uninterrupted_run_and_ctrl_c_in_a_save_names_it(
    run, copy, target, monkeypatch, capsys):
  """The issue's case: 256 garbled bytes in the momentum of the newest checkpoint. The resume falls
  back to the one before and trains epoch 3 again to the uninterrupted run's state, bit for bit.
  The same run (one training, to keep the suite cheap) then gets Ctrl-C while Orbax writes epoch
  4's ``last``: the save completes, and the message names epoch 4."""
  import orbax.checkpoint as ocp

  last = copy / "checkpoints" / "last"
  damage(last / "2", "garbled momentum")
  real_save, sent = ocp.CheckpointManager.save, []

  def ctrl_c_in_epoch_4s_save(self, step, *args, **kwargs):
    saving = real_save(self, step, *args, **kwargs)  # Orbax's thread now writes it
    if Path(str(self.directory)) == last and step == 3:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGINT)
    return saving

  monkeypatch.setattr(ocp.CheckpointManager, "save", ctrl_c_in_epoch_4s_save)
  capsys.readouterr()
  assert launch.run(cfg(num_epochs=4), str(copy)) == 130
  out, err = capsys.readouterr()
  assert sent == [True]
  assert f"the 'last' checkpoint {last / '2'} is unreadable (ChecksumError: state.opt_state.1.0.trace" in err
  assert "resuming" in out and "after epoch 2 of 4" in out
  assert "interrupted at epoch 4 step 8; the last checkpoint is epoch 4: run the same command to resume" in err
  assert "Traceback" not in err
  monkeypatch.undo()
  assert sorted(n for n in os.listdir(last) if not n.startswith("2.unreadable-")) == ["2", "3"]
  assert_same_arrays(restored(copy, target, epoch=2)[0], restored(run, target)[0])  # epoch 3 trained again
  assert restored(copy, target)[1]["epoch"] == 3
  same = lambda r: {k: v for k, v in r.items() if k not in MACHINE_DEPENDENT_KEYS}
  got = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
  want = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  # Ctrl-C waited for epoch 4's metrics line too: the file is the uninterrupted run's, plus epoch 4
  assert [same(r) for r in got[:3]] == [same(r) for r in want] and [r["epoch"] for r in got] == [0, 1, 2, 3]
  assert same(got[3]) == same(restored(copy, target)[1]["record"])


@pytest.mark.slow
def test_the_evaluation_cli_falls_back_with_a_warning_and_says_in_one_line_when_none_can_be_read(copy, capsys):
  last = copy / "checkpoints" / "last"
  damage(last / "2", "flipped byte")
  capsys.readouterr()
  argv = ["--workdir", str(copy), "--eval.checkpoints=last", "--eval.attacks=natural"]
  with reported() as printed:
    assert evaluate.main(argv) == 0
  assert printed == []
  out, err = capsys.readouterr()
  assert f"warning: the 'last' checkpoint {last / '2'} is unreadable (ChecksumError: " in err
  assert json.loads((copy / "eval.json").read_text())["checkpoints"]["last"]["epoch"] == 2
  damage(last / "1", "truncated")
  with reported() as printed:
    assert evaluate.main(argv) == 2
  assert printed == []
  out, err = capsys.readouterr()
  assert re.fullmatch(rf"error: no 'last' checkpoint in {re.escape(str(last))} can be read: it is damaged \(step 2: "
                      rf"{WHY['flipped byte']}; step 1: {WHY['truncated']}[^\n]*\)\. Evaluate another checkpoint "
                      rf"\(--eval.checkpoints\), or restore {re.escape(str(last))} from a backup\n", err), err


@pytest.mark.slow
def test_a_checkpoint_from_before_checksums_loads_and_a_nan_right_after_it_names_it(run, copy, target, capsys):
  """A checkpoint without checksums (written before they were recorded) is used with one note; a NaN
  loss before the run has saved anything of its own names that checkpoint, not the learning rate.
  (A restore verified against checksums is the state that was saved: the learning rate it is.)"""
  last = copy / "checkpoints" / "last"
  for step in ("1", "2"):
    path = last / step / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["checksums"]
    path.write_text(json.dumps(meta))
  capsys.readouterr()
  ck = checkpointing.RunCheckpoints(str(copy))
  state, meta = ck.restore("last", target)
  assert meta["epoch"] == 2
  assert capsys.readouterr().out == (f"the 'last' checkpoint {last / '2'} has no checksums (written before saat_jax "
                                     "recorded them): its arrays are used unverified\n")
  assert_same_arrays(state, restored(run, target)[0])
  advice = train.divergence_advice(ck, str(copy))
  assert advice.startswith(f"the run resumed from {last / '2'}, which has no checksums (written before saat_jax "
                           "recorded them) and so could not be verified, and has saved nothing since: a damaged file "
                           "in that checkpoint would do this. Move that directory aside")
  ck.restore("last", target, epoch=1)
  ck.save("last", 3, state, {"epoch": 3})  # the run's own checkpoint: from here on a NaN is the run's
  assert train.divergence_advice(ck, str(copy)) == (f"the last good checkpoint, epoch 4, is kept in {last}. "
                                                     "Lower optim.lr or check the data.")
  ck.close()


_RESTORE_ON_TWO_PROCESSES = textwrap.dedent("""
    import json, sys
    workdir, pid, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from saat_jax import distributed
    distributed.initialize(f"localhost:{port}", 2, pid, timeout_s=120)
    import numpy as np
    from saat_jax import checkpointing
    real_verify = checkpointing._verify

    def verify(restored, sums):  # what process 1 alone read of the newest (w = 3) is not what was saved
      if pid == 1 and float(restored["state"]["w"][0]) == 3.0:
        raise checkpointing.ChecksumError("state.w does not match its checksum on process 1")
      real_verify(restored, sums)

    checkpointing._verify = verify
    ck = checkpointing.RunCheckpoints(workdir)
    state, meta = ck.restore("last", {"w": np.zeros(3, np.float32)})
    print(json.dumps({"epoch": meta["epoch"], "w": np.asarray(state["w"]).tolist(), "latest": ck.latest_epoch()}))
    ck.close()
""")


@pytest.mark.slow
def test_with_two_processes_a_checkpoint_one_of_them_cannot_read_is_unreadable_for_both(tmp_path):
  """Every process restores and verifies what it read (after Orbax's read, which the processes make
  together); they agree on each checkpoint, so that all go on from the same one (one that went on
  from another would train apart), and only process 0 moves the unreadable one aside."""
  from saat_jax.testing.processes import Procs, free_port, has_cpu_collectives

  if not has_cpu_collectives():
    pytest.skip("this jaxlib has no CPU collectives (gloo)")
  workdir = tmp_path / "run"
  ck = checkpointing.RunCheckpoints(str(workdir))
  for epoch in range(3):
    ck.save("last", epoch, {"w": np.full(3, epoch + 1, np.float32)}, {"epoch": epoch})
  ck.close()
  port = free_port()
  procs = Procs(tmp_path / "logs", [[sys.executable, "-c", _RESTORE_ON_TWO_PROCESSES, str(workdir), str(i), str(port)]
                                    for i in range(2)], devices=1)
  try:
    assert procs.wait() == [0, 0], procs.dump()
  finally:
    procs.kill()
  (out0, err0), (out1, err1) = procs.text(0), procs.text(1)
  for out in (out0, out1):
    assert json.loads(out.strip().splitlines()[-1]) == {"epoch": 1, "w": [2.0, 2.0, 2.0], "latest": 1}, procs.dump()
  last = workdir / "checkpoints" / "last"
  assert (f"warning: the 'last' checkpoint {last / '2'} is unreadable (CheckpointError: another process could not "
          "read it (its log says why)); using the one before it, step 1") in err0
  assert "warning" not in err1  # (only process 0 prints)
  assert sorted(n.split("-")[0] for n in os.listdir(last)) == ["1", "2.unreadable"]
