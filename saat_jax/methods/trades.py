"""TRADES (Zhang et al. 2019) and SA-TRADES, the strength-adaptive TRADES of Tables 2-3.

**TRADES.** Adversary: :func:`~saat_jax.attack.trades_pgd`, ascending ``KL(f(x) || f(x'))`` from
``x + 0.001 N(0, 1)`` with BatchNorm in eval mode (``config.attack_bn='eval'``, as trades.py's
``model.eval()``). Outer loss: :func:`~saat_jax.losses.trades_loss`,
``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with the model in train mode.

**SA-TRADES.** The paper names it (Tables 2-3, "SATRADES_up") but gives no formula. Our design,
from Algorithm 1 and TRADES: Algorithm 1's budget schedule and per-example stopping drive the TRADES
inner maximisation, and the outer loss stays TRADES'. Concretely, the SA-PGD loop of
:func:`~saat_jax.attack.sa_pgd` ascends TRADES' ``KL(f(x) || f(x'))`` (TRADES' adversary, so only
the strength adapts) and each example stops when its *stopping loss* reaches ``rho``:

* ``stop_loss='ce'`` (default): the cross-entropy ``l(f(x'), y)`` of Eq. 5, so ``rho`` means what it
  means in SAAT (the minimum adversarial loss of the training data) and the SAAT_up choices
  (eps_max 14/255, rho 1.7) carry over;
* ``stop_loss='kl'``: the KL itself, the quantity TRADES' adversary maximises (its scale differs:
  choose ``rho`` for it).

The KL is exactly 0 with zero gradient at ``x' = x``, so Algorithm 1's literal start would never
move: ``start='zero'`` starts at TRADES' ``x + 0.001 N(0, 1)`` with budget 0, and
``start='pgd'`` (the SAAT_up scheme of the released code) first runs the TRADES attack at
``start_eps`` (8/255, ``start_steps`` steps of ``start_alpha``) and grows the budget from there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from saat_jax.attack import trades_pgd, trades_start
from saat_jax.losses import cross_entropy, kl_divergence, trades_loss
from saat_jax.methods.base import Method, MethodDef, fixed_budget, register
from saat_jax.methods.saat import Schedule, sa_pgd_adversary, schedule_problems

STOP_LOSSES = ("ce", "kl")


def defaults() -> ml_collections.ConfigDict:
  # TRADES (Zhang et al. 2019; yaodongyu/TRADES train_trades_cifar10.py): beta 6, PGD on the KL with
  # eps 0.031, step 0.007, 10 steps, BatchNorm in eval mode during the attack (attack_bn='eval').
  c = ml_collections.ConfigDict()
  c.beta = 6.0  # the weight of the KL term of the outer loss
  c.eps = 0.031  # the attack's budget
  c.alpha = 0.007  # its step size
  c.steps = 10  # its steps
  return c


def sa_trades_defaults() -> ml_collections.ConfigDict:
  # SA-TRADES (our design, see saat_jax/methods/trades.py): SA-PGD's schedule (config.saat) driving
  # TRADES' KL ascent with TRADES' beta (config.trades); an example stops when stop_loss (ce:
  # l(f(x'), y) as Eq. 5 | kl) reaches rho.
  c = ml_collections.ConfigDict()
  c.stop_loss = "ce"  # ce (Eq. 5's cross-entropy, so rho means what it means in SAAT) | kl
  return c


def trades_problems(config) -> list:
  """What is impossible in ``config.trades`` and for TRADES' eval-mode attack (TRADES, SA-TRADES)."""
  t, out = config.trades, []
  if not t.beta >= 0:
    out.append(f"trades.beta must be >= 0, got {t.beta} (TRADES uses 6; 0 is natural training)")
  if not t.eps >= 0 or not t.alpha > 0 or int(t.steps) < 0:
    out.append(f"trades: need eps >= 0, alpha > 0, steps >= 0, got eps={t.eps}, alpha={t.alpha}, "
               f"steps={t.steps} (TRADES: 0.031, 0.007, 10)")
  if config.attack_bn == "train_update":
    out.append("attack_bn='train_update' is for attacks in train mode; TRADES attacks with "
               "BatchNorm in eval mode: use attack_bn='eval'")
  return out


