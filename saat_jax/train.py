"""Training: Strength-Adaptive Adversarial Training (Algorithm 2) and the methods it is compared with.

The step is the same for every method (:mod:`saat_jax.methods`): augment the batch, run the
method's adversary, stop the gradient through its examples, and take one SGD step on the method's
outer loss -- optionally at weights perturbed by AWP (:mod:`saat_jax.awp`, ``config.awp.gamma``),
and optionally keeping an exponential moving average of the weights (``config.ema.decay``).

The attack sees the model as ``config.attack_bn`` says (:data:`saat_jax.methods.ATTACK_BN`): by
default BatchNorm on batch statistics with the running statistics untouched; ``train_update`` lets
every attack pass update them, as the PyTorch code (Rice et al., the released SAAT code) does by
attacking in train mode. SGD with momentum 0.9 and weight decay 5e-4 added to the gradient as
``torch.optim.SGD`` does; the learning rate is divided by 10 at each milestone. Everything is a pure
function of explicit state and of ``(seed, step)``, so a resumed run repeats an uninterrupted one
exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from saat_jax import checkpointing, conv_layout, health, log, parallel, preemption
from saat_jax import workdir as workdir_files
from saat_jax.preemption import TrainingInterrupted, TrainingPreempted
from saat_jax.workdir import ConfigChangeError, config_changes
from saat_jax.awp import awp_config_problems, with_awp
from saat_jax import evaluators
from saat_jax.data import PAD_MODES, augment, epoch_batches, load_dataset, to_float
from saat_jax.losses import correct
from saat_jax.methods import ATTACK_BN, AttackNet, get_method, method_problems
from saat_jax.models import compute_dtype, count_params, init_variables
from saat_jax.run_state import model_from_spec, model_spec, run_dtype, run_keys, variables_of

EPS_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. ``ema`` is ``{'params', 'batch_stats'}`` averaged over steps, or
  None (an empty pytree: checkpoints without EMA keep their structure)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema: Any = None

  @property
  def variables(self) -> dict:
    return variables_of(self.params, self.batch_stats)

  @property
  def ema_variables(self) -> dict:
    if self.ema is None:
      raise ValueError("this run keeps no EMA of the weights; train with --config.ema.decay=0.999 "
                       "(or another decay in (0, 1)) to have one")
    return variables_of(self.ema["params"], self.ema["batch_stats"])


class TrainingDiverged(FloatingPointError):
  """The training loss became NaN or infinite (raised by the loop's check of every step's loss)."""


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What the epochs train with, built from the config (and the data) before the work dir is read:
  the model and its ``spec``, the device ``mesh`` and its replicated sharding ``repl``, the
  optimizer ``tx`` and its learning-rate ``schedule``, and the ``(train_key, eval_key)`` pair."""

  config: ml_collections.ConfigDict
  data: Any
  model: Any
  spec: dict
  mesh: Any
  repl: Any
  tx: Any
  schedule: Callable
  steps_per_epoch: int
  keys: tuple


