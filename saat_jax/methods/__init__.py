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

Each method registers a :class:`MethodDef` (:data:`METHODS`, by name): its builder, the config
section it owns with its defaults and checks, and what the report says of it. A new method is one
file (or a few lines in a test) that calls :func:`register`; training, ``--config_help``, the
config checks and the report then know it, with no other file changed.
"""

from __future__ import annotations

# Registration order is the order of the method list and of the config sections: natural first.
from saat_jax.methods.natural import natural  # noqa: I001
from saat_jax.methods.at import at
from saat_jax.methods.base import (ATTACK_BN, FAMILIES, METHODS, Adversarial, AttackNet, Method, MethodDef, get_method,
                                   method_def, method_problems, method_sections, register)
from saat_jax.methods.saat import Schedule, saat
from saat_jax.methods.trades import STOP_LOSSES, sa_trades, trades

__all__ = ["METHODS", "FAMILIES", "MethodDef", "register", "method_def", "get_method", "method_problems",
           "method_sections", "Method", "Adversarial", "AttackNet", "ATTACK_BN", "STOP_LOSSES", "Schedule",
           "natural", "at", "saat", "trades", "sa_trades"]
