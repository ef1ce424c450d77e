"""Training methods, each one readable piece: its adversary and its outer loss.

==============  ==============================================  ===================================
``method``      adversary (inner maximisation)                  outer loss
==============  ==============================================  ===================================
``natural``     none (Eq. 1)                                    CE(f(x), y)
``at``          PGD-10, eps 8/255 (Madry et al.; Rice et al.)   CE(f(x'), y)
``saat``        SA-PGD, Algorithm 1 (optionally PGD warm start)  CE(f(x'), y)      (Algorithm 2)
``trades``      TRADES PGD on KL(f(x) || f(x'))                 CE(f(x), y) + beta KL (TRADES)
``sa_trades``   SA-PGD schedule driving TRADES' KL ascent       CE(f(x), y) + beta KL
==============  ==============================================  ===================================

AWP (:mod:`saat_jax.awp`, ``config.awp.gamma > 0``) composes with any of them from the training
step: it perturbs the weights against the method's own outer loss.
"""

from __future__ import annotations

from saat_jax.methods.at import at
from saat_jax.methods.base import ATTACK_BN, Adversarial, AttackNet, Method
from saat_jax.methods.natural import natural
from saat_jax.methods.saat import saat
from saat_jax.methods.trades import STOP_LOSSES, sa_trades, trades

METHODS = {"natural": natural, "at": at, "saat": saat, "trades": trades, "sa_trades": sa_trades}


def get_method(config) -> Method:
  """The :class:`Method` named by ``config.method``; an unknown name lists the known ones."""
  try:
    build = METHODS[config.method]
  except KeyError:
    raise ValueError(f"method={config.method!r} is unknown; use one of {tuple(METHODS)}") from None
  return build(config)


__all__ = ["METHODS", "get_method", "Method", "Adversarial", "AttackNet", "ATTACK_BN", "STOP_LOSSES"]