# --------------------------------------------------------------------------------------------
# Config checks and derived objects
# --------------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raise ``ValueError`` naming every impossible value, before anything is read or written."""
  problems = []
  problems += method_problems(config)  # the method's own section(s): saat_jax.methods.MethodDef.validate
  problems += awp_config_problems(config.awp)
  if not 0 <= config.ema.decay < 1:
    problems.append(f"ema.decay must be in [0, 1), got {config.ema.decay} (0: no EMA; e.g. 0.999)")
  if config.eval.best_weights not in ("raw", "ema"):
    problems.append(f"eval.best_weights={config.eval.best_weights!r}; use 'raw' or 'ema'")
  elif config.eval.best_weights == "ema" and not config.ema.decay > 0:
    problems.append("eval.best_weights='ema' needs an EMA: set ema.decay (e.g. 0.999)")
  try:
    compute_dtype(run_dtype(config))
  except ValueError as e:
    problems.append(f"model.{e}")
  if config.data.pad_mode not in PAD_MODES:
    problems.append(f"data.pad_mode={config.data.pad_mode!r} is unknown; use one of {PAD_MODES}")
  if config.attack_bn not in ATTACK_BN:
    problems.append(f"attack_bn={config.attack_bn!r}; use 'train' (batch statistics), 'train_update' "
                    "(batch statistics, attack passes update the running ones, as the PyTorch code) or 'eval'")
  if int(config.num_epochs) < 1:
    problems.append(f"num_epochs must be >= 1, got {config.num_epochs}")
  for name in ("batch_size", "eval.batch_size"):
    v = config.batch_size if name == "batch_size" else config.eval.batch_size
    if int(v) < 1:
      problems.append(f"{name} must be >= 1, got {v}")
    elif int(v) % jax.device_count():
      problems.append(f"{name}={v} is not divisible by the {parallel.describe_devices()}")
  k = config.get("steps_per_dispatch", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    problems.append(f"steps_per_dispatch must be an integer >= 1 (steps per jitted dispatch), got {k!r}")
  if not isinstance(config.get("data_on_device", False), bool):
    problems.append(f"data_on_device must be True or False, got {config.get('data_on_device')!r}")
  o = config.optim
  if not o.lr > 0 or not math.isfinite(o.lr):
    problems.append(f"optim.lr must be finite and > 0, got {o.lr}")
  if not 0 <= o.momentum < 1:
    problems.append(f"optim.momentum must be in [0, 1), got {o.momentum}")
  if not o.weight_decay >= 0:
    problems.append(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
  if list(o.lr_milestones) != sorted(o.lr_milestones) or any(m < 0 for m in o.lr_milestones):
    problems.append(f"optim.lr_milestones must be increasing epochs >= 0, got {tuple(o.lr_milestones)}")
  if not config.eval.eps >= 0:
    problems.append(f"eval.eps must be >= 0, got {config.eval.eps}")
  if config.eval.select_best_on not in ("test", "val"):
    problems.append(f"eval.select_best_on={config.eval.select_best_on!r}; use 'test' or 'val'")
  if config.eval.select_best_on == "val" and int(config.data.val_size) < 1:
    problems.append("eval.select_best_on='val' needs data.val_size > 0 (e.g. 1000 as Rice et al.)")
  every = config.eval.get("every", 1)
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    problems.append(f"eval.every must be an integer >= 1 (evaluate every N epochs and at the last), got {every!r}")
  # The evaluators (generic: saat_jax.evaluators checks each entry against its registered type);
  # `best` is picked by <split>_pgd_accuracy, so one of them must yield it.
  problems += evaluators.config_problems(config_evals(config), config.eval, needs=(evaluators.BEST_COLUMN,),
                                         checked=("eps", "batch_size"))
  n_dev = jax.device_count()
  for name, v in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
    if int(v) >= 1 and int(v) % n_dev:
      problems.append(f"{name}={v}: {parallel.nearest_multiples_hint(int(v), n_dev)}")
  if problems:
    raise ValueError("invalid config:\n  - " + "\n  - ".join(problems))


def config_evals(config: ml_collections.ConfigDict):
  """The run's evaluator entries: ``config.evals`` (big_vision's ``{name: {type, <settings>}}``), or
  :data:`saat_jax.evaluators.DEFAULT_EVALS` for a config without them (built by hand, or saved by
  an older version): both give natural and PGD-``eval.steps`` accuracy with ``config.eval``'s settings."""
  evals = config.get("evals")
  return evaluators.DEFAULT_EVALS if evals is None else evals


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD as ``torch.optim.SGD(momentum, weight_decay)`` with a piecewise-constant schedule."""
  o = config.optim
  boundaries = {int(round(m * steps_per_epoch)): o.lr_decay for m in o.lr_milestones}
  schedule = optax.piecewise_constant_schedule(o.lr, boundaries)
  tx = optax.chain(optax.add_decayed_weights(o.weight_decay),
                   optax.sgd(schedule, momentum=o.momentum or None))
  return tx, schedule


def initial_state(model, tx, key: jax.Array, image_shape, *, ema: bool = False) -> TrainState:
  """Freshly initialised state; also the restore target for a checkpoint of the same model.

  With ``ema`` the average starts at the initial weights (``optax.incremental_update`` then moves
  it by ``1 - decay`` each step)."""
  variables = init_variables(model, key, image_shape)
  params, bs = variables["params"], variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=bs,
                    opt_state=tx.init(params), ema=_copy({"params": params, "batch_stats": bs}) if ema else None)


def _copy(tree):
  """Fresh buffers: the EMA must not alias the parameters (the step donates its state)."""
  return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


# --------------------------------------------------------------------------------------------
# The training step (Algorithm 2, lines 5-9)
# --------------------------------------------------------------------------------------------


def train_forward(apply_fn, params):
  """``forward(inputs, batch_stats) -> (logits, batch_stats)``: a train-mode pass at ``params``
  (BatchNorm on batch statistics, running statistics updated), as the methods' outer losses take."""

  def forward(inputs, batch_stats):
    if batch_stats:
      logits, upd = apply_fn({"params": params, "batch_stats": batch_stats}, inputs, train=True,
                             mutable=["batch_stats"])
      return logits, upd["batch_stats"]
    return apply_fn({"params": params}, inputs, train=True), batch_stats

  return forward


def sgd_update(tx) -> Callable:
  """``update(params, opt_state, objective, step) -> (params, opt_state, loss, aux)``: one step of
  ``tx`` on ``objective(params) -> (loss, aux)``. AWP wraps it (:func:`saat_jax.awp.with_awp`)."""

  def update(params, opt_state, objective, step):
    del step
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return update


def ema_update(decay: float):
  """``average(ema, params, batch_stats) -> ema``: the EMA of the weights moved by ``1 - decay``
  (``optax.incremental_update``); a run without one (``ema`` None) keeps None."""

  def average(ema, params, batch_stats):
    if ema is None:
      return None
    return optax.incremental_update({"params": params, "batch_stats": batch_stats}, ema, step_size=1.0 - decay)

  return average


def make_train_step(config: ml_collections.ConfigDict, apply_fn, tx, steps_per_epoch: int = 1):
  """``train_step(state, images_uint8, labels, key) -> (state, metrics)``: Algorithm 2, lines 5-9.

  The method's adversary makes ``x'`` (line 7); theta takes one step on the method's outer loss
  (line 9). With AWP (``awp.gamma > 0``, from epoch ``awp.warmup`` on, the epoch being
  ``step // steps_per_epoch``) the update is :func:`saat_jax.awp.with_awp`'s: the weights are
  perturbed against that same loss first, the gradient and the optimizer step (weight decay
  included) are taken at the perturbed weights, and the perturbation is removed afterwards, as
  ``AdvWeightPerturb`` of the AWP code. With ``ema.decay > 0`` the EMA follows each step.
  """
  method = get_method(config)
  d, awp_cfg = config.data, config.awp
  update = sgd_update(tx)
  if float(awp_cfg.gamma) > 0:
    update = with_awp(update, gamma=float(awp_cfg.gamma), proxy_lr=float(awp_cfg.proxy_lr),
                      start_step=int(math.ceil(float(awp_cfg.warmup) * steps_per_epoch)))
  average = ema_update(float(config.ema.decay))

  def train_step(state: TrainState, images, labels, key):
    aug_key, attack_key = jax.random.split(key)
    x = augment(aug_key, images, pad=int(d.pad), flip=bool(d.flip), pad_mode=d.pad_mode) if d.augment \
        else to_float(images)
    adv = method.adversary(AttackNet(apply_fn, state.variables, config.attack_bn), x, labels, attack_key)
    x_adv = jax.lax.stop_gradient(adv.x_adv)

    def objective(params):
      loss, logits, new_bs = method.loss(train_forward(apply_fn, params), adv.batch_stats, x, x_adv, labels)
      return loss, (logits, new_bs)

    params, opt_state, loss, (logits, new_bs) = update(state.params, state.opt_state, objective, state.step)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state,
                           ema=average(state.ema, params, new_bs))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(correct(logits, labels)),
        "eps": adv.eps,
        "steps": adv.steps,
        "satisfied": adv.satisfied,
        "unperturbed": jnp.all(x_adv == x, axis=tuple(range(1, x.ndim))),
    }
    return new_state, metrics

  return train_step


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def make_dispatch(train_step, mesh, train_key):
  """Several training steps in one jitted call on the device-resident training set.

  ``dispatch(state, images, labels, idx, steps) -> (state, metrics)``: ``images``/``labels`` are the
  whole uint8 training set on the devices (replicated), ``idx`` the ``(k, batch)`` example indices of
  k consecutive steps and ``steps`` their global step numbers. ``train_step`` runs on each gathered
  batch (split over the devices as ``parallel.shard_batch`` splits it) with the key
  ``fold_in(train_key, step)`` of the host loop. Metrics come back stacked along a leading axis of
  length k.

  With k = 1 the program is the host loop's step with the gather in front: bit-identical results.
  With k > 1 a ``lax.scan`` runs the steps; XLA compiles a loop body as a computation of its own and
  may fuse (and so round) it differently, so results agree to float32 rounding (a few 1e-8 after
  a step on CPU), not bit for bit (tests/test_device_data.py).
  """
  batch = parallel.data_sharded(mesh)

  def one(st, images, labels, i, step):
    x = jax.lax.with_sharding_constraint(jnp.take(images, i, axis=0), batch)
    y = jax.lax.with_sharding_constraint(jnp.take(labels, i, axis=0), batch)
    return train_step(st, x, y, jax.random.fold_in(train_key, step))

  def dispatch(state, images, labels, idx, steps):
    if idx.shape[0] == 1:
      state, m = one(state, images, labels, idx[0], steps[0])
      return state, jax.tree.map(lambda v: v[None], m)
    # the scan body is a while-loop body: on CPU its convolutions need the canonical layout
    body = conv_layout.canonicalize_on_cpu(lambda st, xs: one(st, images, labels, *xs))
    return jax.lax.scan(body, state, (idx, steps))

  return dispatch


