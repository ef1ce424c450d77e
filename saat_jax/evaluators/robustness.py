"""Natural, PGD-k and AutoAttack accuracy of a model on a split, and the robustness disparity RD.

PGD-20 follows the released SAAT code and Rice et al. (2020): l_inf, eps 8/255, step 2/255, one
uniform random start, BatchNorm on running averages (``train=False``). The same evaluator runs in
training's per-epoch evaluation and in ``python -m saat_jax.evaluate``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saat_jax import parallel
from saat_jax.attack import pgd
from saat_jax.data import to_float
from saat_jax.losses import ce_loss_fn, correct


def make_eval_step(apply_fn: Callable, *, eps: float, alpha: float, steps: int, restarts: int = 1):
  """``eval_step(variables, images_u8, labels, mask, key) -> (n_natural_correct, n_pgd_correct)``."""

  def eval_step(variables, images, labels, mask, key):
    x = to_float(images)
    logits_fn = lambda xa: apply_fn(variables, xa, train=False)
    nat = correct(logits_fn(x), labels) & mask
    if steps > 0 and eps > 0:
      x_adv = pgd(ce_loss_fn(logits_fn), x, labels, eps=eps, alpha=alpha, steps=steps, key=key,
                  restarts=restarts)
      rob = correct(logits_fn(x_adv), labels) & mask
    else:
      rob = nat
    return jnp.sum(nat), jnp.sum(rob)

  return eval_step


def natural_and_pgd_accuracy(eval_step, variables, images: np.ndarray, labels: np.ndarray, *,
                             batch_size: int, key: jax.Array, mesh=None) -> tuple[float, float]:
  """Accuracies over a whole split; the last batch is padded (and masked) to keep one compiled shape.

  Batch ``b`` attacks from the random start of ``fold_in(key, b)``. With several processes each
  reads only the rows of ``images`` and ``labels`` that its devices attack (``parallel.shard_batch``
  with ``index``), as training does."""
  n = len(labels)
  if n == 0:
    return float("nan"), float("nan")
  mesh = mesh or parallel.make_mesh()
  variables = jax.device_put(variables, parallel.replicated(mesh))  # as in training: one compiled program
  nat_sum, rob_sum = 0, 0
  totals = []
  for b, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, min(start + batch_size, n))
    mask = np.zeros(batch_size, bool)
    mask[:len(idx)] = True
    pad_idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
    imgs, labs = parallel.shard_batch(mesh, images, labels, index=pad_idx)
    m = jax.make_array_from_callback(mask.shape, parallel.data_sharded(mesh), lambda i: mask[i])
    totals.append(eval_step(variables, imgs, labs, m, jax.random.fold_in(key, b)))
  for nat, rob in jax.device_get(totals):
    nat_sum += int(nat)
    rob_sum += int(rob)
  return nat_sum / n, rob_sum / n


class RobustnessEvaluator:
  """Natural and PGD-``steps`` accuracy of ``apply_fn`` (a Flax ``Module.apply``) on a split.

  ``run(variables, images_u8, labels, key)`` returns ``{"natural_accuracy", "pgd_accuracy"}``; the
  step is compiled once, so calling ``run`` every epoch (or on several splits) does not recompile.
  """

  def __init__(self, apply_fn: Callable, *, eps: float, alpha: float, steps: int, batch_size: int,
               mesh=None, restarts: int = 1):
    self.batch_size = int(batch_size)
    self.mesh = mesh
    self._step = jax.jit(make_eval_step(apply_fn, eps=float(eps), alpha=float(alpha), steps=int(steps),
                                        restarts=restarts))

  def run(self, variables, images: np.ndarray, labels: np.ndarray, key: jax.Array) -> dict:
    nat, rob = natural_and_pgd_accuracy(self._step, variables, images, labels, batch_size=self.batch_size,
                                        key=key, mesh=self.mesh)
    return {"natural_accuracy": nat, "pgd_accuracy": rob}


def autoattack_evaluation(logits_fn, images: np.ndarray, labels: np.ndarray, *, eps: float,
                          version: str = "standard", seed: int = 0, batch_size: int | None = None,
                          progress: bool = True, warn: Callable[[str], None] | None = None) -> dict:
  """AutoAttack (:mod:`saat_jax.autoattack`) of ``logits_fn`` on uint8 ``images``:
  ``{"accuracy": robust accuracy, "checks": [records of saat_jax.autoattack.checks]}``.

  Flagged checks are reported through ``warn`` (default: the project's ``warning: ...`` line on
  stderr); an adversarial example that fails re-verification raises
  ``saat_jax.autoattack.checks.VerificationError``.
  """
  from saat_jax.autoattack import autoattack  # here: AutoAttack is only needed by the evaluation CLI
  from saat_jax.log import warn as project_warn

  res = autoattack(logits_fn, to_float(images), jnp.asarray(labels), eps=eps, version=version, seed=seed,
                   batch_size=batch_size, progress=progress, warn=project_warn if warn is None else warn)
  return {"accuracy": float(np.mean(np.asarray(res.robust))), "checks": list(res.checks)}


def autoattack_accuracy(logits_fn, images: np.ndarray, labels: np.ndarray, **kwargs) -> float:
  """Robust accuracy under AutoAttack of ``logits_fn`` on uint8 ``images`` (keyword arguments of
  :func:`autoattack_evaluation`)."""
  return autoattack_evaluation(logits_fn, images, labels, **kwargs)["accuracy"]


def accuracy_order_check(row: dict, num_points: int | None = None,
                         warn: Callable[[str], None] | None = None, pgd_key: str = "pgd20") -> dict:
  """The check that AA <= PGD-k <= natural accuracy in an evaluation row (on the same points;
  ``pgd_key`` names the PGD column, ``pgd20`` by default); a violation is reported through ``warn``
  (default: the project's warning line) and flagged in the returned record
  (:func:`saat_jax.autoattack.checks.check_accuracy_order`)."""
  from saat_jax.autoattack.checks import check_accuracy_order
  from saat_jax.log import warn as project_warn

  return check_accuracy_order(row, order=("aa", pgd_key, "natural"), num_points=num_points,
                              warn=project_warn if warn is None else warn)


def robustness_disparity(eps_list, accuracies) -> float:
  """RD of Sec. 3.1: ``(1/n) sum_i (A_0 - A_i) / eps_i`` over the budgets ``eps_i > 0``.

  ``accuracies[j]`` is the accuracy at ``eps_list[j]``; ``A_0`` is the one at eps 0 (natural).
  Budgets are taken in units of 1/255, as the paper writes them (eps = 8 means 8/255), so RD is
  accuracy lost per 1/255 of budget.
  """
  eps = np.asarray(eps_list, np.float64)
  acc = np.asarray(accuracies, np.float64)
  if eps.shape != acc.shape or eps.ndim != 1:
    raise ValueError("robustness_disparity: eps_list and accuracies must be 1-D and of equal length")
  zero = np.flatnonzero(eps == 0)
  if len(zero) == 0:
    raise ValueError("robustness_disparity needs the accuracy at eps = 0 (A_0)")
  pos = eps > 0
  if not pos.any():
    raise ValueError("robustness_disparity needs at least one budget eps_i > 0")
  a0 = acc[zero[0]]
  return float(np.mean((a0 - acc[pos]) / eps[pos]))


def sweep_pgd_schedule(eps_255: float) -> tuple[float, int]:
  """(alpha, steps) of the PGD used at a sweep budget, as the released SAAT code's budget sweep:
  alpha 2/255 and 2.5 steps per 1/255 of budget (PGD-20 at 8/255)."""
  return 2 / 255, max(1, int(math.ceil(2.5 * eps_255)))
