"""Evaluation of a run: the Table-1 report, the eps sweep and the CLI's errors (the evaluators
themselves, RD included: tests/test_evaluators.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from saat_jax import evaluate, run_state
from saat_jax.evaluators import robustness, robustness_disparity

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import saat_digits_config
from saat_jax.testing.tiny import tiny_config


AA_POINTS = 20  # AutoAttack is the costly part: its tests attack few points


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  from saat_jax.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp("run")
  c = saat_digits_config()
  c.progress = False
  c.num_epochs = 2
  hist = train_and_evaluate(c, str(workdir))
  return workdir, hist


@pytest.mark.slow
def test_cli_reports_table_sweep_and_plot(digits_run, capsys):
  workdir, hist = digits_run
  out = workdir / "eval.json"
  rc = evaluate.main(["--workdir", str(workdir), "--eval.attacks=natural,pgd20", "--eval.eps=32",
                      "--eval.sweep=0,16,32,48", "--out", str(out)])
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


@pytest.mark.slow
def test_cli_autoattack_column(digits_run, capsys):
  """The AA column: the standard AutoAttack of saat_jax.autoattack on the checkpoint, at the run's eps."""
  import jax
  import jax.numpy as jnp

  from saat_jax.autoattack import autoattack
  from saat_jax.data import load_dataset, to_float

  workdir, _ = digits_run
  out = workdir / "eval_aa.json"
  rc = evaluate.main(["--workdir", str(workdir), "--eval.checkpoints=last", "--eval.attacks=natural,pgd20,aa",
                      f"--eval.num_test={AA_POINTS}", "--out", str(out)])
  assert rc == 0
  row = json.loads(out.read_text())["checkpoints"]["last"]
  assert row["num_test"] == AA_POINTS
  assert row["aa"] <= row["natural"]          # AA only keeps correctly classified points
  assert row["aa"] <= row["pgd20"] + 1 / AA_POINTS   # and is at least as strong as PGD-20
  # the CLI's number is the driver's, run directly on the same checkpoint, points, eps and seed
  model, variables, _, cfg = run_state.restore_for_eval(str(workdir), "last")
  data = load_dataset("digits", None)
  res = autoattack(jax.jit(lambda x: model.apply(variables, x, train=False)), to_float(data.test_images[:AA_POINTS]),
                   jnp.asarray(data.test_labels[:AA_POINTS]), eps=float(cfg.eval.eps), seed=0)
  assert row["aa"] == pytest.approx(float(np.mean(np.asarray(res.robust))))
  assert "AA" in capsys.readouterr().out
  # the AutoAttack self-checks and the table's order check are in the JSON
  checks = {c["check"]: c for c in row["checks"]}
  assert {"randomized", "probabilities", "zero_gradients", "dynamic", "settings", "verification",
          "accuracy_order"} <= set(checks)
  assert checks["verification"]["status"] == "ok"
  assert checks["verification"]["n_verified"] == round(AA_POINTS * (1 - row["aa"]))


@pytest.mark.slow
def test_accuracy_order_violation_is_reported(digits_run, monkeypatch, capsys):
  """A PGD-20 accuracy above the natural one (injected) is flagged in the JSON and warned about."""
  workdir, _ = digits_run
  real_run = evaluate.RobustnessEvaluator.run

  def inflated(self, *args, **kwargs):
    out = real_run(self, *args, **kwargs)
    out["pgd_accuracy"] = out["natural_accuracy"] + 2 / 64
    return out

  monkeypatch.setattr(evaluate.RobustnessEvaluator, "run", inflated)
  report = evaluate.evaluate_run(str(workdir), kinds=("last",), attacks=("natural", "pgd20"), num_test=64)
  rec = report["checkpoints"]["last"]["checks"][-1]
  assert rec["check"] == "accuracy_order" and rec["status"] == "flagged"
  assert rec["violations"] == ["pgd20 > natural"]
  assert "warning: AutoAttack check 'accuracy_order'" in capsys.readouterr().err
  assert "(2 points)" in rec["message"]


