"""SAAT (Algorithm 2): SA-PGD examples (Algorithm 1), then the mean cross-entropy at them (line 9).

``config.saat.start`` picks Algorithm 1's start: ``zero`` (``x' = x, eps = 0``, the paper's text)
or ``pgd``, the authors' released ``SAAT/main.py``: PGD-10 at ``start_eps`` 8/255 (alpha 2/255,
random start), then the budget grows from 8/255 by ``tau`` to ``eps_max`` (stages 10, 12, 14/255
for SAAT_up at 14/255) with K steps per stage, each example stopping when its loss reaches ``rho``.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from saat_jax.attack import check_sa_pgd_hparams, sa_pgd
from saat_jax.losses import ce_loss_fn, cross_entropy
from saat_jax.methods.at import pgd_adversary
from saat_jax.methods.base import Adversarial, Method, MethodDef, register

STARTS = ("zero", "pgd")


def defaults() -> ml_collections.ConfigDict:
  # SA-PGD (Algorithm 1) and its hyper-parameters from Sec. 4.1.
  c = ml_collections.ConfigDict()
  c.rho = 1.5  # an example stops once its loss l(f(x'), y) >= rho (Eq. 5)
  c.eps_max = 14 / 255  # the largest budget
  c.tau = 2 / 255  # the budget grows by tau per stage
  c.k = 3  # PGD steps per budget stage (K)
  c.alpha = 2 / 255  # the step size
  c.start = "zero"  # zero: Algorithm 1 (x' = x, eps = 0) | pgd: the released code's warm start
  c.start_eps = 8 / 255  # start=pgd: the warm start's budget, where the stages begin
  c.start_alpha = 2 / 255  # start=pgd: its step size
  c.start_steps = 10  # start=pgd: its steps (PGD-10, random start)
  return c


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Algorithm 1's hyper-parameters (``rho``, ``eps_max``, ``tau``, ``k``, ``alpha``) and its start
  (``start``: zero | pgd, with the warm start's ``start_eps``, ``start_alpha``, ``start_steps``), as
  typed values read once from a ``config.saat`` section."""

  rho: float
  eps_max: float
  tau: float
  k: int
  alpha: float
  start: str = "zero"
  start_eps: float = 8 / 255
  start_alpha: float = 2 / 255
  start_steps: int = 10

  @classmethod
  def from_config(cls, s) -> "Schedule":
    return cls(rho=float(s.rho), eps_max=float(s.eps_max), tau=float(s.tau), k=int(s.k), alpha=float(s.alpha),
               start=str(s.start), start_eps=float(s.start_eps), start_alpha=float(s.start_alpha),
               start_steps=int(s.start_steps))

  @property
  def sa_pgd_kwargs(self) -> dict:
    return dict(rho=self.rho, eps_max=self.eps_max, tau=self.tau, k=self.k, alpha=self.alpha)


def schedule_problems(s) -> list:
  """What is impossible in a ``config.saat`` section (read by SAAT and by SA-TRADES): the rules of
  :func:`saat_jax.attack.check_sa_pgd_hparams`, which ``sa_pgd`` applies to its own arguments, and
  the start's."""
  out = []
  try:
    check_sa_pgd_hparams(rho=s.rho, eps_max=s.eps_max, tau=s.tau, k=s.k, alpha=s.alpha,
                         eps_init=s.start_eps if s.start == "pgd" else 0.0)
  except ValueError as e:
    out.append(str(e).replace("sa_pgd: ", "saat."))
  if s.start not in STARTS:
    out.append(f"saat.start={s.start!r} is unknown; use 'zero' (Algorithm 1) or 'pgd' (released code)")
  if s.start == "pgd" and s.start_eps > s.eps_max:
    out.append(f"saat.start_eps={s.start_eps} exceeds saat.eps_max={s.eps_max}")
  return out


def sa_pgd_adversary(net, x, y, schedule: Schedule, *, start=None, loss_fn=None) -> Adversarial:
  """SA-PGD per ``schedule`` from ``start = (x_init, eps_init, steps_taken, batch_stats)``.

  ``start`` None is Algorithm 1's ``(x, 0)``. ``loss_fn`` defaults to the cross-entropy of ``net``
  (with ``attack_bn='train_update'``, one that updates BatchNorm's running statistics).
  """
  x_init, eps_init, pre_steps, bs = start if start is not None else (None, 0.0, 0, net.batch_stats)
  kw = dict(schedule.sa_pgd_kwargs, x_init=x_init, eps_init=eps_init)
  if net.updates_bn and loss_fn is None:
    x_adv, stats, bs = sa_pgd(net.stateful_loss(cross_entropy), x, y, state=bs, **kw)
  else:
    x_adv, stats = sa_pgd(loss_fn or ce_loss_fn(net.logits), x, y, **kw)
  return Adversarial(x_adv=x_adv, eps=stats.eps, steps=stats.steps + pre_steps, satisfied=stats.satisfied,
                     batch_stats=bs)


def pgd_warm_start(net, x, y, key, schedule: Schedule):
  """The released code's start: PGD (10 steps of 2/255 at 8/255, random start) before SA-PGD."""
  x_init, bs = pgd_adversary(net, x, y, key, eps=schedule.start_eps, alpha=schedule.start_alpha,
                             steps=schedule.start_steps)
  return x_init, schedule.start_eps, schedule.start_steps, bs


def saat(config) -> Method:
  schedule = Schedule.from_config(config.saat)

  def adversary(net, x, y, key):
    start = pgd_warm_start(net, x, y, key, schedule) if schedule.start == "pgd" else None
    return sa_pgd_adversary(net, x, y, schedule, start=start)

  return Method("saat", adversary)


SAAT = register(MethodDef("saat", saat, section="saat", defaults=defaults,
                          validate=lambda config: schedule_problems(config.saat), uses_sa_pgd=True))
