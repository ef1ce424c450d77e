"""What every training method is made of: an adversary (the inner maximisation) and an outer loss.

A :class:`Method` is two pure functions. The training step (:mod:`saat_jax.train`) calls
``adversary`` on the augmented clean batch, stops the gradient through its output, and minimises
``loss`` over the parameters; AWP (:mod:`saat_jax.awp`) wraps any method's ``loss`` from outside.

* ``adversary(net, x, y, key) -> Adversarial`` sees the network through :class:`AttackNet`, which
  fixes how BatchNorm behaves during the attack (``config.attack_bn``).
* ``loss(forward, batch_stats, x, x_adv, y) -> (loss, logits_for_accuracy, batch_stats)``, where
  ``forward(inputs, batch_stats) -> (logits, batch_stats)`` is the network in train mode at the
  parameters being differentiated (BatchNorm on batch statistics, running statistics updated once
  per call, in call order, as a PyTorch ``model.train()`` forward pass does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from saat_jax.losses import cross_entropy

# config.attack_bn: how BatchNorm behaves while the adversary runs.
#   train:        batch statistics, running statistics untouched (this project's default).
#   train_update: batch statistics, and every attack pass updates the running statistics, as the
#                 PyTorch lineage (Rice et al. 2020, the released SAAT code) does by attacking a
#                 model in train mode.
#   eval:         running statistics (TRADES attacks with model.eval()).
ATTACK_BN = ("train", "train_update", "eval")


@chex.dataclass(frozen=True)
class Adversarial:
  """The adversary's output for a batch: ``x_adv`` and per-example statistics.

  ``eps``: the budget each example was attacked with (SA-PGD: where it stopped); ``steps``: signed
  gradient steps taken; ``satisfied``: Eq. 5's ``loss >= rho`` (True for fixed-budget methods);
  ``batch_stats``: BatchNorm running statistics after the attack (changed only with
  ``attack_bn='train_update'``).
  """

  x_adv: jax.Array
  eps: jax.Array
  steps: jax.Array
  satisfied: jax.Array
  batch_stats: Any


def fixed_budget(x_adv, batch_stats, *, eps: float, steps: int) -> Adversarial:
  """An :class:`Adversarial` for a method whose every example gets the same budget and steps."""
  b = x_adv.shape[0]
  return Adversarial(x_adv=x_adv, eps=jnp.full((b,), eps, jnp.float32),
                     steps=jnp.full((b,), int(steps), jnp.int32), satisfied=jnp.ones((b,), bool),
                     batch_stats=batch_stats)


@dataclasses.dataclass(frozen=True)
class AttackNet:
  """The network as the adversary sees it: ``apply_fn`` at fixed ``variables`` and a BatchNorm mode."""

  apply_fn: Callable
  variables: dict
  bn: str = "train"

  @property
  def batch_stats(self):
    return self.variables.get("batch_stats", {})

  @property
  def updates_bn(self) -> bool:
    return self.bn == "train_update" and bool(self.batch_stats)

  def logits(self, x, *, bn: str | None = None) -> jax.Array:
    """Logits without side effects (``bn='eval'``: running statistics; else batch statistics)."""
    mode = bn or self.bn
    if mode == "eval" or not self.batch_stats:
      return self.apply_fn(self.variables, x, train=mode != "eval")
    return self.apply_fn(self.variables, x, train=True, mutable=["batch_stats"])[0]

  def stateful_loss(self, per_example_loss: Callable) -> Callable:
    """``loss_fn(x, y, batch_stats) -> (per_example_loss(logits, y), batch_stats)``: one train-mode
    forward pass that updates the running statistics, for the attacks' ``state=`` argument."""

    def loss_fn(x, y, batch_stats):
      v = dict(self.variables, batch_stats=batch_stats)
      logits, upd = self.apply_fn(v, x, train=True, mutable=["batch_stats"])
      return per_example_loss(logits, y), upd["batch_stats"]

    return loss_fn


Adversary = Callable[[AttackNet, jax.Array, jax.Array, jax.Array], Adversarial]
Forward = Callable[[jax.Array, Any], tuple]
OuterLoss = Callable[..., tuple]


def ce_outer_loss(forward: Forward, batch_stats, x, x_adv, y):
  """Mean cross-entropy at the adversarial examples (Algorithm 2 line 9; Eq. 2 for AT)."""
  del x
  logits, batch_stats = forward(x_adv, batch_stats)
  return jnp.mean(cross_entropy(logits, y)), logits, batch_stats


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: its adversary and its outer loss (see the module docstring)."""

  name: str
  adversary: Adversary
  loss: OuterLoss = ce_outer_loss
