"""Evaluators by config (saat_jax.evaluators.registry, issue 20 item 1): a new evaluator registered here
(FGSM accuracy, a few lines) runs in training through config.evals and in the evaluation CLI without
a library change; the default config.evals gives training's per-epoch records exactly as the direct
RobustnessEvaluator computation; bad entries are refused by validate_config before anything runs."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from saat_jax import evaluate, evaluators, train
from saat_jax.config_base import base_config
from saat_jax.data import to_float
from saat_jax.losses import ce_loss_fn, correct
from saat_jax.testing.tiny import tiny_config



def fgsm_correct(apply_fn, variables, x, labels, eps):
  """Correct under one signed-gradient step of size eps (FGSM, Goodfellow et al. 2015), no random start."""
  logits_fn = lambda x: apply_fn(variables, x, train=False)
  g = jax.grad(lambda xa: jnp.sum(ce_loss_fn(logits_fn)(xa, labels)))(x)
  x_adv = jnp.clip(x + eps * jnp.sign(g), 0.0, 1.0)
  return correct(logits_fn(x_adv), labels)


def fgsm_accuracy(apply_fn, variables, images, labels, eps):
  return float(jnp.mean(fgsm_correct(apply_fn, variables, to_float(images), labels, eps)))


class FGSM:
  """The evaluator: built from its settings and the model, ``run`` yields ``(name, value)`` pairs."""

  def __init__(self, settings, *, apply_fn, mesh=None):
    eps = float(settings["eps"])
    self.correct = jax.jit(lambda variables, x, y: fgsm_correct(apply_fn, variables, x, y, eps))

  def run(self, variables, images, labels, key):
    yield "fgsm_accuracy", float(jnp.mean(self.correct(variables, to_float(images), jnp.asarray(labels))))


@pytest.fixture
def fgsm_type():
  t = evaluators.register_evaluator("fgsm", FGSM, settings={"eps": evaluators.REQUIRED},
                                    columns=[evaluators.Column("fgsm_accuracy", "fgsm", "FGSM")], doc="FGSM accuracy")
  yield t
  evaluators.EVALUATORS.pop("fgsm")


def tiny(method="at", **over):
  return tiny_config(method, {"eval.train_subset": 32, "num_epochs": 1, **over})


@pytest.mark.slow
def test_a_registered_evaluator_runs_in_training_and_in_the_cli(fgsm_type, tmp_path, capsys, monkeypatch):
  from saat_jax.run_state import restore_for_eval

  c = tiny()
  c.evals.fgsm = ml_collections.ConfigDict({"type": "fgsm"})  # its eps: config.eval.eps (32/255)
  workdir = tmp_path / "run"
  (rec,) = train.train_and_evaluate(c, str(workdir))
  line = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  # the new column on every split, beside the default evaluator's, and equal to the direct computation
  for split in ("test", "trainsub"):
    assert f"{split}_fgsm_accuracy" in line and f"{split}_pgd_accuracy" in line
  model, variables, _, _ = restore_for_eval(str(workdir), "last")
  from saat_jax.data import load_dataset
  data = load_dataset("digits", None)
  images, labels = data.test_images[:64], data.test_labels[:64]
  assert line["test_fgsm_accuracy"] == pytest.approx(fgsm_accuracy(model.apply, variables, images, labels, 32 / 255),
                                                     abs=1 / 64)
  assert line["test_fgsm_accuracy"] == rec["test_fgsm_accuracy"]
  # the CLI: the run's entry by name, its eps from --eval.eps, its column under its key and name
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(workdir), "--eval.checkpoints=last", "--eval.attacks=natural,pgd,fgsm",
                        "--eval.num_test=64", "--out", str(out)]) == 0
  written = json.loads(out.read_text())
  row = written["checkpoints"]["last"]
  assert set(row) >= {"natural", "pgd20", "fgsm", "checks"}
  assert written["columns"] == {"natural": "Natural", "pgd20": "PGD-20", "fgsm": "FGSM"}
  assert row["fgsm"] == pytest.approx(line["test_fgsm_accuracy"], abs=1 / 64)
  head = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("checkpoint"))
  assert head.split()[2:] == ["Natural", "PGD-20", "FGSM"]
  assert evaluate.main(["--workdir", str(workdir), "--eval.checkpoints=last", "--eval.attacks=fgsm", "--eval.eps=8",
                        "--eval.num_test=64", "--out", str(tmp_path / "eval8.json")]) == 0
  row8 = json.loads((tmp_path / "eval8.json").read_text())["checkpoints"]["last"]
  assert row8["fgsm"] == pytest.approx(fgsm_accuracy(model.apply, variables, images, labels, 8 / 255), abs=1 / 64)
  assert "natural" not in row8 and "pgd20" not in row8
  # an unknown name lists the run's entries and the registered types it could be
  assert evaluate.main(["--workdir", str(workdir), "--eval.attacks=fgsn"]) == 2
  assert "unknown attack 'fgsn'; choose from natural, pgd, aa, fgsm" in capsys.readouterr().err
  # the report, in a process that has not registered the type, shows its column as eval.json names it
  from saat_jax.report import format_markdown, report_runs

  (workdir / "eval.json").write_text(out.read_text())
  monkeypatch.delitem(evaluators.EVALUATORS, "fgsm")
  table = report_runs([str(workdir)], str(tmp_path / "report"), log=lambda s: None)["tables"]["runs"]
  assert table["metrics"]["last"] == ["natural", "pgd20", "aa", "fgsm"] and table["names"]["fgsm"] == "FGSM"
  assert table["rows"][0]["cells"]["last"]["fgsm"]["values"] == [pytest.approx(100 * row["fgsm"])]
  assert "| Last FGSM |" in format_markdown([table])


@pytest.mark.slow
def test_the_default_evals_are_the_direct_robustness_evaluation():
  """config.evals' default entry, built from config.eval, gives the records the per-epoch evaluation
  gave before it existed (one RobustnessEvaluator from config.eval, split k from fold_in(eval_key, k),
  raw and EMA weights): the same keys in the same order and the same numbers, bit for bit."""
  from saat_jax import parallel
  from saat_jax.data import load_dataset
  from saat_jax.evaluators import RobustnessEvaluator
  from saat_jax.run_state import model_from_spec, model_spec

  c = tiny("at", **{"ema.decay": 0.5})
  c.eval.steps, c.eval.batch_size = 3, 48  # not the defaults, and a padded last batch
  data = load_dataset("digits", None)
  model = model_from_spec(model_spec(c, 10), "float32")
  tx, _ = train.make_optimizer(c, 1)
  state = train.initial_state(model, tx, jax.random.key(1), (8, 8, 1), ema=True)
  state = state.replace(ema=jax.tree.map(lambda a: a * 0.9, state.ema))  # EMA weights other than the raw ones
  splits = (("test", data.test_images[:70], data.test_labels[:70]), ("val", data.val_images, data.val_labels),
            ("trainsub", data.train_images[:50], data.train_labels[:50]))
  key, mesh = jax.random.key(7), parallel.make_mesh()
  new = train.evaluate_epoch(evaluators.build_evaluators(train.config_evals(c), c.eval, apply_fn=model.apply, mesh=mesh),
                        state, splits, key)
  old_ev = RobustnessEvaluator(model.apply, eps=float(c.eval.eps), alpha=float(c.eval.alpha), steps=int(c.eval.steps),
                               batch_size=int(c.eval.batch_size), mesh=mesh)
  old = {}
  for prefix, variables in (("", state.variables), ("ema_", state.ema_variables)):
    for k, (split, images, labels) in enumerate(splits):
      if len(labels):
        for name, value in old_ev.run(variables, images, labels, jax.random.fold_in(key, k)).items():
          old[f"{prefix}{split}_{name}"] = value
  assert list(new) == list(old) == [f"{p}{s}_{m}" for p in ("", "ema_") for s in ("test", "trainsub")
                                    for m in ("natural_accuracy", "pgd_accuracy")]
  assert new == old
  # a config without evals (built by hand, or saved before they existed) gets the same default
  del c["evals"]
  assert train.config_evals(c) == evaluators.DEFAULT_EVALS


def test_an_old_runs_config_without_evals_resumes_unchanged():
  from saat_jax.workdir import config_changes, config_json

  new = config_json(base_config())
  old = {k: v for k, v in new.items() if k != "evals"}
  assert config_changes(old, new) == {}
  c = base_config()
  c.evals.robustness.steps = 10  # a change of the evaluator that picks `best` is a change
  assert list(config_changes(old, config_json(c))) == ["evals.robustness.steps"]


def test_evaluation_only_entries_may_change_on_resume_and_the_one_that_picks_best_may_not(fgsm_type):
  """An entry that does not yield pgd_accuracy changes neither training nor `best`: added, removed or
  changed on resume, it is no config change. The entry that picks `best`, a replacement of it, and
  an entry whose type is not registered (what it yields is unknown) stay changes."""
  from saat_jax.workdir import config_changes, config_json

  saved = config_json(base_config())
  c = base_config()
  c.evals.fgsm = ml_collections.ConfigDict({"type": "fgsm", "eps": 4 / 255})
  c.evals.sweep = ml_collections.ConfigDict({"type": "sweep", "budgets": (0, 8)})
  c.evals.pgd50 = ml_collections.ConfigDict({"type": "robustness", "steps": 50, "selects_best": False})
  with_two = config_json(c)
  assert config_changes(saved, with_two) == {}          # added
  assert config_changes(with_two, saved) == {}          # removed
  c.evals.fgsm.eps = 8 / 255
  assert config_changes(with_two, config_json(c)) == {}  # changed
  c = base_config()
  c.evals.best50 = ml_collections.ConfigDict({"type": "robustness", "steps": 50})
  del c.evals["robustness"]                             # PGD-50 would pick `best` from now on
  assert set(config_changes(saved, config_json(c))) == {"evals.best50.steps", "evals.best50.type",
                                                        "evals.robustness.type"}
  c = base_config()
  c.evals.mine = ml_collections.ConfigDict({"type": "not_registered"})
  assert list(config_changes(saved, config_json(c))) == ["evals.mine.type"]
  c = base_config()
  c.eval.steps = 10                                     # inherited by the entry that picks `best`
  assert list(config_changes(saved, config_json(c))) == ["eval.steps"]


@pytest.mark.slow
def test_a_run_resumes_with_an_evaluator_added(fgsm_type, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny(), workdir)
  c = tiny(num_epochs=2)
  c.evals.fgsm = ml_collections.ConfigDict({"type": "fgsm"})  # no allow_config_change
  rec = train.train_and_evaluate(c, workdir)[-1]
  assert rec["epoch"] == 1 and 0 <= rec["test_fgsm_accuracy"] <= 1
  first, second = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert "test_fgsm_accuracy" not in first and second["test_pgd_accuracy"] == rec["test_pgd_accuracy"]
  c = tiny(num_epochs=3)
  c.eval.steps = 5                                      # the PGD that picks `best`: still refused
  with pytest.raises(ValueError, match=r"eval.steps: 20 -> 5"):
    train.train_and_evaluate(c, workdir)


@pytest.mark.slow
def test_a_second_pgd_beside_the_one_that_picks_best():
  """evals.pgd5 = {type: robustness, steps: 5, selects_best: False}: PGD-5 accuracy every epoch as
  <split>_pgd5_accuracy, the number a robustness entry of 5 steps gives as its pgd_accuracy (same key),
  and no second natural accuracy; `best` stays with the default entry's PGD."""
  from saat_jax import parallel
  from saat_jax.data import load_dataset
  from saat_jax.run_state import model_from_spec, model_spec

  c = tiny("at")
  c.evals.pgd5 = ml_collections.ConfigDict({"type": "robustness", "steps": 5, "selects_best": False})
  train.validate_config(c)
  data = load_dataset("digits", None)
  model = model_from_spec(model_spec(c, 10), "float32")
  state = train.initial_state(model, train.make_optimizer(c, 1)[0], jax.random.key(1), (8, 8, 1), ema=False)
  splits, key, mesh = (("test", data.test_images[:40], data.test_labels[:40]),), jax.random.key(3), parallel.make_mesh()
  got = train.evaluate_epoch(evaluators.build_evaluators(c.evals, c.eval, apply_fn=model.apply, mesh=mesh),
                             state, splits, key)
  assert sorted(got) == ["test_natural_accuracy", "test_pgd5_accuracy", "test_pgd_accuracy"]
  as_best = ml_collections.ConfigDict({"robustness": {"type": "robustness", "steps": 5}})
  ref = train.evaluate_epoch(evaluators.build_evaluators(as_best, c.eval, apply_fn=model.apply, mesh=mesh),
                             state, splits, key)
  assert got["test_pgd5_accuracy"] == ref["test_pgd_accuracy"]
  assert [col.key for _, e in evaluators.build_evaluators(c.evals, c.eval, apply_fn=model.apply) for col in e.columns] \
      == ["pgd5", "natural", f"pgd{c.eval.steps}"]


