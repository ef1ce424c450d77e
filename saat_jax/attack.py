"""The attacks used for training and for quick evaluation, as plain jittable functions.

* :func:`sa_pgd` -- Strength-Adaptive PGD, Algorithm 1 of the paper (Sec. 3.3).
* :func:`pgd` -- Madry et al. PGD (Eq. 4) with the uniform random start of Rice et al. (2020).

Both take a ``loss_fn(x, y)`` returning the per-example loss, shape ``(B,)``, and images whose
pixels lie in ``[clip_min, clip_max]``; budgets (``eps``, ``eps_max``, ``tau``, ``alpha``) are in
the same units as the pixels (``8/255`` for CIFAR in ``[0, 1]``). The threat model is l_inf, as in
every experiment of the paper. ``loss_fn`` may couple the examples of a batch (a model with
BatchNorm on batch statistics, as the reference AT code attacks during training); the gradient taken
is that of the summed loss, whose sign per pixel equals that of PyTorch's mean-reduced loss.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saat_jax.conv_layout import input_grad

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@chex.dataclass(frozen=True)
class SAPGDStats:
  """Per-example outcome of :func:`sa_pgd`; read as ``stats.eps`` or ``stats["eps"]``.

  Attributes:
    eps: the budget at which the example stopped (0 for an example returned unperturbed by
      Algorithm 1 line 4; ``eps_init`` for one already satisfied at a warm start).
    steps: number of signed-gradient steps taken (Algorithm 1 line 10).
    loss: the loss of the returned ``x_adv``, as measured when the example stopped.
    satisfied: ``loss >= rho``, the constraint of Eq. 5.
  """

  eps: jax.Array
  steps: jax.Array
  loss: jax.Array
  satisfied: jax.Array


# Budgets closer than this fraction of tau count as equal (see budget_schedule).
BUDGET_RTOL = 1e-3


def _is_concrete(v) -> bool:
  return not isinstance(v, jax.core.Tracer)


def _check_eps(where: str, eps, hint: str = "") -> None:
  """A concrete budget (scalar or per-example) must be >= 0 and not NaN; a traced one is the caller's."""
  if _is_concrete(eps) and np.any(~(np.asarray(eps, dtype=np.float64) >= 0)):
    raise ValueError(f"{where}: eps must be >= 0 (and not NaN), got {eps!r}{hint}")


def _check_alpha(where: str, alpha, hint: str) -> None:
  """A concrete step size (scalar or per-example) must be finite and > 0."""
  if _is_concrete(alpha):
    a = np.asarray(alpha, dtype=np.float64)
    if np.any(~(a > 0)) or np.any(~np.isfinite(a)):
      raise ValueError(f"{where}: alpha (step size) must be finite and > 0, got {alpha!r} {hint}")


def budget_schedule(eps_max: float, tau: float, eps_init: float = 0.0) -> list[float]:
  """The budgets Algorithm 1 visits: ``[eps_init, e_1, ..., e_S]``.

  Lines 7-8 (``while eps < eps_max: eps <- eps + tau``) evaluated in Python floats, with the
  budget clipped at ``eps_max`` ("never beyond eps_max"). With the released code's warm start
  (``eps_init=8/255, tau=2/255, eps_max=14/255``) this gives stages 10, 12 and 14/255.

  ``eps < eps_max`` is decided with a tolerance of ``BUDGET_RTOL * tau``: a budget typed as a
  rounded decimal (``0.054902`` for 14/255) must not add a stage a hair above the last one, and
  float sums of ``tau`` must not either. A stage that lands within the tolerance of ``eps_max``
  becomes ``eps_max`` exactly.
  """
  tol = BUDGET_RTOL * float(tau)
  budgets = [float(eps_init)]
  eps = float(eps_init)
  while eps < eps_max - tol:
    eps = float(eps_max) if eps + tau >= eps_max - tol else eps + tau
    budgets.append(eps)
  return budgets


