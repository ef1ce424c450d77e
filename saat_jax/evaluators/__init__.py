"""Evaluators, as big_vision's ``evaluators/``: each takes a model's apply (or logits) function and
returns named values. Used by training's per-epoch evaluation and by ``python -m saat_jax.evaluate``.

- :mod:`saat_jax.evaluators.robustness`: natural / PGD-k accuracy (``RobustnessEvaluator``),
  AutoAttack accuracy (with its self-checks), the robustness disparity RD (Sec. 3.1) and the PGD schedule of the eps sweep.
"""

from saat_jax.evaluators.robustness import (RobustnessEvaluator, accuracy_order_check, autoattack_accuracy,
                                            autoattack_evaluation, make_eval_step,
                                            natural_and_pgd_accuracy, robustness_disparity,
                                            sweep_pgd_schedule)

__all__ = ["RobustnessEvaluator", "accuracy_order_check", "autoattack_accuracy", "autoattack_evaluation",
           "make_eval_step", "natural_and_pgd_accuracy",
           "robustness_disparity", "sweep_pgd_schedule"]