def test_a_problem_is_dropped_by_its_setting_not_by_its_wording():
  """A problem of a setting the caller checks itself (eval.eps) is not repeated for an entry that
  inherits it; a problem of the entry's own value, and one of no single setting, are reported."""
  def check(s):
    return ([("eps", f"is {s['eps']}; a budget is >= 0")] if s["eps"] < 0 else []) + ["eps and steps disagree"]

  evaluators.register_evaluator("worded", FGSM, settings={"eps": evaluators.REQUIRED}, check=check,
                                columns=[evaluators.Column("worded", "worded", "Worded")])
  try:
    problems = evaluators.config_problems({"a": {"type": "worded"}, "b": {"type": "worded", "eps": -2.0}},
                                          {"eps": -1.0}, checked=("eps",))
  finally:
    evaluators.EVALUATORS.pop("worded")
  assert problems == ["evals.a: eps and steps disagree", "evals.b: eps is -2.0; a budget is >= 0",
                      "evals.b: eps and steps disagree"]


@pytest.mark.parametrize("entry,message", [
    ({"type": "robustnes"}, "evals.bad: unknown evaluator type 'robustnes' (did you mean 'robustness'?)"),
    ({"type": "sweep"}, "evals.bad: type 'sweep' needs setting(s) budgets (set them in the entry)"),
    ({"type": "robustness", "stpes": 3}, "evals.bad: type 'robustness' has no setting 'stpes' (did you mean 'steps'?)"),
    ({"type": "sweep", "budgets": (0, -4)}, "evals.bad: budgets must be a list of budgets >= 0 in /255"),
    ({"type": "autoattack", "version": "big"}, "evals.bad: version must be one of standard, plus, rand"),
    ({"type": "robustness", "steps": 10}, "evals.robustness and evals.bad both yield 'natural_accuracy', 'pgd_accuracy' "
     "(training records <split>_<name> for each); only one entry picks `best`: set selects_best=False on the other"),
    ({"type": "robustness", "selects_best": "no"}, "evals.bad: selects_best must be True or False, got 'no'"),
    ({"steps": 10}, "evals.bad: has no type"),
])
def test_a_bad_evals_entry_is_refused_before_anything_runs(tmp_path, entry, message):
  c = tiny()
  c.evals.bad = ml_collections.ConfigDict(entry)
  with pytest.raises(ValueError, match="invalid config") as e:
    train.validate_config(c)
  assert message in str(e.value)
  with pytest.raises(ValueError, match="invalid config"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_without_the_entry_that_picks_best_the_config_is_refused():
  c = tiny()
  del c.evals["robustness"]
  with pytest.raises(ValueError, match="no entry of evals yields 'pgd_accuracy', which selects the `best` checkpoint"):
    train.validate_config(c)
  c.evals.mine = ml_collections.ConfigDict({"type": "robustness", "steps": 5, "eps": 16 / 255})  # its own settings
  train.validate_config(c)
  (_, ev), = evaluators.build_evaluators(c.evals, c.eval, apply_fn=_Apply())
  assert ev.evaluator.batch_size == 64 and [col.key for col in ev.columns] == ["natural", "pgd5"]


class _Apply:
  def __call__(self, *args, **kwargs):
    raise AssertionError("not called: building does not run the model")


def test_columns_and_their_names_come_from_the_types(fgsm_type):
  from saat_jax.report.runs import METRIC_NAMES, metric_name

  assert evaluators.column_order(["rd", "fgsm", "aa", "pgd50", "checks", "natural", "pgd20", "sweep", "epoch"]) == \
      ["natural", "pgd20", "pgd50", "aa", "fgsm", "rd"]
  assert METRIC_NAMES == {"natural": "Natural", "pgd20": "PGD-20", "aa": "AA", "rd": "RD"}
  assert metric_name("pgd50") == "PGD-50" and metric_name("fgsm") == "FGSM" and metric_name("sweep") == "sweep"


def test_an_autoattack_sweep_attacks_every_budget_with_one_compiled_model(monkeypatch):
  """``sweep`` with ``attack='aa'``: AutoAttack at each budget (in [0, 1] units), RD from those
  accuracies, and one jitted logits function for all budgets (a new one per budget recompiles)."""
  from saat_jax.evaluators import robustness
  from saat_jax.models import create_model, init_variables

  calls = []

  def fake_aa(logits_fn, images, labels, *, eps, version, seed, batch_size):
    calls.append((logits_fn, eps, version, seed, batch_size))
    return 1.0 - 10 * eps

  monkeypatch.setattr(robustness, "autoattack_accuracy", fake_aa)
  model = create_model("small_cnn", 10, width=4)
  variables = init_variables(model, jax.random.key(0), (8, 8, 1))
  (_, ev), = evaluators.build_evaluators(
      {"sweep": {"type": "sweep", "budgets": [0, 4, 8], "attack": "aa", "batch_size": 4, "seed": 3}},
      apply_fn=model.apply)
  images, labels = np.zeros((4, 8, 8, 1), np.uint8), np.arange(4)
  out = dict(ev.run(variables, images, labels, jax.random.key(0)))
  assert [c[1] for c in calls] == pytest.approx([0.0, 4 / 255, 8 / 255])
  assert {(c[2], c[3], c[4]) for c in calls} == {("standard", 3, 4)}
  assert len({id(c[0]) for c in calls}) == 1
  assert out["sweep"] == {"eps_255": [0, 4, 8], "accuracy": pytest.approx([1.0, 1 - 40 / 255, 1 - 80 / 255])}
  assert out["rd"] == pytest.approx(robustness.robustness_disparity([0, 4, 8], [1.0, 1 - 40 / 255, 1 - 80 / 255]))