def sa_trades_problems(config) -> list:
  out = schedule_problems(config.saat) + trades_problems(config)
  if config.sa_trades.stop_loss not in STOP_LOSSES:
    out.append(f"sa_trades.stop_loss={config.sa_trades.stop_loss!r} is unknown; use one of {STOP_LOSSES}")
  return out


def trades_outer_loss(beta: float, awp: bool = False):
  """``trades_loss`` with the forward passes of the reference code, in its order, in train mode.

  trades.py (yaodongyu/TRADES) calls ``model(x_natural)`` for the CE, then ``model(x_adv)`` and
  ``model(x_natural)`` again for the KL target: three train-mode passes, so BatchNorm's running
  statistics are updated three times, natural, adversarial, natural. The AWP version
  (csdongxian/AWP trades_AWP/train_trades_cifar.py, ``train``) computes the KL first and the CE
  last: ``model(x_adv)``, ``model(x_natural)``, ``model(x_natural)``; with ``awp`` that order is
  kept, since the running statistics (which TRADES' eval-mode attack and the evaluation use) depend
  on it. The natural passes give the same logits (batch statistics), so XLA computes them once; the
  repeated pass is kept for its running-statistics update.
  """

  def loss(forward, batch_stats, x, x_adv, y):
    if awp:
      logits_adv, batch_stats = forward(x_adv, batch_stats)
      _, batch_stats = forward(x, batch_stats)  # the KL's target, model(x_natural)
      logits_nat, batch_stats = forward(x, batch_stats)  # the CE's model(x_natural)
    else:
      logits_nat, batch_stats = forward(x, batch_stats)
      logits_adv, batch_stats = forward(x_adv, batch_stats)
      _, batch_stats = forward(x, batch_stats)  # trades.py's second model(x_natural)
    return trades_loss(logits_nat, logits_adv, y, beta=beta), logits_adv, batch_stats

  return loss


def _with_awp(config) -> bool:
  """Whether the run wraps the method in AWP (``awp.gamma > 0``; a config without the section has none)."""
  return float((config.get("awp") or {}).get("gamma", 0.0)) > 0


def trades(config) -> Method:
  t = config.trades
  eps, alpha, steps = float(t.eps), float(t.alpha), int(t.steps)

  def adversary(net, x, y, key):
    x_adv = trades_pgd(net.logits, x, eps=eps, alpha=alpha, steps=steps, key=key)
    return fixed_budget(x_adv, net.batch_stats, eps=eps, steps=steps)

  return Method("trades", adversary, trades_outer_loss(float(t.beta), awp=_with_awp(config)))


def sa_trades(config) -> Method:
  s, t = Schedule.from_config(config.saat), config.trades
  stop = config.sa_trades.stop_loss

  def adversary(net, x, y, key):
    logits_nat = jax.lax.stop_gradient(net.logits(x))

    def loss_fn(xa, ya):
      logits = net.logits(xa)
      kl = kl_divergence(logits_nat, logits)
      return kl, (cross_entropy(logits, ya) if stop == "ce" else kl)

    if s.start == "pgd":
      x_init = trades_pgd(net.logits, x, eps=s.start_eps, alpha=s.start_alpha, steps=s.start_steps, key=key)
      start = (x_init, s.start_eps, s.start_steps, net.batch_stats)
    else:
      # TRADES' start at budget 0, in the pixel box (the KL's gradient vanishes at x itself).
      x_noise = jnp.clip(trades_start(x, key), 0.0, 1.0)
      start = (x_noise, 0.0, 0, net.batch_stats)
    return sa_pgd_adversary(net, x, y, s, start=start, loss_fn=loss_fn)

  return Method("sa_trades", adversary, trades_outer_loss(float(t.beta), awp=_with_awp(config)))


TRADES = register(MethodDef("trades", trades, section="trades", defaults=defaults, validate=trades_problems, family="TRADES"))
SA_TRADES = register(MethodDef("sa_trades", sa_trades, section="sa_trades", defaults=sa_trades_defaults,
                               reads=("saat", "trades"), validate=sa_trades_problems,
                               uses_sa_pgd=True, family="TRADES"))
