"""APGD, the Auto-PGD attack of Croce & Hein (ICML 2020), as used by AutoAttack.

A JAX port of the reference PyTorch code (``pyautoattack`` 0.2.0, ``autopgd_base.py``:
``APGDAttack`` and ``APGDAttack_targeted``) for the l_inf and l_2 threat models:

* :func:`apgd_attack` -- ``APGDAttack.perturb``: APGD on the cross-entropy (``loss="ce"``,
  AutoAttack's ``apgd-ce``) or on the DLR loss (``loss="dlr"``, ``apgd-dlr``), with ``n_restarts``
  random restarts, each on the points not fooled yet.
* :func:`apgd_targeted_attack` -- ``APGDAttack_targeted.perturb`` (``apgd-t``): the targeted DLR
  loss, one pass of ``n_restarts`` runs for each of the ``n_target_classes`` most likely wrong
  classes of the clean logits (ranks ``2 .. n_target_classes + 1``).
* :func:`dlr_loss`, :func:`dlr_targeted_loss`, :func:`ce_loss` -- the per-example losses.
* :func:`checkpoint_schedule` -- the iterations at which the step size may be halved.

One run (``attack_single_run`` in the reference) is a single ``lax.while_loop`` inside one
``jax.jit``, with every per-example quantity (step size, best loss, best point, momentum, the
loss history used by the oscillation test) vectorised over the batch. Per iteration ``i``:

1. ``z = P(x_k + eta_k * s(grad))`` (``s`` = sign for l_inf, l_2-normalisation for l_2; ``P`` the
   projection onto the eps-ball and ``[0, 1]``), then the momentum step
   ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with ``a = 0.75`` (``a = 1`` at
   the first iteration); the first step size is ``eta_0 = 2 eps``;
2. the loss and its gradient at ``x_{k+1}``; an example misclassified there is fooled and
   ``x_{k+1}`` is kept as its adversarial example (the latest such point, as in the reference);
   a strictly higher loss updates the best point ``x_best`` and its gradient;
3. at the checkpoints of :func:`checkpoint_schedule`, with ``k`` the iterations since the last one,
   the step size of an example is halved, and it restarts from ``x_best`` with the gradient there,
   when (condition 1) the loss increased in at most ``rho * k`` of the last ``k`` iterations, or
   (condition 2) its step size was not halved at the previous checkpoint and its best loss did not
   improve since then.

The loop stops early once no example of the batch is still correctly classified (nothing left to
change but which of a fooled point's adversarial examples is returned).

Random starts are drawn with ``jax.random`` from ``seed``: a uniform point of the l_inf sphere-like
box ``x + eps * t / max|t|``, ``t ~ U[-1, 1]^d`` (l_inf), or ``x + eps * g / ||g||_2``,
``g ~ N(0, I)`` (l_2), clipped to ``[0, 1]``. They cannot equal PyTorch's draws bit for bit; the
attack is the same in distribution.

Assumption shared with the reference: the examples of a batch do not interact through
``logits_fn`` (no BatchNorm on batch statistics), so each example's run is independent of the
others. As in the reference, each restart (and target class) runs only on the points not fooled
yet; they are gathered into a sub-batch padded to a size from a short ladder
(:mod:`saat_jax.autoattack.batching`), so each size compiles once.

A randomised model (AutoAttack's ``rand`` version) is supported through ``eot_iter > 1``: when
``logits_fn`` accepts a ``key`` keyword argument, each of the ``eot_iter`` gradient evaluations
calls it with a fresh key, and the gradients are averaged (Expectation over Transformation).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saat_jax.autoattack.common import (NORMS, LogitsFn, accepts_key, call_model, check_batch, check_eps,
                                        check_int, check_n_target_classes, check_norm, clean_logits,
                                        normalize, project, target_classes, target_restart_passes)
from saat_jax.conv_layout import input_grad

LOSSES = ("ce", "dlr", "dlr-targeted")

# The reference's fixed heavy-ball weight of the new step (``a = 0.75``).
MOMENTUM = 0.75


# ----------------------------------------------------------------------------- losses


def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example cross-entropy ``logsumexp(z) - z_y``, shape ``(B,)``."""
  logits = logits.astype(jnp.float32)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - z_y


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Difference of Logits Ratio loss, shape ``(B,)``.

  ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...``
  the sorted logits. Needs at least 3 classes.
  """
  logits = logits.astype(jnp.float32)
  z_sorted = jnp.sort(logits, axis=1)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  top_is_y = jnp.argmax(logits, axis=1) == y
  # The largest logit of another class: the runner-up if y is on top, else the top one.
  z_other = jnp.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
  return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, y_target: jax.Array) -> jax.Array:
  """Targeted DLR loss, shape ``(B,)``.

  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Needs at least 4 classes.
  """
  logits = logits.astype(jnp.float32)
  z_sorted = jnp.sort(logits, axis=1)
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  z_t = jnp.take_along_axis(logits, y_target[:, None], axis=1)[:, 0]
  return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def _loss_value(loss: str, logits, y, y_target):
  if loss == "ce":
    return ce_loss(logits, y)
  if loss == "dlr":
    return dlr_loss(logits, y)
  return dlr_targeted_loss(logits, y, y_target)


# ----------------------------------------------------------------------------- schedule


def schedule_constants(n_iter: int) -> tuple[int, int, int]:
  """``(first window, minimal window, window decrement)`` of the checkpoints for ``n_iter``.

  The reference's integer version of the paper's ``p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: ``max(int(0.22 n), 1)``,
  ``max(int(0.06 n), 1)`` and ``max(int(0.03 n), 1)``.
  """
  return (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1))


def checkpoint_schedule(n_iter: int) -> list[tuple[int, int]]:
  """The step-size checkpoints of one run: ``[(iteration index i, window length k), ...]``.

  The check runs after iteration ``i`` (0-based) and looks at the ``k`` iterations since the
  previous one. For ``n_iter = 100``: after 22, 41, 57, 70, 80, 87, 93 and 99 iterations.
  """
  k, k_min, k_decr = schedule_constants(n_iter)
  out, counter = [], 0
  for i in range(n_iter):
    counter += 1
    if counter == k:
      out.append((i, k))
      k = max(k - k_decr, k_min)
      counter = 0
  return out


# ----------------------------------------------------------------------------- helpers


def _bcast(v, x):
  """A per-example ``(B,)`` array shaped to broadcast against ``x`` of shape ``(B, ...)``."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _random_start(key, x, eps, norm):
  if norm == "Linf":
    t = 2.0 * jax.random.uniform(key, x.shape, x.dtype) - 1.0
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
  return jnp.clip(x + eps * normalize(t, norm), 0.0, 1.0)


