"""Evaluators, as big_vision's ``evaluators/``: each takes a model's apply (or logits) function and
returns named values. Used by training's per-epoch evaluation and by ``python -m saat_jax.evaluate``.

- :mod:`saat_jax.evaluators.registry`: evaluators by config (``config.evals``, as big_vision's):
  :func:`register_evaluator` adds a type, :func:`build_evaluators` builds the entries of a config,
  :func:`config_problems` checks them, :func:`column_display` names their eval.json columns.
- :mod:`saat_jax.evaluators.builtin`: the types ``robustness`` (natural + PGD-k), ``autoattack``
  and ``sweep`` (accuracy against eps, RD).
- :mod:`saat_jax.evaluators.robustness`: natural / PGD-k accuracy (``RobustnessEvaluator``),
  AutoAttack accuracy (with its self-checks), the robustness disparity RD (Sec. 3.1) and the PGD schedule of the eps sweep.

The registry imports no JAX (the report reads column names from it); the names of
:mod:`saat_jax.evaluators.robustness` are loaded on first use.
"""

from saat_jax.evaluators.registry import (BEST_COLUMN, DEFAULT_EVALS, EVALUATORS, REQUIRED, Column, EvaluatorType,
                                          build_evaluators, column_display, column_order, config_problems,
                                          register_evaluator, resolve, yields)
from saat_jax.evaluators import builtin as _builtin  # noqa: F401, I001  the built-in types register (JAX-free)

_ROBUSTNESS = ("RobustnessEvaluator", "accuracy_order_check", "autoattack_accuracy", "autoattack_evaluation",
               "make_eval_step", "natural_and_pgd_accuracy", "robustness_disparity", "sweep_pgd_schedule")


def __getattr__(name):  # PEP 562: the JAX code only when it is asked for
  if name in _ROBUSTNESS:
    from saat_jax.evaluators import robustness
    return getattr(robustness, name)
  raise AttributeError(f"module 'saat_jax.evaluators' has no attribute {name!r}")


__all__ = ["BEST_COLUMN", "DEFAULT_EVALS", "EVALUATORS", "REQUIRED", "Column", "EvaluatorType", "build_evaluators", "column_display",
           "column_order", "config_problems", "register_evaluator", "resolve", "yields", *_ROBUSTNESS]
