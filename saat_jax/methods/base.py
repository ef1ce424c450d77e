"""What every training method is made of: an adversary (the inner maximisation) and an outer loss.

A :class:`Method` is two pure functions; a :class:`MethodDef` registers one under its name (with
:func:`register`), together with the config section it owns, that section's defaults and checks,
and what the report says of it. Adding a method is one file: its adversary, its outer loss and its
``register(MethodDef(...))`` (``saat_jax/methods/at.py`` is the shortest example). The training step (:mod:`saat_jax.train`) calls
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
import difflib
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import ml_collections

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


def _no_problems(config) -> list:
  del config
  return []


FAMILIES = ("AT", "TRADES")  # the outer loss's family: Tables 2-3's "AT" / "TRADES" column


@dataclasses.dataclass(frozen=True)
class MethodDef:
  """A training method as the rest of the project knows it, registered under ``name``.

  ``build(config) -> Method``. ``section``: the config section the method owns (``config.<section>``),
  whose defaults ``defaults() -> ConfigDict`` gives; :func:`saat_jax.config_base.base_config` adds
  it, and ``saat-train --config_help`` prints the comments of ``defaults``' source beside its keys
  (a comment on a key's line or the lines above it; the lines above ``c = ...ConfigDict()`` head
  the section). ``reads``: the other sections ``build`` reads (SA-TRADES runs SAAT's budget schedule
  with TRADES' beta), said in the help. ``validate(config) -> [problems]``: every impossible value
  of what the method reads, as one line each saying the fix (:func:`saat_jax.train.validate_config`
  adds them to its own). The report reads ``uses_sa_pgd`` (the adversary is SA-PGD: the run has a
  rho, an eps_max and a budget plot), ``family`` and the section's ``eps`` (a fixed budget).
  """

  name: str
  build: Callable[[ml_collections.ConfigDict], Method]
  section: Optional[str] = None
  defaults: Optional[Callable[[], ml_collections.ConfigDict]] = None
  reads: tuple = ()
  validate: Callable[[ml_collections.ConfigDict], list] = _no_problems
  uses_sa_pgd: bool = False
  family: str = "AT"

  def __post_init__(self):
    if (self.section is None) != (self.defaults is None):
      raise ValueError(f"MethodDef {self.name!r}: give section and defaults together (or neither)")
    if self.family not in FAMILIES:
      raise ValueError(f"MethodDef {self.name!r}: family={self.family!r}; use one of {FAMILIES}")


METHODS: dict[str, MethodDef] = {}  # name -> MethodDef, in registration order


def register(definition: MethodDef, *, replace: bool = False) -> MethodDef:
  """Add ``definition`` to :data:`METHODS` (``replace=True`` to redefine a name); returns it."""
  if definition.name in METHODS and not replace:
    raise ValueError(f"a method named {definition.name!r} is registered already; choose another name "
                     "(or pass replace=True)")
  taken = {d.section: d.name for d in METHODS.values() if d.section and d.name != definition.name}
  if definition.section in taken:
    raise ValueError(f"method {definition.name!r}: config section {definition.section!r} belongs to method "
                     f"{taken[definition.section]!r}; choose another section (or read it: reads=(...))")
  METHODS[definition.name] = definition
  return definition


def unknown_method(name) -> str:
  """The error text for a method name that is not registered: the known ones, and the closest."""
  close = difflib.get_close_matches(str(name), list(METHODS), n=1)
  return (f"method={name!r} is unknown; use one of {tuple(METHODS)}"
          + (f" (did you mean {close[0]!r}?)" if close else ""))


def method_def(name: str) -> MethodDef:
  """The :class:`MethodDef` registered as ``name``; ``ValueError`` listing the known ones if none is."""
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(unknown_method(name)) from None


def get_method(config) -> Method:
  """The :class:`Method` named by ``config.method``; an unknown name lists the known ones."""
  return method_def(config.method).build(config)


def method_problems(config) -> list:
  """What is wrong in ``config`` for its method: the method's own checks (an unknown method is one
  problem, naming the known ones)."""
  if config.method not in METHODS:
    return [unknown_method(config.method)]
  return list(METHODS[config.method].validate(config))


def method_sections() -> dict:
  """``{section: defaults()}`` of the registered methods, in registration order (base_config's)."""
  return {d.section: d.defaults() for d in METHODS.values() if d.section}
