"""The built-in evaluator types (:mod:`saat_jax.evaluators.registry`), wrapping the code of
:mod:`saat_jax.evaluators.robustness` unchanged:

- ``robustness``: natural and PGD-``steps`` accuracy (:class:`RobustnessEvaluator`), yielding
  ``natural_accuracy`` and ``pgd_accuracy`` (eval.json: ``natural``, ``pgd<steps>``). Training's
  default ``config.evals.robustness``: its settings come from ``config.eval``.
- ``autoattack``: AutoAttack accuracy with its self-checks (:func:`autoattack_evaluation`), yielding
  ``aa_accuracy`` (eval.json: ``aa``) and ``checks``.
- ``sweep``: accuracy against the test budget (PGD with the released code's schedule, or AA) and
  its RD (Sec. 3.1), yielding ``sweep`` and, with budget 0 and one above, ``rd``.

This module imports no JAX: each factory imports its code when it builds.
"""

from __future__ import annotations

import re

from saat_jax.evaluators.registry import REQUIRED, Column, register_evaluator

PGD_KEY = re.compile(r"pgd(\d+)")  # eval.json's PGD-k column


def _number_problems(s: dict, rules) -> list[tuple[str, str]]:
  out = []
  for key, ok, what in rules:
    v = s[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
      out.append((key, f"must be {what}, got {v!r}"))
  return out


# --------------------------------------------------------------------------------------------
# natural + PGD-k
# --------------------------------------------------------------------------------------------


def robustness_columns(s: dict) -> tuple:
  """Natural and PGD-k accuracy as ``natural_accuracy`` / ``pgd_accuracy`` (the entry that picks `best`);
  with ``selects_best=False`` (a second PGD, e.g. PGD-50 beside training's PGD-20) only PGD-k, as
  ``pgd<k>_accuracy``: the natural accuracy would repeat the first entry's."""
  steps = int(s["steps"])
  if not s.get("selects_best", True):
    return (Column(f"pgd{steps}_accuracy", f"pgd{steps}", f"PGD-{steps}"),)
  return (Column("natural_accuracy", "natural", "Natural"), Column("pgd_accuracy", f"pgd{steps}", f"PGD-{steps}"))


def _robustness_column(key: str):
  if key == "natural":
    return (0, 0), "Natural"
  m = PGD_KEY.fullmatch(key)
  return ((1, int(m.group(1))), f"PGD-{m.group(1)}") if m else None


class Robustness:
  """Natural and PGD-``steps`` accuracy: :class:`~saat_jax.evaluators.robustness.RobustnessEvaluator`
  with the entry's settings (its step compiled once)."""

  def __init__(self, settings: dict, *, apply_fn, mesh=None):
    from saat_jax.evaluators.robustness import RobustnessEvaluator

    s = settings
    self.columns = robustness_columns(s)
    self.evaluator = RobustnessEvaluator(apply_fn, eps=float(s["eps"]), alpha=float(s["alpha"]), steps=int(s["steps"]),
                                         batch_size=int(s["batch_size"]), mesh=mesh, restarts=int(s["restarts"]))

  def run(self, variables, images, labels, key):
    acc = self.evaluator.run(variables, images, labels, key)
    if len(self.columns) == 1:  # selects_best=False
      return [(self.columns[0].name, acc["pgd_accuracy"])]
    return [("natural_accuracy", acc["natural_accuracy"]), ("pgd_accuracy", acc["pgd_accuracy"])]


register_evaluator(
    "robustness", Robustness, settings={"eps": REQUIRED, "alpha": REQUIRED, "steps": REQUIRED, "batch_size": REQUIRED,
                                        "restarts": 1, "selects_best": True},
    columns=robustness_columns, column=_robustness_column, rank=0,
    check=lambda s: _number_problems(s, (("eps", lambda v: v >= 0, ">= 0 (a budget in [0, 1] pixel units)"),
                                         ("alpha", lambda v: v > 0, "> 0"),
                                         ("steps", lambda v: v == int(v) and v >= 0, "an integer >= 0"),
                                         ("batch_size", lambda v: v == int(v) and v >= 1, "an integer >= 1"),
                                         ("restarts", lambda v: v == int(v) and v >= 1, "an integer >= 1")))
    + ([] if isinstance(s["selects_best"], bool) else [("selects_best", f"must be True or False, got {s['selects_best']!r}")]),
    doc="natural and PGD-<steps> accuracy (eps, alpha, steps, restarts random starts); selects_best=False: "
        "PGD-<steps> only, as pgd<steps>_accuracy, beside the entry that picks `best`")


# --------------------------------------------------------------------------------------------
# AutoAttack
# --------------------------------------------------------------------------------------------


def _logits_fn(apply_fn, variables):
  import jax

  return jax.jit(lambda x, v=variables: apply_fn(v, x, train=False))


class AutoAttack:
  """AutoAttack accuracy (:func:`~saat_jax.evaluators.robustness.autoattack_evaluation`) and its
  self-checks; ``key`` is not used (AutoAttack draws from ``seed``, as the reference code)."""

  columns = (Column("aa_accuracy", "aa", "AA"),)

  def __init__(self, settings: dict, *, apply_fn, mesh=None):
    self.settings, self.apply_fn = dict(settings), apply_fn

  def run(self, variables, images, labels, key):
    from saat_jax.evaluators.robustness import autoattack_evaluation

    s = self.settings
    aa = autoattack_evaluation(_logits_fn(self.apply_fn, variables), images, labels, eps=float(s["eps"]),
                               version=s["version"], seed=int(s["seed"]), batch_size=int(s["batch_size"]),
                               progress=bool(s["progress"]))
    return [("aa_accuracy", aa["accuracy"]), ("checks", aa["checks"])]


AA_VERSIONS = ("standard", "plus", "rand")
register_evaluator(
    "autoattack", AutoAttack, settings={"eps": REQUIRED, "batch_size": REQUIRED, "version": "standard", "seed": 0,
                                        "progress": True},
    columns=AutoAttack.columns, rank=10,
    check=lambda s: _number_problems(s, (("eps", lambda v: v >= 0, ">= 0"),
                                         ("batch_size", lambda v: v == int(v) and v >= 1, "an integer >= 1")))
    + ([] if s["version"] in AA_VERSIONS else [("version", f"must be one of {', '.join(AA_VERSIONS)}, got {s['version']!r}")]),
    doc="AutoAttack accuracy (eps, version, seed) and its self-checks")


# --------------------------------------------------------------------------------------------
# The eps sweep and RD
# --------------------------------------------------------------------------------------------


def sweep_columns(s: dict) -> tuple:
  b = [float(e) for e in s["budgets"]]
  return (Column("rd", "rd", "RD"),) if 0 in b and any(e > 0 for e in b) else ()


class Sweep:
  """Accuracy at each of ``budgets`` (in /255) and RD (Sec. 3.1): PGD with the released code's
  schedule (:func:`~saat_jax.evaluators.robustness.sweep_pgd_schedule`, each budget's step compiled
  once, all from ``key``'s starts), or AutoAttack (``attack='aa'``)."""

  def __init__(self, settings: dict, *, apply_fn, mesh=None):
    from saat_jax.evaluators.robustness import RobustnessEvaluator, sweep_pgd_schedule

    self.settings, self.apply_fn = dict(settings), apply_fn
    self.budgets = list(settings["budgets"])
    self.columns = sweep_columns(settings)
    self.pgd = {}
    if settings["attack"] == "pgd":
      for e255 in self.budgets:
        alpha, steps = sweep_pgd_schedule(e255)
        self.pgd[e255] = RobustnessEvaluator(apply_fn, eps=e255 / 255, alpha=alpha, steps=steps,
                                             batch_size=int(settings["batch_size"]), mesh=mesh)

  def run(self, variables, images, labels, key):
    from saat_jax.evaluators.robustness import autoattack_accuracy, robustness_disparity

    s = self.settings
    accs = []
    logits_fn = _logits_fn(self.apply_fn, variables) if s["attack"] == "aa" else None  # compiled once, every budget
    for e255 in self.budgets:
      if s["attack"] == "aa":
        accs.append(autoattack_accuracy(logits_fn, images, labels, eps=e255 / 255, version=s["version"],
                                        seed=int(s["seed"]), batch_size=int(s["batch_size"])))
      else:
        accs.append(self.pgd[e255].run(variables, images, labels, key)["pgd_accuracy"])
    out = [("sweep", {"eps_255": list(self.budgets), "accuracy": accs})]
    if self.columns:
      out.append(("rd", robustness_disparity(self.budgets, accs)))
    return out


def _sweep_problems(s: dict) -> list[tuple[str, str]]:
  b = s["budgets"]
  out = []
  if isinstance(b, (str, bytes)) or not hasattr(b, "__iter__") or not all(
      isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 0 for e in b):
    out.append(("budgets", f"must be a list of budgets >= 0 in /255, e.g. (0, 4, 8, 12, 16), got {b!r}"))
  if s["attack"] not in ("pgd", "aa"):
    out.append(("attack", f"must be pgd or aa, got {s['attack']!r}"))
  return out + _number_problems(s, (("batch_size", lambda v: v == int(v) and v >= 1, "an integer >= 1"),))


register_evaluator(
    "sweep", Sweep, settings={"budgets": REQUIRED, "attack": "pgd", "batch_size": REQUIRED, "version": "standard",
                              "seed": 0},
    columns=sweep_columns, column=lambda k: (0, "RD") if k == "rd" else None, rank=90, check=_sweep_problems,
    doc="accuracy against the test budget (budgets in /255; attack pgd or aa) and RD (Sec. 3.1)")