# The CPU layout rewrite of the convolutions inside the attack loops lives in saat_jax.conv_layout.


# ----------------------------------------------------------------------------- one run


@functools.partial(jax.jit, static_argnames=("logits_fn", "norm", "loss", "n_iter", "rho", "eot_iter",
                                             "momentum"))
def apgd_single_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, y_target: jax.Array,
                    key: jax.Array, eps, active: jax.Array, x_init: Optional[jax.Array] = None, *,
                    norm: str, loss: str, n_iter: int, rho: float, eot_iter: int = 1,
                    momentum: float = MOMENTUM):
  """One APGD run (``attack_single_run``) from a random start, on the whole batch.

  Args:
    logits_fn: static; ``logits_fn(x) -> (B, K)`` (or ``logits_fn(x, key=...)``).
    x, y: clean images ``(B, ...)`` and labels ``(B,)``.
    y_target: target classes ``(B,)`` (read only by ``loss="dlr-targeted"``).
    key: PRNG key of the random start (and of a randomised model's draws).
    eps: radius (a traced scalar: changing it does not recompile).
    active: ``(B,)`` bool, the examples whose outcome matters; the loop ends early once none of
      them is correctly classified (padding rows should be ``False``).
    x_init: optional start point (the reference's ``x_init``), used instead of the random start
      (it is clipped to ``[0, 1]`` but not projected, as in the reference).

  Returns:
    ``(x_best, robust, loss_best, x_best_adv, n_zero_grad)``: the highest-loss point, whether the
    example was correctly classified at every iterate, its best loss, the adversarial example
    (the latest misclassified iterate; the start point where none was found) and the number of
    examples whose gradient at the start point is exactly zero.
  """
  x = x.astype(jnp.float32)
  eps = jnp.asarray(eps, jnp.float32)
  takes_key = accepts_key(logits_fn)
  key_init, key_model = jax.random.split(key)

  def value_and_grad(xa, k_model):
    """Loss, logits and input-gradient, averaged over ``eot_iter`` draws (EOT)."""

    def summed(xi, ki):
      logits = logits_fn(xi, key=ki) if takes_key else logits_fn(xi)
      l = _loss_value(loss, logits, y, y_target)
      return jnp.sum(l), (l, logits)

    vg = input_grad(summed, value=True, has_aux=True)
    if eot_iter == 1:
      (_, (l, logits)), g = vg(xa, k_model)
      return l, logits, g

    def eot_body(j, carry):
      _, _, g_sum = carry
      (_, (l, logits)), g = vg(xa, jax.random.fold_in(k_model, j))
      return l, logits, g_sum + g

    (_, (l, logits)), g = vg(xa, jax.random.fold_in(k_model, 0))
    l, logits, g = lax.fori_loop(1, eot_iter, eot_body, (l, logits, g))
    return l, logits, g / float(eot_iter)

  if x_init is None:
    x_adv = _random_start(key_init, x, eps, norm)
  else:
    x_adv = jnp.clip(x_init.astype(jnp.float32), 0.0, 1.0)
  loss0, logits0, grad0 = value_and_grad(x_adv, jax.random.fold_in(key_model, 0))
  flat_abs = jnp.abs(grad0).reshape(grad0.shape[0], -1)
  n_zero_grad = jnp.sum(jnp.sum(flat_abs, axis=1) == 0)
  acc0 = jnp.argmax(logits0, axis=1) == y

  sched = checkpoint_schedule(n_iter)
  check_k = np.zeros((n_iter,), np.int32)
  for i, k in sched:
    check_k[i] = k
  check_k = jnp.asarray(check_k)
  lags = jnp.arange(n_iter)
  batch = x.shape[0]
  step0 = jnp.full((batch,), 2.0, jnp.float32) * eps

  state = dict(
      i=jnp.zeros((), jnp.int32),
      x_adv=x_adv,
      x_adv_old=x_adv,
      grad=grad0,
      grad_best=grad0,
      x_best=x_adv,
      x_best_adv=x_adv,
      loss_best=loss0,
      acc=acc0,
      step=step0,
      loss_steps=jnp.zeros((n_iter, batch), jnp.float32),
      loss_best_last_check=loss0,
      reduced_last_check=jnp.ones((batch,), bool),
  )

  def cond(s):
    return (s["i"] < n_iter) & jnp.any(s["acc"] & active)

  def body(s):
    i = s["i"]
    x_cur = s["x_adv"]
    grad = s["grad"]
    step = _bcast(s["step"], x)
    diff = x_cur - s["x_adv_old"]
    a = jnp.where(i > 0, jnp.float32(momentum), jnp.float32(1.0))
    if norm == "Linf":
      z = project(x_cur + step * jnp.sign(grad), x, eps, norm)
    else:
      z = project(x_cur + step * normalize(grad, norm), x, eps, norm)
    x_new = project(x_cur + (z - x_cur) * a + diff * (1.0 - a), x, eps, norm)

    loss_i, logits, grad_new = value_and_grad(x_new, jax.random.fold_in(key_model, i + 1))
    pred_ok = jnp.argmax(logits, axis=1) == y
    acc = s["acc"] & pred_ok
    x_best_adv = jnp.where(_bcast(~pred_ok, x), x_new, s["x_best_adv"])

    loss_steps = s["loss_steps"].at[i].set(loss_i)
    better = loss_i > s["loss_best"]
    bb = _bcast(better, x)
    x_best = jnp.where(bb, x_new, s["x_best"])
    grad_best = jnp.where(bb, grad_new, s["grad_best"])
    loss_best = jnp.where(better, loss_i, s["loss_best"])

    # Step-size checkpoint (only where check_k[i] > 0). Indices wrap like Python's negative
    # indexing in the reference: at the first checkpoint the oldest comparison is against the
    # (still zero) last row of the loss history.
    k = check_k[i]
    is_check = k > 0
    cur = loss_steps[(i - lags) % n_iter]
    prev = loss_steps[(i - lags - 1) % n_iter]
    n_incr = jnp.sum(((cur > prev) & (lags < k)[:, None]).astype(jnp.float32), axis=0)
    cond1 = n_incr <= k.astype(jnp.float32) * jnp.float32(rho)
    cond2 = ~s["reduced_last_check"] & (s["loss_best_last_check"] >= loss_best)
    reduce = is_check & (cond1 | cond2)
    rb = _bcast(reduce, x)
    step_new = jnp.where(reduce, s["step"] / 2.0, s["step"])
    x_next = jnp.where(rb, x_best, x_new)
    grad_next = jnp.where(rb, grad_best, grad_new)
    reduced_last_check = jnp.where(is_check, reduce, s["reduced_last_check"])
    loss_best_last_check = jnp.where(is_check, loss_best, s["loss_best_last_check"])

    return dict(i=i + 1, x_adv=x_next, x_adv_old=x_cur, grad=grad_next, grad_best=grad_best,
                x_best=x_best, x_best_adv=x_best_adv, loss_best=loss_best, acc=acc, step=step_new,
                loss_steps=loss_steps, loss_best_last_check=loss_best_last_check,
                reduced_last_check=reduced_last_check)

  s = lax.while_loop(cond, body, state)
  return s["x_best"], s["acc"], s["loss_best"], s["x_best_adv"], n_zero_grad