def check_sa_pgd_hparams(*, rho, eps_max, tau, k, alpha, eps_init=0.0) -> None:
  """Raise ``ValueError`` naming the bad SA-PGD hyper-parameter and the fix."""

  def num(name, v):
    if not _is_concrete(v):
      raise ValueError(f"sa_pgd: {name} must be a Python number (it sets the loop bounds), got a traced value")
    try:
      return float(v)
    except (TypeError, ValueError):
      raise ValueError(f"sa_pgd: {name} must be a number, got {v!r}") from None

  if _is_concrete(rho):
    if np.any(np.isnan(np.asarray(rho, dtype=np.float64))):
      raise ValueError("sa_pgd: rho is NaN; give the minimum adversarial loss of Eq. 5 as a number "
                       "(e.g. rho=1.5; rho<=0 means natural training, rho=inf climbs to eps_max)")
  em = num("eps_max", eps_max)
  if not math.isfinite(em) or em < 0:
    raise ValueError(f"sa_pgd: eps_max must be finite and >= 0, got {eps_max!r} (e.g. eps_max=14/255)")
  t = num("tau", tau)
  if not math.isfinite(t) or t <= 0:
    raise ValueError(f"sa_pgd: tau (the budget step) must be > 0, got {tau!r} (the paper uses tau=2/255)")
  try:
    k_int = operator.index(k)
  except TypeError:
    k_int = None
  if k_int is None or isinstance(k, bool) or k_int < 1:
    raise ValueError(f"sa_pgd: k (steps per budget) must be >= 1, got {k!r} (the paper uses K=3)")
  _check_alpha("sa_pgd", alpha, "(the paper uses 2/255)")
  ei = num("eps_init", eps_init)
  if not math.isfinite(ei) or ei < 0:
    raise ValueError(f"sa_pgd: eps_init must be finite and >= 0, got {eps_init!r}")
  if (em - 0.0) / t > 1e6:
    raise ValueError(f"sa_pgd: eps_max/tau = {em / t:.3g} budget stages is unreasonable; raise tau")


def _per_example(v, x: jax.Array) -> jax.Array:
  """Broadcast a scalar or ``(B,)`` value against ``x`` of shape ``(B, ...)``."""
  v = jnp.asarray(v, x.dtype)
  if v.ndim == 0:
    return v
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _project(x_adv, x, eps, clip_min, clip_max):
  """``clip(Proj_eps(x_adv))``: into the l_inf ball of radius eps around x, then the pixel box."""
  x_adv = jnp.clip(x_adv, x - eps, x + eps)
  return jnp.clip(x_adv, clip_min, clip_max)


def _stateful(loss_fn, state):
  """``loss_fn`` as ``(x, y, state) -> (out, state)``; a stateless one passes ``state`` through."""
  if state is None:
    return lambda xa, ya, st: (loss_fn(xa, ya), st)
  return loss_fn


def _value_and_input_grad(lf, y: jax.Array):
  """One forward and backward pass: per-example loss and the gradient of its sum w.r.t. the input.

  ``lf(x, y, state) -> (out, new_state)`` (:func:`_stateful`), where ``out`` is the per-example
  loss ``(B,)`` or a pair ``(ascent, stop)`` of per-example losses from the same forward pass: the
  gradient is that of ``sum(ascent)`` and the loss returned (the one compared with rho) is
  ``stop``. Returns ``f(x, state) -> (losses, grad, new_state)``.
  """

  def summed(xa, st):
    out, new_st = lf(xa, y, st)
    ascent, stop = out if isinstance(out, tuple) else (out, out)
    return jnp.sum(ascent), (stop, new_st)

  vg = input_grad(summed, value=True, has_aux=True)

  def f(xa, st=()):
    (_, (losses, new_st)), grad = vg(xa, st)
    return losses, grad, new_st

  return f


