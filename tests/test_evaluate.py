"""Evaluation of a run: RD (Sec. 3.1), the Table-1 report, the eps sweep and the CLI's errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from saat_jax import evaluate
from saat_jax.evaluate import robustness_disparity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import saat_digits  # noqa: E402


def test_rd_matches_hand_computation():
  eps = [0, 2, 4, 8]
  acc = [0.9, 0.8, 0.6, 0.3]
  # (1/3) * ((0.9-0.8)/2 + (0.9-0.6)/4 + (0.9-0.3)/8)
  assert robustness_disparity(eps, acc) == pytest.approx((0.05 + 0.075 + 0.075) / 3)
  # a model whose accuracy does not drop has RD 0; order of budgets does not matter
  assert robustness_disparity([4, 0, 2], [0.7, 0.7, 0.7]) == 0.0
  with pytest.raises(ValueError, match="eps = 0"):
    robustness_disparity([2, 4], [0.5, 0.4])
  with pytest.raises(ValueError, match="> 0"):
    robustness_disparity([0], [0.5])


def test_sweep_pgd_schedule_follows_released_code():
  assert evaluate.sweep_pgd_schedule(8) == (2 / 255, 20)
  assert evaluate.sweep_pgd_schedule(2) == (2 / 255, 5)
  assert evaluate.sweep_pgd_schedule(16) == (2 / 255, 40)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  from saat_jax.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp("run")
  c = saat_digits.get_config()
  c.progress = False
  c.num_epochs = 2
  hist = train_and_evaluate(c, str(workdir))
  return workdir, hist


def test_cli_reports_table_sweep_and_plot(digits_run, capsys):
  workdir, hist = digits_run
  out = workdir / "eval.json"
  rc = evaluate.main(["--workdir", str(workdir), "--attacks", "natural,pgd20", "--eps", "32",
                      "--sweep", "0,16,32,48", "--out", str(out)])
  assert rc == 0
  report = json.loads(out.read_text())
  last, best = report["checkpoints"]["last"], report["checkpoints"]["best"]
  assert last["epoch"] == 2 and best["epoch"] == hist[-1]["best_epoch"] + 1
  # the same natural accuracy as the training loop measured for the last epoch, and PGD-20 with the
  # run's eps/alpha and random starts (checked on 'last', evaluated after 'best' and its sweep, so a
  # sweep must not leak its step size into the next checkpoint). PGD is not bit-identical: the two
  # jitted programs round differently and sign-gradient steps amplify that (0.5 point here).
  assert last["natural"] == pytest.approx(hist[-1]["test_natural_accuracy"])
  assert last["pgd20"] == pytest.approx(hist[-1]["test_pgd_accuracy"], abs=0.02)
  assert last["pgd20"] < last["natural"]
  accs = last["sweep"]["accuracy"]
  assert accs[0] == pytest.approx(last["natural"])
  assert all(a >= b - 0.01 for a, b in zip(accs, accs[1:]))  # accuracy falls with the budget
  assert last["rd"] == pytest.approx(robustness_disparity([0, 16, 32, 48], accs))
  assert (workdir / "eval_sweep.png").stat().st_size > 1000
  printed = capsys.readouterr().out
  assert "Natural" in printed and "PGD-20" in printed and "RD" in printed


def test_cli_autoattack_column(digits_run, capsys):
  """The AA column: the standard AutoAttack of saat_jax.autoattack on the checkpoint, at the run's eps."""
  import jax
  import jax.numpy as jnp

  from saat_jax.autoattack import autoattack
  from saat_jax.input_pipeline import load_dataset, to_float

  workdir, _ = digits_run
  out = workdir / "eval_aa.json"
  rc = evaluate.main(["--workdir", str(workdir), "--checkpoints", "last", "--attacks", "natural,pgd20,aa",
                      "--num-test", "64", "--out", str(out)])
  assert rc == 0
  row = json.loads(out.read_text())["checkpoints"]["last"]
  assert row["num_test"] == 64
  assert row["aa"] <= row["natural"]          # AA only keeps correctly classified points
  assert row["aa"] <= row["pgd20"] + 1 / 64   # and is at least as strong as PGD-20
  # the CLI's number is the driver's, run directly on the same checkpoint, points, eps and seed
  model, variables, _, cfg = evaluate._restore_for_eval(str(workdir), "last")
  data = load_dataset("digits", None)
  res = autoattack(jax.jit(lambda x: model.apply(variables, x, train=False)), to_float(data.test_images[:64]),
                   jnp.asarray(data.test_labels[:64]), eps=float(cfg.eval.eps), seed=0)
  assert row["aa"] == pytest.approx(float(np.mean(np.asarray(res.robust))))
  assert "AA" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--eps", "-1"], "--eps must be >= 0"),
    (["--attacks", "natural,cw"], "unknown attack 'cw'"),
    (["--checkpoints", "middle"], "unknown checkpoint"),
    (["--sweep", "0,-2"], "budgets must be >= 0"),
])
def test_cli_rejects_bad_arguments(digits_run, capsys, argv, match):
  workdir, _ = digits_run
  assert evaluate.main(["--workdir", str(workdir), *argv]) == 2
  assert match in capsys.readouterr().err


def test_cli_without_checkpoint(tmp_path, capsys):
  assert evaluate.main(["--workdir", str(tmp_path)]) == 2
  assert "no checkpoint" in capsys.readouterr().err
