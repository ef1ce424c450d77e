"""SAAT (Algorithm 2): SA-PGD examples (Algorithm 1), then the mean cross-entropy at them (line 9).

``config.saat.start`` picks Algorithm 1's start: ``zero`` (``x' = x, eps = 0``, the paper's text)
or ``pgd``, the authors' released ``SAAT/main.py``: PGD-10 at ``start_eps`` 8/255 (alpha 2/255,
random start), then the budget grows from 8/255 by ``tau`` to ``eps_max`` (stages 10, 12, 14/255
for SAAT_up at 14/255) with K steps per stage, each example stopping when its loss reaches ``rho``.
"""

from __future__ import annotations

from saat_jax.attack import sa_pgd
from saat_jax.losses import ce_loss_fn, cross_entropy
from saat_jax.methods.at import pgd_adversary
from saat_jax.methods.base import Adversarial, Method


def sa_pgd_adversary(net, x, y, s, *, start=None, loss_fn=None) -> Adversarial:
  """SA-PGD per ``config.saat`` (``s``) from ``start = (x_init, eps_init, steps_taken, batch_stats)``.

  ``start`` None is Algorithm 1's ``(x, 0)``. ``loss_fn`` defaults to the cross-entropy of ``net``
  (with ``attack_bn='train_update'``, one that updates BatchNorm's running statistics).
  """
  x_init, eps_init, pre_steps, bs = start if start is not None else (None, 0.0, 0, net.batch_stats)
  kw = dict(rho=s.rho, eps_max=float(s.eps_max), tau=float(s.tau), k=int(s.k), alpha=s.alpha,
            x_init=x_init, eps_init=eps_init)
  if net.updates_bn and loss_fn is None:
    x_adv, stats, bs = sa_pgd(net.stateful_loss(cross_entropy), x, y, state=bs, **kw)
  else:
    x_adv, stats = sa_pgd(loss_fn or ce_loss_fn(net.logits), x, y, **kw)
  return Adversarial(x_adv=x_adv, eps=stats.eps, steps=stats.steps + pre_steps, satisfied=stats.satisfied,
                     batch_stats=bs)


def pgd_warm_start(net, x, y, key, s):
  """The released code's start: PGD (10 steps of 2/255 at 8/255, random start) before SA-PGD."""
  x_init, bs = pgd_adversary(net, x, y, key, eps=float(s.start_eps), alpha=float(s.start_alpha),
                             steps=int(s.start_steps))
  return x_init, float(s.start_eps), int(s.start_steps), bs


def saat(config) -> Method:
  s = config.saat

  def adversary(net, x, y, key):
    start = pgd_warm_start(net, x, y, key, s) if s.start == "pgd" else None
    return sa_pgd_adversary(net, x, y, s, start=start)

  return Method("saat", adversary)