def sa_pgd(loss_fn: LossFn, x: jax.Array, y: jax.Array, *, rho, eps_max: float, tau: float, k: int,
           alpha, clip_min: float = 0.0, clip_max: float = 1.0, x_init: Optional[jax.Array] = None,
           eps_init: float = 0.0, state=None):
  """Strength-Adaptive PGD (Algorithm 1), over the whole batch in one ``lax.while_loop``.

  Per example (Algorithm 1): ``x' <- x, eps <- 0`` (line 3); if ``l(f(x'), y) >= rho`` it is
  returned unchanged (lines 4-5); otherwise, while ``eps < eps_max`` (line 7) the budget grows by
  ``tau`` (line 8, clipped at ``eps_max``) and up to ``k`` steps
  ``x' <- clip(Proj_eps(x' + alpha * sign(grad l)))`` are taken (lines 9-10); the example stops the
  moment its loss reaches ``rho`` (lines 11-12). One that never does returns its last iterate, at
  ``eps_max``. ``rho <= 0`` therefore gives natural training (x unchanged, as the loss is >= 0) and
  ``rho = inf`` takes every step up to ``eps_max`` (standard AT with a growing budget).

  All examples advance together with per-example budget and done-mask; the loop ends when every
  example is done. Each iteration makes exactly one value-and-grad pass: the loss that tests line 11
  after a step is the one whose gradient drives the next step, so SA-PGD costs one extra pass over
  plain PGD with the same number of steps (the clean loss of line 4).

  Args:
    loss_fn: ``loss_fn(x, y) -> (B,)`` per-example loss (the paper's ``l(f(x), y)``), or
      ``-> (ascent, stop)``: two per-example losses of one forward pass, the steps ascending
      ``ascent`` and lines 4 and 11 testing ``stop >= rho`` (SA-TRADES ascends the TRADES KL and
      may stop on the cross-entropy; see :mod:`saat_jax.methods.trades`).
    x, y: clean batch and labels.
    rho: minimum adversarial loss of Eq. 5 (scalar).
    eps_max: maximum perturbation budget (Python float).
    tau: budget step size (Python float, > 0).
    k: SA-PGD steps per budget (the paper's K, int >= 1).
    alpha: SA-PGD step size.
    clip_min, clip_max: the valid pixel range.
    x_init, eps_init: optional start point. Algorithm 1 starts at ``(x, 0)``. The authors'
      released code (SAAT/main.py) starts from a PGD-10 example at ``eps_init=8/255`` and grows the
      budget from there; pass ``x_init`` (inside the ``eps_init`` ball around ``x``) and
      ``eps_init`` to reproduce it. Line 4 is then tested on ``x_init``.
    state: optional pytree threaded through every pass: ``loss_fn(x, y, state) -> (loss, state)``.
      This is how the PyTorch lineage's side effect is reproduced functionally: attacking in train
      mode there updates BatchNorm's running statistics at every forward pass.

  Returns:
    ``(x_adv, stats)`` with ``stats`` an :class:`SAPGDStats` of per-example arrays; with ``state``,
    ``(x_adv, stats, state)`` after all passes.
  """
  check_sa_pgd_hparams(rho=rho, eps_max=eps_max, tau=tau, k=k, alpha=alpha, eps_init=eps_init)
  k = int(k)
  budgets = budget_schedule(float(eps_max), float(tau), float(eps_init))
  n_stages = len(budgets) - 1
  budget_table = jnp.asarray(budgets, dtype=jnp.float32)
  batch = x.shape[0]
  alpha_b = _per_example(alpha, x)
  rho = jnp.asarray(rho, jnp.float32)

  value_and_grad = _value_and_input_grad(_stateful(loss_fn, state), y)
  x0 = x if x_init is None else x_init.astype(x.dtype)
  loss0, grad0, state0 = value_and_grad(x0, () if state is None else state)
  loss0 = loss0.astype(jnp.float32)
  # Line 4: examples whose loss is already >= rho are done; with no budget stage (eps_max <=
  # eps_init) every example is done at once.
  done0 = (loss0 >= rho) | (n_stages == 0)
  zeros_i = jnp.zeros((batch,), jnp.int32)
  init = dict(
      x_adv=x0,
      loss=loss0,
      grad=grad0,
      stage=zeros_i,
      # Steps taken at the current budget; starting at k makes the first step open stage 1 (line 8).
      k_in_stage=jnp.full((batch,), k, jnp.int32),
      steps=zeros_i,
      done=done0,
      state=state0,
  )

  def cond(s):
    return ~jnp.all(s["done"])

  def body(s):
    active = ~s["done"]
    new_stage = active & (s["k_in_stage"] >= k)  # line 8: eps <- eps + tau
    stage = jnp.where(new_stage, s["stage"] + 1, s["stage"])
    k_in_stage = jnp.where(new_stage, 0, s["k_in_stage"])
    eps = _per_example(budget_table[stage], x)
    stepped = _project(s["x_adv"] + alpha_b * jnp.sign(s["grad"]), x, eps, clip_min, clip_max)  # line 10
    mask = _per_example(active, x)
    x_adv = jnp.where(mask, stepped, s["x_adv"])
    step_i = active.astype(jnp.int32)
    k_in_stage = k_in_stage + step_i
    loss, grad, new_state = value_and_grad(x_adv, s["state"])
    loss = loss.astype(jnp.float32)
    reached = loss >= rho  # line 11
    exhausted = (stage >= n_stages) & (k_in_stage >= k)  # last iterate at eps_max
    return dict(
        x_adv=x_adv,
        loss=jnp.where(active, loss, s["loss"]),
        grad=grad,
        stage=stage,
        k_in_stage=k_in_stage,
        steps=s["steps"] + step_i,
        done=s["done"] | (active & (reached | exhausted)),
        state=new_state,
    )

  final = lax.while_loop(cond, body, init)
  stats = SAPGDStats(
      eps=budget_table[final["stage"]],
      steps=final["steps"],
      loss=final["loss"],
      satisfied=final["loss"] >= rho,
  )
  if state is not None:
    return final["x_adv"], stats, final["state"]
  return final["x_adv"], stats


