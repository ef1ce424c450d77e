"""Standard adversarial training (Madry et al. 2017; Eq. 2) with the PGD-10 of Rice et al. (2020).

Adversary: PGD, ``config.at.steps`` signed steps of ``alpha`` in the l_inf ball of ``eps`` from a
uniform random start (``attack_pgd``: eps 8/255, alpha 2/255, 10 steps). Outer loss: the mean
cross-entropy at the adversarial examples.
"""

from __future__ import annotations

import ml_collections

from saat_jax.attack import pgd
from saat_jax.losses import ce_loss_fn, cross_entropy
from saat_jax.methods.base import Method, MethodDef, fixed_budget, register


def pgd_adversary(net, x, y, key, *, eps: float, alpha: float, steps: int):
  """PGD at ``net``'s BatchNorm mode; with ``attack_bn='train_update'`` every pass updates BN."""
  if net.updates_bn:
    x_adv, bs = pgd(net.stateful_loss(cross_entropy), x, y, eps=eps, alpha=alpha, steps=steps, key=key,
                    state=net.batch_stats)
  else:
    x_adv, bs = pgd(ce_loss_fn(net.logits), x, y, eps=eps, alpha=alpha, steps=steps, key=key), net.batch_stats
  return x_adv, bs


def defaults() -> ml_collections.ConfigDict:
  # Standard AT: PGD-10, eps 8/255, alpha 2/255, uniform random start (Madry et al.; Rice et al.).
  c = ml_collections.ConfigDict()
  c.eps = 8 / 255  # the training budget (L-inf)
  c.alpha = 2 / 255  # the step size
  c.steps = 10  # PGD steps
  return c


def problems(config) -> list:
  a, out = config.at, []
  if not a.eps >= 0:
    out.append(f"at.eps must be >= 0, got {a.eps}")
  if not a.alpha > 0:
    out.append(f"at.alpha must be > 0, got {a.alpha}")
  if int(a.steps) < 1:
    out.append(f"at.steps must be >= 1, got {a.steps}")
  return out


def at(config) -> Method:
  a = config.at
  eps, alpha, steps = float(a.eps), float(a.alpha), int(a.steps)

  def adversary(net, x, y, key):
    x_adv, bs = pgd_adversary(net, x, y, key, eps=eps, alpha=alpha, steps=steps)
    return fixed_budget(x_adv, bs, eps=eps, steps=steps)

  return Method("at", adversary)


AT = register(MethodDef("at", at, section="at", defaults=defaults, validate=problems))
