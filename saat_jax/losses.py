"""Per-example losses used by the attacks and by training.

The attacks in :mod:`saat_jax.attack` take a ``loss_fn(x, y) -> (B,)``; these helpers build such
functions from a logits function so that the paper's loss ``l(f(x), y)`` (the cross-entropy, as in
Rice et al. 2020 and the authors' released code) is visible where it is used.

:func:`kl_divergence` and :func:`trades_loss` are the TRADES objective (Zhang et al. 2019), whose
inner maximisation is :func:`saat_jax.attack.trades_pgd`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``l(f(x), y)``, shape ``(B,)``.

  Computed in float32 whatever the logits' dtype, so that the SA-PGD stop rule
  ``l >= rho`` (Algorithm 1, line 11) is not decided in half precision.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example boolean: the arg-max class is the label."""
  return jnp.argmax(logits, axis=-1) == labels


def ce_loss_fn(logits_fn: LogitsFn) -> LossFn:
  """``loss_fn(x, y)`` = per-example cross-entropy of ``logits_fn(x)``."""

  def loss_fn(x, y):
    return cross_entropy(logits_fn(x), y)

  return loss_fn


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Per-example ``KL(softmax(p) || softmax(q)) = sum_c p_c (log p_c - log q_c)``, shape ``(B,)``.

  The KL term of TRADES (Zhang et al. 2019, Eq. 5; yaodongyu/TRADES trades.py, where it is
  ``nn.KLDivLoss`` applied to ``log_softmax(q)`` with target ``softmax(p)``), computed in float32
  from ``log_softmax`` of both arguments so that neither a vanishing probability nor a large logit
  produces ``0 * log 0`` or an overflow. Differentiable in both arguments.
  """
  if logits_p.shape != logits_q.shape or logits_p.ndim < 1:
    raise ValueError(f"kl_divergence: logits_p and logits_q must have the same shape (B, num_classes), "
                     f"got {logits_p.shape} and {logits_q.shape}; pass the natural and the adversarial "
                     "logits of the same batch")
  log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def trades_loss(logits_natural: jax.Array, logits_adv: jax.Array, labels: jax.Array, *, beta) -> jax.Array:
  """The TRADES objective (Zhang et al. 2019, Eq. 5): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``.

  Exactly ``trades_loss`` of yaodongyu/TRADES (trades.py): ``F.cross_entropy(model(x), y)`` (batch
  mean) plus ``beta / batch_size * KLDivLoss(size_average=False)(log_softmax(model(x_adv)),
  softmax(model(x)))``, i.e. the summed per-example KL over the batch size. As in the reference,
  the natural softmax target is not detached: the gradient flows through both ``logits_natural``
  and ``logits_adv``.

  Args:
    logits_natural: ``f(x)``, shape ``(B, num_classes)``.
    logits_adv: ``f(x')`` at the TRADES adversarial examples (:func:`saat_jax.attack.trades_pgd`).
    labels: integer labels, shape ``(B,)``.
    beta: weight of the robust (KL) term, ``>= 0`` (TRADES uses ``beta=6``; 0 is plain CE).

  Returns:
    The scalar loss.
  """
  if not isinstance(beta, jax.core.Tracer):
    b = np.asarray(beta, dtype=np.float64)
    if b.ndim != 0 or not b >= 0:
      raise ValueError(f"trades_loss: beta must be a scalar >= 0 (and not NaN), got {beta!r}; "
                       "TRADES uses beta=6 (beta=0 is natural training with cross-entropy)")
  batch = logits_natural.shape[0]
  natural = jnp.mean(cross_entropy(logits_natural, labels))
  robust = jnp.sum(kl_divergence(logits_natural, logits_adv)) / batch
  return natural + jnp.asarray(beta, jnp.float32) * robust