def dispatch_runs(batches: list, k: int) -> list[list]:
  """The epoch's batches in runs of ``k`` consecutive steps; the remainder is one shorter run."""
  return [batches[i:i + k] for i in range(0, len(batches), k)]


def epoch_summary(step_metrics: list[dict]) -> dict:
  """The training fields of an epoch's ``metrics.jsonl`` record from its steps' metrics: mean loss
  and accuracy (in float64), and SA-PGD's statistics over every example (budget mean and quantiles
  in /255, steps, fraction satisfied, fraction left unperturbed)."""
  loss = np.array([m["loss"] for m in step_metrics], np.float64)
  acc = np.array([m["accuracy"] for m in step_metrics], np.float64)
  eps = np.concatenate([m["eps"] for m in step_metrics]).astype(np.float64)
  steps = np.concatenate([m["steps"] for m in step_metrics]).astype(np.float64)
  sat = np.concatenate([m["satisfied"] for m in step_metrics])
  unpert = np.concatenate([m["unperturbed"] for m in step_metrics])
  out = {"train_loss": float(loss.mean()), "train_accuracy": float(acc.mean()),
         "attack_eps_mean": float(eps.mean()) * 255.0,
         "attack_steps_mean": float(steps.mean()),
         "attack_frac_satisfied": float(sat.mean()), "attack_frac_unperturbed": float(unpert.mean())}
  for q, v in zip(EPS_QUANTILES, np.quantile(eps, EPS_QUANTILES)):
    out[f"attack_eps_q{int(q * 100)}"] = float(v) * 255.0
  return out


