"""Per-example losses used by the attacks and by training.

The attacks in :mod:`saat_jax.attack` take a ``loss_fn(x, y) -> (B,)``; these helpers build such
functions from a logits function so that the paper's loss ``l(f(x), y)`` (the cross-entropy, as in
Rice et al. 2020 and the authors' released code) is visible where it is used.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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