def pgd(loss_fn: LossFn, x: jax.Array, y: jax.Array, *, eps, alpha, steps: int,
        key: Optional[jax.Array] = None, restarts: int = 1, clip_min: float = 0.0,
        clip_max: float = 1.0, state=None):
  """Madry PGD under l_inf (Eq. 4): ``x' <- clip(Proj_eps(x' + alpha * sign(grad)))``, ``steps`` times.

  With ``key``, each restart starts from ``x + U(-eps, eps)`` clipped to the pixel box, and the
  restart with the highest final loss is kept per example, as ``attack_pgd`` of Rice et al. (2020)
  and the authors' released code do (PGD-10 for training, PGD-20 with alpha 2/255 for evaluation).
  Without ``key`` the start is ``x`` itself and ``restarts`` must be 1. ``eps`` and ``alpha`` may be
  scalars or per-example ``(B,)`` arrays.

  With ``state`` (``loss_fn(x, y, state) -> (loss, state)``, see :func:`sa_pgd`) the passes are
  those of ``attack_pgd``: ``steps`` value-and-grad passes and one more forward pass per restart
  for the restart selection, each threading ``state``; returns ``(x_adv, state)``.
  """
  if isinstance(steps, bool) or int(steps) != steps or steps < 0:
    raise ValueError(f"pgd: steps must be an integer >= 0, got {steps!r}")
  if restarts < 1:
    raise ValueError(f"pgd: restarts must be >= 1, got {restarts!r}")
  if key is None and restarts != 1:
    raise ValueError("pgd: restarts > 1 needs a random start; pass key=jax.random.key(seed)")
  _check_eps("pgd", eps)
  eps_b = _per_example(eps, x)
  alpha_b = _per_example(alpha, x)
  stateful = state is not None
  lf = _stateful(loss_fn, state)
  grad_fn = input_grad(lambda xa, st: _summed_with_state(lf, xa, y, st), has_aux=True)

  def one_run(x_start, st):
    def step(_, carry):
      xa, st = carry
      g, st = grad_fn(xa, st)
      return _project(xa + alpha_b * jnp.sign(g), x, eps_b, clip_min, clip_max), st

    return lax.fori_loop(0, int(steps), step, (x_start, st))

  st = state if stateful else ()
  if key is None:
    x_adv, st = one_run(x, st)
    return (x_adv, st) if stateful else x_adv
  best_x, best_loss = None, None
  for r_key in jax.random.split(key, restarts):
    delta = jax.random.uniform(r_key, x.shape, x.dtype, -1.0, 1.0) * eps_b
    x_adv, st = one_run(jnp.clip(x + delta, clip_min, clip_max), st)
    if restarts == 1 and not stateful:
      return x_adv
    loss, st = lf(x_adv, y, st)  # attack_pgd's all_loss pass
    if best_x is None:
      best_x, best_loss = x_adv, loss
    else:
      better = loss >= best_loss
      best_x = jnp.where(_per_example(better, x), x_adv, best_x)
      best_loss = jnp.maximum(loss, best_loss)
  return (best_x, st) if stateful else best_x