def _last_good(ckpts: checkpointing.RunCheckpoints, workdir: str) -> str:
  epoch = ckpts.latest_epoch("last")
  where = checkpointing.checkpoint_dir(workdir, "last")
  if epoch is None:
    return f"no epoch had finished, so no checkpoint was written ({where})"
  return f"the last good checkpoint, epoch {epoch + 1}, is kept in {where}"


def divergence_advice(ckpts: checkpointing.RunCheckpoints, workdir: str) -> str:
  """What a non-finite loss says about the checkpoints and what to do. A restored checkpoint was
  verified against its checksums: the state is the one saved, so the training itself diverged.
  One written before checksums were recorded (``ckpts.unverified``, until the run saves its own)
  may be damaged: the message names it first."""
  if ckpts.unverified:
    return (f"the run resumed from {ckpts.unverified}, which has no checksums (written before saat_jax recorded "
            f"them) and so could not be verified, and has saved nothing since: a damaged file in that checkpoint "
            f"would do this. Move that directory aside and run the same command to resume from the one before it; "
            f"if the checkpoint is sound, lower optim.lr or check the data")
  return f"{_last_good(ckpts, workdir)}. Lower optim.lr or check the data."


# --------------------------------------------------------------------------------------------
# Training and per-epoch evaluation
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Train per ``config`` in ``workdir`` (resuming from its ``last`` checkpoint); returns the metrics.

  Validates the config, loads the data and builds the model and optimizer; then takes the work dir
  (:class:`saat_jax.workdir.RunDir`), which refuses (before writing anything) a work dir another run
  holds (:class:`checkpointing.RunLock`) or whose checkpoint was trained with a config that changes
  the trajectory (:func:`config_changes`; ``config.allow_config_change`` overrides), and decides
  where training continues. A finished run returns its metrics without computing. Ctrl-C raises
  :class:`TrainingInterrupted` naming the checkpoint a rerun resumes from.
  """
  validate_config(config)
  data = load_dataset(config.data.name, config.data.data_dir, val_size=int(config.data.val_size),
                      seed=int(config.seed), cache_dir=config.data.get("cache_dir"),
                      source=config.data.source, download_url=config.data.get("download_url"),
                      download_md5=config.data.get("download_md5"))
  if data.name == "digits" and config.data.data_dir:
    log.info(f"note: data.data_dir={config.data.data_dir!r} is ignored: digits come with scikit-learn")
  if data.data_note:
    log.info(f"note: this {data.name} is {data.data_note}: accuracies on it are close to, not the same as, "
             f"the official data's (every epoch records data_format={data.data_format!r})")
  spec = model_spec(config, data.num_classes)
  model = model_from_spec(spec, run_dtype(config))
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)

  if int(config.data.num_train) > 0:
    data = dataclasses.replace(data, train_images=data.train_images[:int(config.data.num_train)],
                               train_labels=data.train_labels[:int(config.data.num_train)])
  num_train = len(data.train_labels)
  batch_size = int(config.batch_size)
  if num_train < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the {num_train} training examples; lower it")
  steps_per_epoch = num_train // batch_size
  tx, schedule = make_optimizer(config, steps_per_epoch)

  init_key, train_key, eval_key = run_keys(int(config.seed))

  setup = TrainSetup(config=config, data=data, model=model, spec=spec, mesh=mesh, repl=repl, tx=tx,
                     schedule=schedule, steps_per_epoch=steps_per_epoch, keys=(train_key, eval_key))

  def fresh_state():
    state = initial_state(model, tx, init_key, data.train_images.shape[1:], ema=float(config.ema.decay) > 0)
    # Replicated over every device of every process (each built the same state from the same key),
    # so that a checkpoint is restored straight into that sharding on every host.
    return jax.device_put(state, repl)

  # Everything that can be refused from the config alone has been checked. Take the work dir
  # (one run at a time), then check it: a refusal leaves it as it was.
  with workdir_files.RunDir(workdir) as run:
    decision = run.resume(config, spec, data.data_format, steps_per_epoch, fresh_state)
    run.start(config, decision)
    if decision.complete:
      return list(decision.history)
    return _train_epochs(setup, run, decision)




def _stepper(config, step_fn, mesh, repl, data, train_key):
  """``(advance, k)``: ``advance(state, batches, step) -> (state, metrics)`` takes the training steps
  of ``batches`` (index arrays, at most k) from global ``step`` on; the metrics of one step, or of
  several stacked along a leading axis (``per_step_metrics`` tells them apart once fetched). The input
  path is the config's: host batches one step a dispatch (the default), or :func:`make_dispatch` on
  the training set kept on the devices (``data_on_device``) or sent a dispatch's batches at a time
  (``steps_per_dispatch`` > 1)."""
  on_device, k = bool(config.get("data_on_device", False)), int(config.get("steps_per_dispatch", 1))
  if not on_device and k == 1:
    train_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(repl, repl))

    def advance(state, batches, step):
      images, labels = parallel.shard_batch(mesh, data.train_images, data.train_labels, index=batches[0])
      return train_step(state, images, labels, jax.random.fold_in(train_key, step))

    return advance, 1
  dispatch = jax.jit(make_dispatch(step_fn, mesh, train_key), donate_argnums=0, out_shardings=(repl, repl))
  if on_device:  # once per run: the uint8 set, replicated (each process gives all of it)
    images_dev = jax.make_array_from_process_local_data(repl, data.train_images)
    labels_dev = jax.make_array_from_process_local_data(repl, data.train_labels)

  def advance(state, batches, step):
    idx = np.stack(batches).astype(np.int32)
    steps = np.arange(step, step + len(batches), dtype=np.int32)
    if on_device:
      return dispatch(state, images_dev, labels_dev, idx, steps)
    sel = idx.reshape(-1)  # host data: the dispatch's batches go over at once
    x = jax.make_array_from_process_local_data(repl, data.train_images[sel])
    y = jax.make_array_from_process_local_data(repl, data.train_labels[sel])
    return dispatch(state, x, y, np.arange(sel.size, dtype=np.int32).reshape(idx.shape), steps)

  return advance, k


def per_step_metrics(steps: list, fetched: list) -> list:
  """``(global step, metrics)`` of every step in fetched dispatches (a dispatch's metrics are one
  step's, scalar loss, or several steps' stacked)."""
  out = []
  for gs, mm in zip(steps, fetched):
    if np.ndim(mm["loss"]) == 0:
      out.append((gs, mm))
    else:
      out += [(gs + j, {k: v[j] for k, v in mm.items()}) for j in range(len(mm["loss"]))]
  return out


def evaluate_epoch(evals, state, splits, eval_key) -> dict:
  """What the evaluators ``evals`` (``[(name, evaluator)]`` of :func:`saat_jax.evaluators.build_evaluators`)
  yield for the weights (and their EMA) on each non-empty split, as ``<prefix><split>_<name>``
  (``test_pgd_accuracy``, ``ema_val_natural_accuracy``). Split ``k`` gets the key
  ``fold_in(eval_key, k)`` every epoch and for every evaluator, so each split gets the same PGD
  starts every epoch."""
  weights = {"": state.variables}
  if state.ema is not None:
    weights["ema_"] = state.ema_variables
  out = {}
  for prefix, variables in weights.items():
    for k, (split, images, labels) in enumerate(splits):
      if len(labels):
        for _, evaluator in evals:
          for name, value in evaluator.run(variables, images, labels, jax.random.fold_in(eval_key, k)):
            out[f"{prefix}{split}_{name}"] = value
  return out


def _train_epochs(setup: "TrainSetup", run: workdir_files.RunDir, decision: workdir_files.Resume) -> list[dict]:
  """The epochs of ``setup`` from ``decision.start_epoch`` on, written to ``run``'s checkpoints and
  metrics; ``decision.resume_at``: ``(steps done in that epoch, their metrics, seconds spent)`` when
  it continues from a position inside the epoch (``checkpoints/partial``). Returns the records of
  every epoch."""
  config, data, model, spec, mesh, repl = setup.config, setup.data, setup.model, setup.spec, setup.mesh, setup.repl
  tx, schedule, steps_per_epoch, (train_key, eval_key) = setup.tx, setup.schedule, setup.steps_per_epoch, setup.keys
  workdir, ckpts, writer = run.workdir, run.checkpoints, run.writer
  state, history, resume_at = decision.state, list(decision.history), decision.resume_at
  start_epoch, best_metric, best_epoch = decision.start_epoch, decision.best_metric, decision.best_epoch
  num_train, batch_size, num_epochs = len(data.train_labels), int(config.batch_size), int(config.num_epochs)
  advance, per_dispatch = _stepper(config, make_train_step(config, model.apply, tx, steps_per_epoch), mesh, repl,
                                   data, train_key)
  ev = config.eval
  every = int(ev.get("every", 1))
  evals = evaluators.build_evaluators(config_evals(config), ev, apply_fn=model.apply, mesh=mesh)
  pgd_key = next(c.key for _, e in evals for c in e.columns if c.name == "pgd_accuracy")  # pgd20, for the log
  num_test = int(ev.num_test) if ev.num_test else len(data.test_labels)
  test_images, test_labels = data.test_images[:num_test], data.test_labels[:num_test]
  # A fixed subset of the training set (no augmentation), for the training robust accuracy and the
  # robust generalisation gap of Figure 3(d).
  n_sub = min(int(ev.train_subset), num_train)
  splits = (("test", test_images, test_labels), ("val", data.val_images, data.val_labels),
            ("trainsub", data.train_images[:n_sub], data.train_labels[:n_sub]))
  log.info(f"{config.method} | {spec['name']} ({count_params(state.params):,} params) | {data.name}: "
        f"{num_train} train, {len(data.val_labels)} val, {num_test} test | {jax.device_count()} device(s) "
        f"| {steps_per_epoch} steps/epoch" + (f" | evaluated every {every} epochs and at the last" if every > 1 else ""))

  at = {"epoch": start_epoch, "step": start_epoch * steps_per_epoch}  # where a Ctrl-C finds the run
  ckpt_every = int(config.get("checkpoint_every_steps", 0))
  compiles = health.CompileCounter().start()
  preempt = preemption.StopRequest().install()  # SIGTERM: finish the step, save the position, exit
  # Where the processes agree on a stop: after every dispatch on one process, ~1 s apart on several.
  stops = preemption.StopAgreement(preempt, start_epoch * steps_per_epoch + (resume_at[0] if resume_at else 0))
  try:
    for epoch in range(start_epoch, num_epochs):
      t0, compiled_before = time.time(), compiles.count
      step_metrics, pending = [], []
      batches = epoch_batches(num_train, batch_size, seed=int(config.seed), epoch=epoch)
      i = 0
      if resume_at is not None and epoch == start_epoch:  # the same batches and keys from step i on
        i, step_metrics, elapsed = resume_at
        t0 -= elapsed
      bar = tqdm(total=len(batches), initial=i, desc=f"epoch {epoch + 1}/{config.num_epochs}", leave=False,
                 disable=not (config.progress and writer.primary), dynamic_ncols=True)

      def flush():
        """Fetch the pending steps' metrics (one transfer) and stop on a non-finite loss."""
        nonlocal pending
        fetched = jax.device_get([m for _, m in pending])
        for gs, mm in per_step_metrics([gs for gs, _ in pending], fetched):
          if not np.isfinite(mm["loss"]):
            raise TrainingDiverged(
                f"training loss became {float(mm['loss'])} at step {gs} (epoch {epoch + 1}, batch {gs - epoch * steps_per_epoch}); "
                f"stopped without saving this epoch; {divergence_advice(ckpts, workdir)}")
          step_metrics.append(mm)
        pending = []
        if step_metrics:
          bar.set_postfix(loss=f"{step_metrics[-1]['loss']:.3f}", eps=f"{step_metrics[-1]['eps'].mean() * 255:.2f}")

      for run in dispatch_runs(batches[i:], per_dispatch):
        global_step = epoch * steps_per_epoch + i
        at.update(epoch=epoch, step=global_step)
        state, m = advance(state, run, global_step)
        pending.append((global_step, m))
        i += len(run)
        bar.update(len(run))
        due = i - (pending[0][0] - epoch * steps_per_epoch) >= int(config.check_every) or i == len(batches)
        if due:
          flush()
        done_steps = epoch * steps_per_epoch + i
        stop_now = stops.after_steps(done_steps, m)  # one process may get SIGTERM a step before another
        periodic = ckpt_every > 0 and done_steps // ckpt_every > (done_steps - len(run)) // ckpt_every
        if i < len(batches) and (stop_now or periodic):
          flush()
          ckpts.save_partial(done_steps, jax.device_get(state), {
              "epoch": epoch, "step": done_steps, "step_in_epoch": i, "train_time_s": time.time() - t0,
              "model": spec, "config": workdir_files.config_json(config)}, workdir_files.stack_steps(step_metrics))
          if stop_now:
            raise TrainingPreempted(
                f"stopped by {preempt.name() or 'a request'} at epoch {epoch + 1}, step {i} of {len(batches)} "
                f"(global step {done_steps}); its position is saved in {checkpointing.checkpoint_dir(workdir, 'partial')}: "
                f"run the same command to continue from there")
      bar.close()
      at["step"] = (epoch + 1) * steps_per_epoch
      train_time = time.time() - t0

      t1 = time.time()
      evaluated = (epoch + 1) % every == 0 or epoch == num_epochs - 1
      record = {"epoch": epoch, "step": int(state.step), "lr": float(schedule(int(state.step) - 1)),
                **epoch_summary(step_metrics), "train_time_s": train_time, "evaluated": evaluated,
                "data_format": data.data_format}
      if evaluated:
        record.update(evaluate_epoch(evals, state, splits, eval_key))
      record["eval_time_s"] = time.time() - t1
      # health: XLA compilations in this epoch (0 after the first one) and host memory (flat)
      record["compiles"], record["host_rss_mb"] = compiles.count - compiled_before, health.host_rss_mb()
      is_best = False
      if evaluated:  # an epoch without evaluation cannot become `best`
        selected = record[f"{'ema_' if ev.best_weights == 'ema' else ''}{ev.select_best_on}_pgd_accuracy"]
        is_best = selected > best_metric
        if is_best:
          best_metric, best_epoch = selected, epoch
      record["best_epoch"] = best_epoch

      # Checkpoints first, then the metrics: metrics.jsonl is never ahead of `last` (a record
      # missing after a crash in between is restored from the checkpoint's meta on resume).
      meta = {"epoch": epoch, "step": int(state.step), "model": spec, "best_metric": best_metric,
              "best_epoch": best_epoch, "select_best_on": ev.select_best_on, "best_weights": ev.best_weights,
              "method": config.method, "image_shape": list(data.train_images.shape[1:]),
              "config": workdir_files.config_json(config), "record": record}
      host_state = jax.device_get(state)
      # Ctrl-C waits for the epoch's checkpoints and its metrics line: the run stops with both written.
      with checkpointing.interrupts_held():
        if is_best:
          ckpts.save("best", epoch, host_state, meta)
        ckpts.save("last", epoch, host_state, meta)
        ckpts.clear_partial()  # the epoch is complete: its positions inside are not needed
        history.append(record)
        if writer.primary:
          try:
            writer.write(history)
          except OSError as e:
            raise checkpointing.WorkdirError(
                f"could not write {writer.path} ({type(e).__name__}: {e}); the checkpoint of epoch {epoch + 1} is "
                f"saved and a rerun restores the record from it: free disk space and run the same command") from e
      if evaluated:
        tested = (f"test nat {record['test_natural_accuracy']:.4f} {pgd_key} "
                  f"{record['test_pgd_accuracy']:.4f}")
      else:
        tested = f"not evaluated (eval.every={every})"
      log.info(f"epoch {epoch + 1:3d} | loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"eps mean {record['attack_eps_mean']:.2f}/255 sat {record['attack_frac_satisfied']:.2f} "
            f"steps {record['attack_steps_mean']:.1f} | {tested} | {train_time:.1f}s + {record['eval_time_s']:.1f}s")
      # A stop that came during the epoch's last steps or its evaluation (or, with several
      # processes, after their last agreement): the epoch's checkpoint is the position.
      if epoch < num_epochs - 1 and stops.between_epochs((epoch + 1) * steps_per_epoch):
        raise TrainingPreempted(
            f"stopped by {preempt.name() or 'a request'} after epoch {epoch + 1}; its checkpoint is saved: "
            f"run the same command to continue")
  except KeyboardInterrupt:
    saved = ckpts.latest_epoch("last")
    where = (f"the last checkpoint is epoch {saved + 1}: run the same command to resume" if saved is not None
             else "no epoch had finished, so there is no checkpoint yet: run the same command to start again")
    raise TrainingInterrupted(f"interrupted at epoch {at['epoch'] + 1} step {at['step']}; {where}") from None
  finally:
    preempt.uninstall()
    compiles.stop()
  return history


__all__ = ["TrainState", "TrainingDiverged", "TrainingInterrupted", "TrainingPreempted", "ConfigChangeError", "config_changes",
           "validate_config", "config_evals", "make_optimizer", "initial_state", "make_train_step", "train_and_evaluate"]
