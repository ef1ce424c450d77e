"""Adversarial Weight Perturbation (Wu et al., NeurIPS 2020), as pure functions of explicit params.

AWP trains on the adversarial examples at adversarially perturbed weights ``w + v``: the
perturbation ``v`` comes from one step of a proxy optimiser ascending the method's outer loss,
rescaled layer by layer to ``gamma * ||w||`` (Eq. 8-9 of the paper; csdongxian/AWP utils_awp.py,
``calc_awp`` and ``diff_in_weights``). A training step is then::

  v = weight_perturbation(lambda p: outer_loss(p, x_adv, y), params, gamma=gamma)
  grads = jax.grad(outer_loss)(perturb(params, v), x_adv, y)   # loss and gradient at w + v
  new_params = optimizer_step(perturb(params, v), grads)
  new_params = perturb(new_params, v, -1.0)                    # restore: the step minus v

as the reference does with ``awp_adversary.perturb(awp)``, ``optimizer.step()`` and
``awp_adversary.restore(awp)``.
"""

from __future__ import annotations

from typing import Any, Callable

import math

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

# The reference's EPS in diff_in_weights: ``old_w.norm() / (diff_w.norm() + EPS) * diff_w``.
AWP_EPS = 1e-20


def _check_number(name: str, value, *, positive: bool, hint: str) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  v = np.asarray(value, dtype=np.float64)
  ok = v.ndim == 0 and np.isfinite(v) and (v > 0 if positive else v >= 0)
  if not ok:
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"weight_perturbation: {name} must be a finite scalar {bound}, got {value!r}; {hint}")


def _norm(a: jax.Array) -> jax.Array:
  """Frobenius norm of the whole tensor (``torch.Tensor.norm()``), in float32."""
  a = a.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(a * a))


def weight_perturbation(loss_fn: Callable[[Params], jax.Array], params: Params, *, gamma,
                        proxy_lr=0.01) -> Params:
  """The AWP weight perturbation ``v`` (csdongxian/AWP utils_awp.py, ``calc_awp``).

  One proxy SGD step (no momentum, no weight decay) on ``-loss_fn``, i.e.
  ``w' = w + proxy_lr * grad(loss_fn)(w)``; then, for every leaf with ``ndim > 1`` (conv and dense
  kernels), ``d = w' - w`` and ``v = gamma * ||w|| / (||d|| + 1e-20) * d`` with Frobenius norms of
  the whole tensor (``diff_in_weights`` with ``EPS = 1e-20``, the reference's ``gamma`` applied by
  ``add_into_weights(coeff=gamma)`` folded in here). Leaves with ``ndim <= 1`` (biases, BatchNorm
  scale and bias) get zeros, as the reference skips every tensor with ``len(size()) <= 1``.

  Because ``d`` is rescaled, ``proxy_lr`` matters only through rounding and the 1e-20: the
  reference uses ``SGD(proxy.parameters(), lr=0.01)`` for AT-AWP (AT_AWP/train_cifar10.py) and the
  main learning rate (``lr=0.1``) for TRADES-AWP (trades_AWP/train_trades_cifar.py).

  BatchNorm: the reference's proxy is in train mode (``self.proxy.train()``), so BatchNorm uses
  batch statistics; here ``loss_fn`` decides that (apply the model with ``train=True`` and
  ``mutable=['batch_stats']``), and any running-statistics update it makes must be discarded, as
  the reference copies only the weight difference back to the model. Pass ``params`` only (not
  ``batch_stats``): the reference's running statistics are 1-D and never perturbed.

  Args:
    loss_fn: ``loss_fn(params) -> scalar``, the method's outer loss at the adversarial examples
      (cross-entropy for AT-AWP; the TRADES loss, ``saat_jax.losses.trades_loss``, for
      TRADES-AWP). The proxy step maximises it.
    params: the model's parameter pytree ``w``.
    gamma: the relative size of the perturbation, ``>= 0`` (defaults of the reference scripts:
      0.01 in AT_AWP/train_cifar10.py, 5e-3 in trades_AWP/train_trades_cifar.py; 0 gives zeros).
    proxy_lr: the proxy optimiser's learning rate, ``> 0``.

  Returns:
    ``v``, a pytree of the structure, shapes and dtypes of ``params``; apply it with
    :func:`perturb`.
  """
  _check_number("gamma", gamma, positive=False,
                hint="gamma is the perturbation size relative to ||w|| (e.g. 5e-3 for TRADES-AWP; 0 disables AWP)")
  _check_number("proxy_lr", proxy_lr, positive=True,
                hint="the reference's proxy uses SGD with lr=0.01 (AT-AWP)")
  grads = jax.grad(loss_fn)(params)
  # The proxy: one SGD step descending -loss_fn (ascending loss_fn).
  proxy = jax.tree_util.tree_map(lambda w, g: w + proxy_lr * g.astype(w.dtype), params, grads)

  def leaf(w, w_proxy):
    if jnp.ndim(w) <= 1:
      return jnp.zeros_like(w)
    d = w_proxy - w
    scale = gamma * _norm(w) / (_norm(d) + AWP_EPS)
    return (scale * d.astype(jnp.float32)).astype(w.dtype)

  return jax.tree_util.tree_map(leaf, params, proxy)