# ----------------------------------------------------------------------------- public attacks


def _prepare(name, logits_fn, x, y, eps, norm, n_iter, n_restarts, rho, eot_iter, loss):
  check_norm(name, norm)
  if loss not in LOSSES:
    raise ValueError(f"{name}: unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
  eps = check_eps(name, eps)
  check_int(f"{name}: n_iter", n_iter, 1)
  check_int(f"{name}: n_restarts", n_restarts, 0)
  check_int(f"{name}: eot_iter", eot_iter, 1)
  if not 0.0 < float(rho) <= 1.0:
    raise ValueError(f"{name}: rho must lie in (0, 1] (the reference uses 0.75), got {rho!r}")
  x, y = check_batch(name, x, y, images=False)
  return x, y, eps


def _n_classes_check(name, n_cls, loss):
  if loss == "dlr" and n_cls < 3:
    raise ValueError(f"{name}: the DLR loss needs at least 3 classes, the model has {n_cls}; use loss='ce'")
  if loss == "dlr-targeted" and n_cls < 4:
    raise ValueError(f"{name}: the targeted DLR loss needs at least 4 classes, the model has {n_cls}")


def _run_passes(logits_fn, x, y, targets, *, eps, norm, loss, n_iter, n_restarts, seed, rho,
                eot_iter, mask, stats=None):
  """The restart (and target) passes of ``perturb``, each on the points not fooled yet; returns
  ``x_adv``."""
  logits = clean_logits(logits_fn, x, jax.random.fold_in(jax.random.key(seed), 10**6))
  robust = np.array(jnp.argmax(logits, axis=1) == y)
  if mask is not None:
    robust &= np.asarray(mask, bool)
  y_targets = [y if target_fn is None else target_fn(logits) for target_fn in targets]
  n_zero = 0

  def one_pass(t_idx, restart, key, rows, real):
    del restart  # every APGD run starts at a random point
    nonlocal n_zero
    r = jnp.asarray(rows)
    _, acc_curr, _, adv_curr, nz = apgd_single_run(
        logits_fn, x[r], y[r], y_targets[t_idx][r], key, eps, jnp.asarray(real), norm=norm,
        loss=loss, n_iter=int(n_iter), rho=float(rho), eot_iter=int(eot_iter))
    n_zero = max(n_zero, int(nz))
    return adv_curr, ~np.asarray(acc_curr)

  x_adv = target_restart_passes(one_pass, x, robust, seed=seed, n_targets=len(targets),
                                n_restarts=n_restarts)
  if stats is not None:
    stats["n_zero_grad"] = n_zero
  return x_adv


def apgd_attack(logits_fn: LogitsFn, x, y, *, eps: float, norm: str = "Linf", loss: str = "ce",
                n_iter: int = 100, n_restarts: int = 1, seed: int = 0, rho: float = 0.75,
                eot_iter: int = 1, y_target=None, mask=None, stats: Optional[dict] = None) -> jax.Array:
  """Untargeted APGD (``APGDAttack.perturb``); returns ``x_adv``, equal to ``x`` where it fails.

  Args:
    logits_fn: pure, jittable ``logits_fn(x) -> (B, K)`` on images in ``[0, 1]`` (static: pass the
      same function object across calls to reuse the compiled loop). A randomised model may take a
      ``key`` keyword argument (see ``eot_iter``).
    x: images ``(B, ...)`` in ``[0, 1]`` (NHWC for images; any layout works).
    y: true labels ``(B,)``.
    eps: radius of the l_inf / l_2 ball, in pixel units (``8/255``).
    norm: ``"Linf"`` or ``"L2"``.
    loss: ``"ce"`` (``apgd-ce``), ``"dlr"`` (``apgd-dlr``), or ``"dlr-targeted"`` with
      ``y_target`` given (use :func:`apgd_targeted_attack` for AutoAttack's ``apgd-t``).
    n_iter: iterations per run (100 in AutoAttack).
    n_restarts: runs; run ``r > 0`` attacks only the points no earlier run fooled.
    seed: seed of the random starts.
    rho: the oscillation threshold of condition 1 (0.75).
    eot_iter: gradient evaluations averaged per iteration (20 in AutoAttack ``rand``).
    mask: optional ``(B,)`` bool; rows where it is ``False`` (padding) are not attacked for.
    stats: optional dict, filled with ``n_zero_grad`` (the most examples with an all-zero gradient
      at a start point in one run; the reference warns about such points for the DLR losses).

  Points misclassified on ``x`` itself are returned unchanged, as in the reference.
  """
  x, y, eps = _prepare("apgd_attack", logits_fn, x, y, eps, norm, n_iter, n_restarts, rho, eot_iter, loss)
  if loss == "dlr-targeted":
    if y_target is None:
      raise ValueError("apgd_attack: loss='dlr-targeted' needs y_target; for AutoAttack's APGD-T "
                       "use apgd_targeted_attack")
    y_target = jnp.asarray(y_target, jnp.int32)
    if y_target.shape != y.shape:
      raise ValueError(f"apgd_attack: y_target must have shape {y.shape}, got {y_target.shape}")
    targets = [lambda logits: y_target]
  else:
    targets = [None]
  n_cls = jax.eval_shape(lambda: call_model(logits_fn, x[:1], jax.random.key(0))).shape[-1]
  _n_classes_check("apgd_attack", n_cls, loss)
  return _run_passes(logits_fn, x, y, targets, eps=eps, norm=norm, loss=loss, n_iter=n_iter,
                     n_restarts=n_restarts, seed=seed, rho=rho, eot_iter=eot_iter, mask=mask,
                     stats=stats)


def apgd_targeted_attack(logits_fn: LogitsFn, x, y, *, eps: float, norm: str = "Linf",
                         n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9,
                         seed: int = 0, rho: float = 0.75, eot_iter: int = 1, mask=None,
                         stats: Optional[dict] = None) -> jax.Array:
  """APGD-T (``APGDAttack_targeted.perturb``) on the targeted DLR loss; returns ``x_adv``.

  For each target rank ``2 .. n_target_classes + 1`` of the clean logits (the most likely wrong
  classes first), ``n_restarts`` runs on the points not fooled yet. Needs ``n_target_classes <=
  K - 1`` and ``K >= 4`` classes. Other arguments as in :func:`apgd_attack`.
  """
  x, y, eps = _prepare("apgd_targeted_attack", logits_fn, x, y, eps, norm, n_iter, n_restarts, rho,
                       eot_iter, "dlr-targeted")
  n_cls = jax.eval_shape(lambda: call_model(logits_fn, x[:1], jax.random.key(0))).shape[-1]
  _n_classes_check("apgd_targeted_attack", n_cls, "dlr-targeted")
  n_target_classes = check_n_target_classes("apgd_targeted_attack", n_target_classes, n_cls)
  targets = [functools.partial(target_classes, rank=rank) for rank in range(2, n_target_classes + 2)]
  return _run_passes(logits_fn, x, y, targets, eps=eps, norm=norm, loss="dlr-targeted", n_iter=n_iter,
                     n_restarts=n_restarts, seed=seed, rho=rho, eot_iter=eot_iter, mask=mask,
                     stats=stats)


__all__ = ["apgd_attack", "apgd_targeted_attack", "apgd_single_run", "ce_loss", "dlr_loss",
           "dlr_targeted_loss", "checkpoint_schedule", "schedule_constants", "target_classes",
           "accepts_key", "check_eps", "NORMS", "LOSSES"]
