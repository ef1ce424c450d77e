"""The metric writer and the logging path: metrics.jsonl and TensorBoard scalars written by process 0
only, read back here from the event files' own format (TFRecord framing + the Event protobuf), and
the saat_jax logger's stdout/stderr split."""

import json
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from saat_jax import log, metric_writer
from saat_jax.metric_writer import MetricWriter

ROOT = Path(__file__).resolve().parents[1]


def read_events(path: Path) -> list:
  """Every Event of one TensorBoard event file: records of <u64 length><u32 crc><data><u32 crc>."""
  data, events, pos = path.read_bytes(), [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
    pos += 12 + n + 4
  return events


def scalars_of(workdir: Path) -> dict:
  """{tag: {step: value}} over all event files, later files winning (as TensorBoard after a purge)."""
  out = {}
  for f in sorted((workdir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
    for ev in read_events(f):
      for v in ev.summary.value:
        out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


REC = [{"epoch": 0, "step": 10, "lr": 0.1, "train_loss": 2.0, "test_pgd_accuracy": 0.25, "evaluated": True,
        "ema_test_natural_accuracy": 0.5, "attack_eps_mean": 7.5, "best_epoch": 0},
       {"epoch": 1, "step": 20, "lr": 0.01, "train_loss": 1.5, "test_pgd_accuracy": 0.375, "evaluated": True,
        "ema_test_natural_accuracy": 0.625, "attack_eps_mean": 8.5, "best_epoch": 1}]


def test_tags_group_by_split():
  assert metric_writer.tag("test_pgd_accuracy") == "test/pgd_accuracy"
  assert metric_writer.tag("ema_trainsub_pgd_accuracy") == "ema_trainsub/pgd_accuracy"
  assert metric_writer.tag("attack_eps_q10") == "attack/eps_q10"
  assert metric_writer.tag("lr") == "lr"
  assert metric_writer.scalars(REC[0]) == {"lr": 0.1, "train/loss": 2.0, "test/pgd_accuracy": 0.25,
                                           "ema_test/natural_accuracy": 0.5, "attack/eps_mean": 7.5}


def test_jsonl_and_tensorboard_hold_the_same_numbers(tmp_path):
  w = MetricWriter(str(tmp_path), primary=True)
  w.start([])
  for i in range(len(REC)):
    w.write(REC[:i + 1])
  w.close()
  assert [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == REC
  got = scalars_of(tmp_path)
  assert got["test/pgd_accuracy"] == {1: 0.25, 2: 0.375}  # 1-based epochs, as the progress lines
  assert got["lr"] == {1: pytest.approx(0.1), 2: pytest.approx(0.01)}
  assert set(got) == set(metric_writer.scalars(REC[0]))


def test_a_resume_purges_what_the_interrupted_run_logged_past_its_checkpoint(tmp_path):
  w = MetricWriter(str(tmp_path), primary=True)
  w.start([])
  w.write(REC[:1])
  w.write(REC)  # epoch 2 logged, but (say) its checkpoint never written: the resume redoes it
  w.close()
  w = MetricWriter(str(tmp_path), primary=True)
  w.start(REC[:1])
  w.write([REC[0], {**REC[1], "train_loss": 1.25}])
  w.close()
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
  assert len(files) == 2
  starts = [e for e in read_events(files[1]) if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in starts] == [(2, event_pb2.SessionLog.START)]
  assert scalars_of(tmp_path)["train/loss"] == {1: 2.0, 2: 1.25}
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_other_processes_write_nothing(tmp_path):
  w = MetricWriter(str(tmp_path), primary=False)
  w.start([])
  w.write(REC)
  w.close()
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_training_run_logs_its_epochs_to_tensorboard(tiny_runs):
  hist = tiny_runs.records("at")
  got = scalars_of(tiny_runs["at"])
  for r in hist:
    for name, value in metric_writer.scalars(r).items():
      assert got[name][r["epoch"] + 1] == pytest.approx(value, rel=1e-6), name


def test_log_lines_go_to_stdout_warnings_to_stderr_and_only_process_0_prints(capsys, monkeypatch):
  log.info("epoch 1 | loss 2.0")
  log.warn("the cache is unwritable")
  out, err = capsys.readouterr()
  assert out == "epoch 1 | loss 2.0\n" and err == "warning: the cache is unwritable\n"
  import jax
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  log.info("epoch 1 | loss 2.0")
  log.warn("the cache is unwritable")
  log.error("the coordinator is unreachable")
  out, err = capsys.readouterr()
  assert out == "" and err == "error: the coordinator is unreachable\n"