def perturb(params: Params, diff: Params, sign=1.0) -> Params:
  """``params + sign * diff``: the reference's ``add_into_weights`` with ``coeff = sign * gamma``.

  ``perturb(params, v)`` moves to the perturbed weights (``AdvWeightPerturb.perturb``);
  ``perturb(new_params, v, -1.0)`` after the optimiser step restores them (``restore``).
  """
  p_struct = jax.tree_util.tree_structure(params)
  d_struct = jax.tree_util.tree_structure(diff)
  if p_struct != d_struct:
    raise ValueError(f"perturb: diff must have the structure of params, got {d_struct} for params {p_struct}; "
                     "pass the pytree returned by weight_perturbation for these params")
  return jax.tree_util.tree_map(lambda p, d: p + sign * d, params, diff)


def awp_config_problems(a) -> list:
  """What is impossible in a ``config.awp`` section (``gamma``, ``proxy_lr``, ``warmup``), one line
  each with the reference's values; :func:`saat_jax.train.validate_config` reports them."""
  out = []
  if not a.gamma >= 0 or not math.isfinite(a.gamma):
    out.append(f"awp.gamma must be finite and >= 0, got {a.gamma} (0: no AWP; AWP-AT uses 0.01)")
  if not a.proxy_lr > 0:
    out.append(f"awp.proxy_lr must be > 0, got {a.proxy_lr} (AWP-AT uses 0.01)")
  if not a.warmup >= 0:
    out.append(f"awp.warmup must be >= 0 epochs, got {a.warmup}")
  return out


def with_awp(update: Callable, *, gamma: float, proxy_lr: float, start_step: int = 0) -> Callable:
  """An optimiser update that trains at AWP-perturbed weights, from global step ``start_step`` on.

  ``update(params, opt_state, objective, step) -> (params, opt_state, loss, aux)`` takes one step on
  ``objective(params) -> (loss, aux)`` (:func:`saat_jax.train.sgd_update`). The wrapped update finds
  ``v = weight_perturbation(objective's loss, params)`` (zeros before ``start_step``: the warm-up),
  calls ``update`` at ``params + v`` (the gradient, weight decay and momentum all at the perturbed
  weights) and subtracts ``v`` from the result: the reference's ``awp_adversary.perturb(awp)``,
  ``optimizer.step()``, ``awp_adversary.restore(awp)``.
  """

  def awp_update(params, opt_state, objective, step):
    def find(p):
      return weight_perturbation(lambda q: objective(q)[0], p, gamma=gamma, proxy_lr=proxy_lr)

    zeros = lambda p: jax.tree_util.tree_map(jnp.zeros_like, p)
    diff = jax.lax.cond(step >= start_step, find, zeros, params)
    new_params, opt_state, loss, aux = update(perturb(params, diff), opt_state, objective, step)
    return perturb(new_params, diff, -1.0), opt_state, loss, aux

  return awp_update


__all__ = ["weight_perturbation", "perturb", "with_awp", "awp_config_problems", "AWP_EPS"]