@pytest.mark.slow
def test_a_second_evaluation_keeps_what_the_first_measured(digits_run, tmp_path, capsys):
  """eval.json is merged, not overwritten: AA of a first evaluation survives a PGD-only second one
  with the same settings; an evaluation with other settings moves the earlier file aside."""
  workdir, _ = digits_run
  out = tmp_path / "eval.json"
  common = ["--workdir", str(workdir), "--eval.checkpoints=last", f"--eval.num_test={AA_POINTS}", "--out", str(out)]
  assert evaluate.main([*common, "--eval.attacks=natural,aa"]) == 0
  first = json.loads(out.read_text())["checkpoints"]["last"]
  assert evaluate.main([*common, "--eval.attacks=pgd20"]) == 0
  second = json.loads(out.read_text())["checkpoints"]["last"]
  assert second["aa"] == first["aa"] and second["natural"] == first["natural"] and "pgd20" in second
  # the AutoAttack self-checks of the first run stay beside its AA number
  assert {c["check"] for c in first["checks"]} <= {c["check"] for c in second["checks"]}
  assert list(tmp_path.glob("eval-*.json")) == []
  assert evaluate.main([*common, "--eval.attacks=natural", "--eval.eps=16"]) == 0
  (kept,) = tmp_path.glob("eval-*.json")
  assert json.loads(kept.read_text())["checkpoints"]["last"] == second
  third = json.loads(out.read_text())
  assert third["eps_255"] == 16 and set(third["checkpoints"]["last"]) == {"epoch", "num_test", "natural", "checks"}
  assert f"kept as {kept}" in capsys.readouterr().out


def test_merge_into_replaces_a_stale_checkpoint_and_an_old_rd(tmp_path):
  """A checkpoint re-evaluated at another epoch (the run trained on) drops its older numbers; a new
  sweep drops the RD of the older one; a damaged eval.json is kept aside, not lost."""
  out = str(tmp_path / "eval.json")
  base = {"workdir": "w", "eps_255": 8.0, "alpha_255": 2.0, "weights": "raw", "num_test": 10, "seed": None,
          "aa_version": "standard", "sweep_attack": "pgd"}
  evaluate.merge_into(out, {**base, "checkpoints": {"best": {"epoch": 3, "aa": 0.4, "rd": 0.01},
                                                    "last": {"epoch": 5, "aa": 0.3}}})
  merged, kept = evaluate.merge_into(out, {**base, "checkpoints": {
      "best": {"epoch": 3, "sweep": {"eps_255": [0, 4], "accuracy": [0.9, 0.5]}},
      "last": {"epoch": 6, "natural": 0.8}}})
  assert kept is None
  assert merged["checkpoints"] == {"best": {"epoch": 3, "aa": 0.4, "sweep": {"eps_255": [0, 4], "accuracy": [0.9, 0.5]}},
                                   "last": {"epoch": 6, "natural": 0.8}}
  assert json.loads(Path(out).read_text()) == merged
  Path(out).write_text("{not json")
  _, kept = evaluate.merge_into(out, {**base, "checkpoints": {}})
  assert Path(kept).read_text() == "{not json"


@pytest.mark.slow
def test_cli_flags_in_launch_style(digits_run, capsys):
  workdir, _ = digits_run
  assert evaluate.main(["--workdir", str(workdir), "--eval.atacks=aa"]) == 2
  assert "unknown setting --eval.atacks (did you mean --eval.attacks?)" in capsys.readouterr().err
  assert evaluate.main(["--workdir", str(workdir), "--attacks", "aa"]) == 2
  assert "Unknown command line flag 'attacks'" in capsys.readouterr().err
  assert evaluate.main(["--help"]) == 0
  assert "--eval.num_test=0" in capsys.readouterr().out