def _summed_with_state(lf, xa, y, st):
  loss, st = lf(xa, y, st)
  return jnp.sum(loss), st


def trades_start(x: jax.Array, key: jax.Array) -> jax.Array:
  """TRADES' start point ``x + 0.001 * N(0, 1)`` (trades.py; not clipped to the pixel box): the
  KL(f(x) || f(x')) it ascends has zero gradient at ``x' = x`` itself."""
  return x + 0.001 * jax.random.normal(key, x.shape, x.dtype)


def trades_pgd(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, eps, alpha, steps: int,
               key: jax.Array, clip_min: float = 0.0, clip_max: float = 1.0) -> jax.Array:
  """The TRADES inner maximisation (Zhang et al. 2019, Eq. 5; yaodongyu/TRADES trades.py).

  Starts at ``x + 0.001 * N(0, 1)`` (the reference does not clip the start) and takes ``steps``
  signed-gradient steps ascending ``sum_i KL(f(x_i) || f(x'_i))``:
  ``x' <- clip(Proj_eps(x' + alpha * sign(grad)))``; the result is clipped to the pixel box once
  more, as the reference does after its loop (which matters only for ``steps=0``). The natural
  logits ``f(x)`` are computed once and held constant: the reference recomputes
  ``model(x_natural)`` every step, but with the model in eval mode and the gradient taken w.r.t.
  ``x'`` only, that is the same value.

  The TRADES CIFAR-10 settings (train_trades_cifar10.py) are ``eps=0.031``, ``alpha=0.007``,
  ``steps=10``, with the attack run on BatchNorm in eval mode (``model.eval()`` in trades.py); the
  caller's ``logits_fn`` decides the BatchNorm mode. (trades.py's own default ``step_size`` is
  0.003; TRADES-AWP uses ``eps=8/255``, ``alpha=2/255``.)

  Args:
    logits_fn: ``logits_fn(x) -> (B, num_classes)``.
    x: clean batch, pixels in ``[clip_min, clip_max]``.
    eps, alpha: l_inf budget and step size, scalars or per-example ``(B,)`` arrays.
    steps: number of steps (int >= 0).
    key: PRNG key for the ``0.001 * N(0, 1)`` start.
    clip_min, clip_max: the valid pixel range.

  Returns:
    ``x_adv``, of the shape and dtype of ``x``.
  """
  from saat_jax.losses import kl_divergence  # here rather than at the top: losses has no attack import

  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"trades_pgd: steps must be an integer >= 0, got {steps!r} (TRADES uses 10)")
  _check_eps("trades_pgd", eps, " (TRADES uses eps=0.031)")
  _check_alpha("trades_pgd", alpha, "(TRADES uses alpha=0.007)")
  if key is None:
    raise ValueError("trades_pgd: key is needed for the 0.001 * N(0, 1) start; pass key=jax.random.key(seed)")
  eps_b = _per_example(eps, x)
  alpha_b = _per_example(alpha, x)
  logits_natural = lax.stop_gradient(logits_fn(x))
  grad_fn = input_grad(lambda xa: jnp.sum(kl_divergence(logits_natural, logits_fn(xa))))

  def step(_, xa):
    return _project(xa + alpha_b * jnp.sign(grad_fn(xa)), x, eps_b, clip_min, clip_max)

  x_adv = lax.fori_loop(0, int(steps), step, trades_start(x, key))
  return jnp.clip(x_adv, clip_min, clip_max)


__all__: Sequence[str] = ["sa_pgd", "pgd", "trades_pgd", "trades_start", "SAPGDStats", "budget_schedule", "check_sa_pgd_hparams"]