def test_restore_reads_the_weights_only(tiny_runs):
  """run_state restores params and batch_stats from the checkpoint's own metadata, without an optimizer
  or an image shape: the same arrays as restoring the whole training state."""
  import jax

  from saat_jax import checkpointing, train

  workdir = tiny_runs["saat_up"]  # 3 epochs: the last checkpoint is epoch 2's
  model, variables, meta, cfg = run_state.restore_for_eval(str(workdir), "last")
  assert meta["epoch"] == 2 and meta["image_shape"] == [8, 8, 1] and cfg.data.name == "digits"
  ck = checkpointing.RunCheckpoints(str(workdir))
  full, _ = ck.restore("last", train.initial_state(model, train.make_optimizer(cfg, 1)[0], jax.random.key(0),
                                                   (8, 8, 1)))
  ck.close()
  assert jax.tree.structure(variables) == jax.tree.structure(full.variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(full.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # checkpoints written before image_shape was recorded: the shape is guessed from the data set
  old = {k: v for k, v in meta.items() if k != "image_shape"}
  assert run_state.image_shape(old) == (8, 8, 1)
  assert run_state.image_shape({"config": {"data": {"name": "cifar10"}}}) == (32, 32, 3)
  with pytest.raises(checkpointing.CheckpointError, match="does not fit"):
    run_state.check_weights_fit(run_state.model_from_spec({**meta["model"], "num_classes": 5}), variables,
                                (8, 8, 1), str(workdir))
  with pytest.raises(ValueError, match="without an EMA"):
    run_state.restore_for_eval(str(workdir), "last", weights="ema")


@pytest.mark.parametrize("argv,match", [
    (["--eval.eps=-1"], "--eval.eps must be >= 0"),
    (["--eval.attacks=natural,cw"], "unknown attack 'cw'"),
    (["--eval.checkpoints=middle"], "unknown checkpoint"),
    (["--eval.sweep=0,-2"], "budgets must be >= 0"),
])
def test_cli_rejects_bad_arguments(tiny_runs, capsys, argv, match):
  workdir = tiny_runs["saat_up"]
  assert evaluate.main(["--workdir", str(workdir), *argv]) == 2
  assert match in capsys.readouterr().err


def test_cli_without_checkpoint(tmp_path, capsys):
  assert evaluate.main(["--workdir", str(tmp_path)]) == 2
  assert "no checkpoint" in capsys.readouterr().err


def _fake_autoattack(calls):
  """AutoAttack replaced by a counter (the tests below count evaluations, not AutoAttack's numbers)."""
  def fake(logits_fn, images, labels, **kwargs):
    calls["aa"] = calls.get("aa", 0) + 1
    return {"accuracy": 1 / len(labels), "checks": []}
  return fake


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
  """A tiny digits AT run of one epoch: its best checkpoint is its last."""
  from saat_jax.train import train_and_evaluate

  workdir = tmp_path_factory.mktemp("one_epoch")
  c = tiny_config("at", {"eval.train_subset": 0}, num_epochs=1)
  train_and_evaluate(c, str(workdir))
  return workdir, c




def _perturbed_best(real_restore):
  """restore_for_eval whose `best` weights differ from `last`'s (at the same epoch, in a one-epoch run)."""
  import jax

  def restore(w, kind, *args, **kwargs):
    model, variables, meta, cfg = real_restore(w, kind, *args, **kwargs)
    return model, (jax.tree.map(lambda x: x * 1.01, variables) if kind == "best" else variables), meta, cfg

  return restore


@pytest.mark.parametrize("same_weights", [True, False])
@pytest.mark.slow
def test_best_at_the_last_epoch_is_evaluated_once(one_epoch_run, tmp_path, monkeypatch, capsys, same_weights):
  """A one-epoch run's best checkpoint is its last (same epoch, identical weights): AutoAttack and PGD
  run once and `last`'s row is a copy that says so. The same epoch with other weights (best's
  weights perturbed here) is evaluated twice."""
  workdir, _ = one_epoch_run
  calls = {}
  real_run, real_restore = evaluate.RobustnessEvaluator.run, evaluate.restore_for_eval

  def counted_run(self, *args, **kwargs):
    calls["pgd"] = calls.get("pgd", 0) + 1
    return real_run(self, *args, **kwargs)

  if not same_weights:
    monkeypatch.setattr(evaluate, "restore_for_eval", _perturbed_best(real_restore))
  monkeypatch.setattr(robustness, "autoattack_evaluation", _fake_autoattack(calls))  # the autoattack type calls it there
  monkeypatch.setattr(evaluate.RobustnessEvaluator, "run", counted_run)
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(workdir), "--eval.num_test=32", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["checkpoints"]
  printed = capsys.readouterr().out
  if same_weights:
    assert calls == {"aa": 1, "pgd": 1}  # AutoAttack once, natural and PGD-20 (one evaluator run) once
    assert rows["best"]["epoch"] == 1 and rows["last"] == {**rows["best"], "same_as": "best"}
    assert "last: the same checkpoint as best (epoch 1, identical weights); evaluated once, its numbers copied" in printed
  else:
    assert calls == {"aa": 2, "pgd": 2} and "same_as" not in rows["last"] and "same checkpoint" not in printed


@pytest.mark.slow
def test_pgd_steps_and_restarts_from_the_cli(digits_run, tmp_path, monkeypatch, capsys):
  """--eval.steps=5 --eval.restarts=2 reach the evaluator; the column is pgd5 (PGD-5), never pgd20; an
  evaluation with other steps does not merge into the same eval.json; pgd20 with steps 5 is refused."""
  workdir, _ = digits_run
  made = []
  real_init = evaluate.RobustnessEvaluator.__init__

  def init(self, *args, **kwargs):
    made.append((kwargs["steps"], kwargs["restarts"]))
    real_init(self, *args, **kwargs)

  monkeypatch.setattr(evaluate.RobustnessEvaluator, "__init__", init)
  out = tmp_path / "eval.json"
  common = ["--workdir", str(workdir), "--eval.checkpoints=last", "--eval.num_test=32", "--out", str(out)]
  assert evaluate.main([*common, "--eval.attacks=natural,pgd", "--eval.steps=5", "--eval.restarts=2"]) == 0
  report = json.loads(out.read_text())
  row = report["checkpoints"]["last"]
  assert made == [(5, 2)] and report["pgd_steps"] == 5 and report["pgd_restarts"] == 2
  assert "pgd5" in row and "pgd20" not in row and row["pgd5"] <= row["natural"]
  assert row["checks"][-1]["check"] == "accuracy_order" and row["checks"][-1]["message"] == "pgd5 <= natural"
  printed = capsys.readouterr().out
  assert "PGD-5" in printed and "PGD-20" not in printed and "PGD with 2 random starts" in printed
  assert evaluate.main([*common, "--eval.attacks=natural,pgd20"]) == 0  # PGD-20, one start: other settings
  (kept,) = tmp_path.glob("eval-*.json")
  assert "pgd5" in json.loads(kept.read_text())["checkpoints"]["last"]
  now = json.loads(out.read_text())
  assert "pgd20" in now["checkpoints"]["last"] and "pgd5" not in now["checkpoints"]["last"]
  assert made[-1] == (20, 1) and now["pgd_steps"] == 20
  capsys.readouterr()
  assert evaluate.main([*common, "--eval.attacks=pgd20", "--eval.steps=5"]) == 2
  assert ("--eval.attacks: pgd20 asks for PGD-20 but --eval.steps=5; write pgd (the PGD of --eval.steps) or set "
          "--eval.steps=20") in capsys.readouterr().err
  assert evaluate.main([*common, "--eval.restarts=0"]) == 2
  assert "--eval.restarts must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_the_sweep_leaves_the_next_checkpoints_pgd_alone(one_epoch_run, monkeypatch):
  """Each checkpoint's PGD column is PGD-<steps> at the run's alpha, also after the previous
  checkpoint's sweep, whose PGD has its own schedule (20 steps of 2/255 at 8/255)."""
  workdir, _ = one_epoch_run
  made, real_init = [], evaluate.RobustnessEvaluator.__init__

  def init(self, *args, **kwargs):
    made.append((kwargs["steps"], kwargs.get("restarts", 1), round(kwargs["alpha"] * 255, 6)))
    real_init(self, *args, **kwargs)

  monkeypatch.setattr(evaluate.RobustnessEvaluator, "__init__", init)
  monkeypatch.setattr(evaluate, "restore_for_eval", _perturbed_best(evaluate.restore_for_eval))
  report = evaluate.evaluate_run(str(workdir), kinds=("best", "last"), attacks=("natural", "pgd"), num_test=16,
                                 sweep=[8], steps=5, restarts=2)
  assert made == [(5, 2, 8.0), (20, 1, 2.0), (5, 2, 8.0), (20, 1, 2.0)]  # digits: alpha 8/255
  assert set(report["checkpoints"]["last"]) >= {"pgd5", "sweep"} and "same_as" not in report["checkpoints"]["last"]


def test_an_eval_json_from_before_steps_were_recorded_merges_with_pgd20(tmp_path):
  """Files written before pgd_steps/pgd_restarts existed were PGD-20 with one start: they merge."""
  out = str(tmp_path / "eval.json")
  base = {"workdir": "w", "eps_255": 8.0, "alpha_255": 2.0, "weights": "raw", "num_test": 10, "seed": None,
          "aa_version": "standard", "sweep_attack": "pgd", "dtype": None}
  Path(out).write_text(json.dumps({**base, "checkpoints": {"last": {"epoch": 5, "aa": 0.3}}}))
  merged, kept = evaluate.merge_into(out, {**base, "pgd_steps": 20, "pgd_restarts": 1,
                                           "checkpoints": {"last": {"epoch": 5, "pgd20": 0.4}}})
  assert kept is None and merged["checkpoints"]["last"] == {"epoch": 5, "aa": 0.3, "pgd20": 0.4}
  _, kept = evaluate.merge_into(out, {**base, "pgd_steps": 20, "pgd_restarts": 3, "checkpoints": {}})
  assert kept is not None


def test_help_lists_every_setting_with_its_default_and_meaning(capsys):
  assert evaluate.main(["--help"]) == 0
  text = capsys.readouterr().out
  assert set(evaluate.SETTING_HELP) == set(evaluate.eval_config())
  for key, default in evaluate.eval_config().items():
    flag = f"--eval.{key}={'?' if default is None else default}"
    line = next(l for l in text.splitlines() if l.strip().startswith(flag))
    first_words = " ".join(evaluate.SETTING_HELP[key].split()[:3])
    assert first_words in line or first_words in text.split(flag, 1)[1].splitlines()[1], key
  assert "--eval.steps=20" in text and "--eval.restarts=1" in text


@pytest.mark.slow
def test_an_extended_run_is_reported_with_its_new_last_epoch_and_the_command_works(one_epoch_run, tmp_path,
                                                                                  monkeypatch):
  """Issue 17's stale report: a run evaluated after 1 epoch, then extended to 2 (num_epochs 1 -> 2).
  The report shows last epoch 2, marks what eval.json measured on epoch 1, and the command its warning
  gives measures it again, after which nothing is flagged."""
  import shlex
  import shutil

  from saat_jax.report import report_runs
  from saat_jax.train import train_and_evaluate

  workdir, config = one_epoch_run
  run = tmp_path / "run"
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval*", "plots"))
  calls = {}
  monkeypatch.setattr(robustness, "autoattack_evaluation", _fake_autoattack(calls))  # the autoattack type calls it there
  assert evaluate.main(["--workdir", str(run), "--eval.checkpoints=last", "--eval.num_test=32"]) == 0
  c = config.copy_and_resolve_references()
  c.num_epochs = 2
  train_and_evaluate(c, str(run))
  logs = []
  rep = report_runs([str(run)], str(tmp_path / "out"), log=logs.append)
  last = rep["runs"]["run"]["checkpoints"]["last"]
  assert last["epoch"] == 2 and rep["runs"]["run"]["num_epochs"] == 2 and last["natural"]["source"] == "metrics.jsonl"
  assert last["aa"]["measured_epoch"] == 1 and rep["tables"]["runs"]["rows"][0]["text"]["last"]["aa"] == "3.12†"
  (warning,) = [s for s in logs if "trained on after" in s]
  cmd = warning.split("Measure them again with: ")[1]
  assert cmd == f"python -m saat_jax.evaluate --workdir {run} --eval.checkpoints=last --eval.num_test=32"
  assert evaluate.main(shlex.split(cmd)[3:]) == 0
  assert list(run.glob("eval-*.json")) == []  # the same settings: merged into eval.json
  logs = []
  rep = report_runs([str(run)], str(tmp_path / "out"), log=logs.append)
  last = rep["runs"]["run"]["checkpoints"]["last"]
  assert last["epoch"] == 2 and last["aa"]["source"] == "eval.json" and "measured_epoch" not in last["aa"]
  assert rep["runs"]["run"]["older_evaluations"] == [] and not any("trained on after" in s for s in logs)
