"""A run's work dir (:class:`RunDir`) and the rules for resuming it.

:class:`RunDir` owns the work dir of one training run: its lock (:class:`saat_jax.checkpointing.RunLock`,
taken by ``with RunDir(workdir) as run``, released on every way out), its checkpoints
(:class:`saat_jax.checkpointing.RunCheckpoints`), its metrics and its config history, and decides how a
run continues (:meth:`RunDir.resume` -> :class:`Resume`): everything that can be refused is refused
before anything is written, so a refused work dir is left as it was.

* ``metrics.jsonl`` (written by :mod:`saat_jax.metric_writer`): one record per finished epoch; on resume it is read line
  by line (:func:`saat_jax.metric_writer.read_metrics`, leniently) and repaired against the checkpoint (the
  checkpoint is the truth: :func:`history_at`).
* ``config.json`` (the latest config) and ``configs.jsonl`` (one line per start or resume).
* :func:`config_changes`: which keys of a new config would change the training trajectory of a
  checkpoint trained with another (all but :data:`RESUME_FREE_KEYS`); resuming with such changes
  is refused (:class:`ConfigChangeError`) unless ``allow_config_change`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from saat_jax import checkpointing, distributed, log
from saat_jax.evaluators import BEST_COLUMN, yields
from saat_jax.metric_writer import MetricWriter, read_metrics, write_jsonl
# Where the run stops are raised (the loop's stop requests); importable from here as before.
from saat_jax.preemption import TrainingInterrupted, TrainingPreempted


def epoch_list(epochs: list[int]) -> str:
  shown = ", ".join(str(e) for e in epochs[:10])
  return shown + (f", ... ({len(epochs)} in all)" if len(epochs) > 10 else "")


def history_at(path: str, meta: dict, kept: list = ()) -> tuple[list[dict], list[str]]:
  """The records of ``metrics.jsonl`` up to the checkpoint's epoch, one per epoch, and what had to
  be repaired (lines that do not parse, epochs without a record). The checkpoint is the truth:
  records of later epochs (a run killed between its metrics and its checkpoint) are dropped, and an
  epoch without a line gets the record kept in a checkpoint's meta: the checkpoint's own
  (``meta['record']``) or one of ``kept``, the records of the other kept checkpoints (the ``last``
  before, ``best``: :func:`saat_jax.checkpointing.kept_records`)."""
  records, problems = read_metrics(path)
  last = int(meta["epoch"])
  by_epoch = {}
  for r in records:
    if 0 <= r["epoch"] <= last:
      by_epoch[r["epoch"]] = r
  saved = {r["epoch"]: r for r in kept if isinstance(r.get("epoch"), int) and not isinstance(r["epoch"], bool)}
  if isinstance(meta.get("record"), dict):
    saved[last] = meta["record"]
  restored = [e for e in sorted(saved) if 0 <= e <= last and e not in by_epoch]
  for e in restored:
    by_epoch[e] = saved[e]
  if restored == [last]:
    problems.append(f"the record of epoch {last + 1} was missing and is restored from the checkpoint")
  elif restored:
    problems.append(f"the records of epoch(s) {epoch_list([e + 1 for e in restored])} were missing and are restored "
                    "from the checkpoints")
  missing = [e + 1 for e in range(last + 1) if e not in by_epoch]
  if missing:
    problems.append(f"epoch(s) {epoch_list(missing)} have no record")
  return [by_epoch[e] for e in sorted(by_epoch)], problems


def config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


# --------------------------------------------------------------------------------------------
# Resuming: the config must be the one the checkpoint was trained with
# --------------------------------------------------------------------------------------------

# Keys (and sub-trees) that do not change the training trajectory: they may differ on resume.
# Extending a run (num_epochs) is normal; eval.every only changes which epochs are evaluated.
RESUME_FREE_KEYS = ("progress", "check_every", "data_on_device", "steps_per_dispatch", "checkpoint_every_steps",
                    "num_epochs", "eval.batch_size", "eval.every",
                    "data.data_dir", "data.cache_dir", "data.download_url", "data.download_md5", "allow_config_change",
                    "experiment")


class ConfigChangeError(ValueError):
  """Resuming a work dir with a config that changes the training trajectory."""


_UNSET = object()


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))  # an empty dict has no leaves
    else:
      out[f"{prefix}{k}"] = v
  return out


def same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in a config
    return type(a) is type(b) and a == b
  return a == b


def show(v) -> str:
  return "(unset)" if v is _UNSET else json.dumps(v)


def evaluation_only_entries(saved: dict, new: dict) -> set[str]:
  """Names of ``config.evals`` entries that may be added, removed or changed on resume: neither the
  saved nor the new version yields :data:`saat_jax.evaluators.BEST_COLUMN`. Evaluation runs in
  eval mode on its own key (every entry gets the same one), so such an entry changes neither the
  training trajectory nor which epoch is `best`; the entry that picks `best` (and ``eval.*``, which
  it inherits) stays guarded: PGD-10 before and PGD-20 after would compare epochs unevenly."""
  old_e, new_e = saved.get("evals") or {}, new.get("evals") or {}
  free = set()
  for name in set(old_e) | set(new_e):
    versions = [(entries[name], cfg.get("eval")) for cfg, entries in ((saved, old_e), (new, new_e))
                if name in entries]
    names = [yields(entry, defaults) for entry, defaults in versions]
    if all(n is not None and BEST_COLUMN not in n for n in names):
      free.add(name)
  return free


def config_changes(saved: dict, new: dict) -> dict:
  """``{dotted key: (old, new)}`` of the keys that differ between the config a checkpoint was
  trained with (``saved``, as JSON) and ``new`` and change the training trajectory (all but
  :data:`RESUME_FREE_KEYS` and the evaluation-only entries of ``evals``,
  :func:`evaluation_only_entries`). A key the saved config lacks (added to the code since) counts as
  unchanged when ``new`` has its default; a missing value shows as ``(unset)``."""
  old_f, new_f = flatten(saved), flatten(new)
  defaults = flatten(config_json(base_config()))
  free = (*RESUME_FREE_KEYS, *(f"evals.{name}" for name in evaluation_only_entries(saved, new)))
  out = {}
  for k in sorted(set(old_f) | set(new_f)):
    if any(k == f or k.startswith(f + ".") for f in free):
      continue
    o, n = old_f.get(k, _UNSET), new_f.get(k, _UNSET)
    if o is _UNSET and n is not _UNSET and k in defaults and same(defaults[k], n):
      continue
    if o is _UNSET or n is _UNSET or not same(o, n):
      out[k] = (o, n)
  return out


def base_config():
  from saat_jax.config_base import base_config
  return base_config()


def refuse_config_change(workdir: str, done: int, changes: dict) -> ConfigChangeError:
  lines = "\n".join(f"  {k}: {show(o)} -> {show(n)}" for k, (o, n) in changes.items())
  return ConfigChangeError(
      f"work dir {workdir} holds a run trained for {done} epoch(s) with another config; resuming it with "
      f"this one would change its training trajectory:\n{lines}\n"
      f"Resume with the values it was started with, use a new --workdir, or pass "
      f"--config.allow_config_change=True if the change is intended (it is recorded in "
      f"{os.path.join(workdir, 'configs.jsonl')}).")


def refuse_data_change(workdir: str, done: int, trained_on: str, now: str) -> ConfigChangeError:
  """The data a run was trained on (its records' ``data_format``) is not the data this config reads:
  ``data.data_dir`` may change on resume (a moved copy), another copy of the data may not."""
  return ConfigChangeError(
      f"work dir {workdir} was trained for {done} epoch(s) on data of format {trained_on!r}, but this config "
      f"reads {now!r}: resuming would continue the run on other data (e.g. the official archive after the "
      f"JPEG re-encoded copy, when data.data_dir was left out). Point --config.data.data_dir (or data.source) "
      f"at the data it was trained on, use a new --workdir, or pass --config.allow_config_change=True if the "
      f"switch is intended.")


def record_config(workdir: str, config, resumed_from: int, changes: dict) -> None:
  """``config.json`` is the latest config; ``configs.jsonl`` gets one line per start or resume."""
  cfg = config_json(config)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump(cfg, f, indent=2)
  os.replace(path + ".tmp", path)
  entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from_epoch": resumed_from,
           "changed": {k: [None if o is _UNSET else o, None if n is _UNSET else n] for k, (o, n) in changes.items()},
           "config": cfg}
  with open(os.path.join(workdir, "configs.jsonl"), "a") as f:
    f.write(json.dumps(entry) + "\n")


def damage_note(path: str, damage, kept: int, done: int) -> str:
  """The warning for a repaired ``metrics.jsonl``: what was wrong, and what it holds now."""
  return (f"{path} was damaged: {'; '.join(damage)}. Kept the {kept} records of "
          f"epochs up to {done} (the checkpoint's) and rewrote the file.")


def continues_epoch(meta: dict, start_epoch: int, spec: dict, config) -> bool:
  """Whether a position saved inside an epoch (``checkpoints/partial``'s ``meta``) continues this
  run: the epoch after ``last``, the same model, and a config that changes nothing of the trajectory
  (or ``allow_config_change``)."""
  return (int(meta["epoch"]) == start_epoch and meta.get("model") == spec and
          not (config_changes(meta.get("config", {}), config_json(config)) and
               not config.get("allow_config_change", False)))


def stack_steps(step_metrics: list[dict]) -> dict:
  """Per-step metrics as arrays with a leading step axis (how a position inside an epoch saves them)."""
  return {k: np.stack([np.asarray(m[k]) for m in step_metrics]) for k in step_metrics[0]} if step_metrics else {}


def unstack_steps(stacked: dict) -> list[dict]:
  """The per-step metrics of :func:`stack_steps` back, one dict a step."""
  n = len(next(iter(stacked.values()))) if stacked else 0
  return [{k: np.asarray(v[j]) for k, v in stacked.items()} for j in range(n)]


# --------------------------------------------------------------------------------------------
# The work dir of one run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resume:
  """How a run continues, as :meth:`RunDir.resume` decided it.

  ``start_epoch``: the first epoch to train, i.e. the epochs done; ``history``: their records,
  repaired against the checkpoint; ``best_metric``/``best_epoch``: the ``best`` checkpoint's;
  ``state``: the restored state (a fresh one for a new run; None when ``complete``); ``changes``:
  the config changes ``allow_config_change`` let through; ``damage``: what was wrong with
  ``metrics.jsonl`` (``damage_note`` says it as a warning); ``resume_at``: ``(steps done in
  start_epoch, their metrics, seconds spent)`` when a position inside that epoch is continued;
  ``complete``: the run has all its epochs (``step`` is its checkpoint's global step)."""

  start_epoch: int = 0
  history: tuple = ()
  best_metric: float = -1.0
  best_epoch: int = -1
  state: Any = None
  changes: dict = dataclasses.field(default_factory=dict)
  damage: tuple = ()
  damage_note: str = ""
  resume_at: Optional[tuple] = None
  complete: bool = False
  step: int = 0


class RunDir:
  """The work dir of one training run: lock, checkpoints, metrics, config history, resume decision.

  ``with RunDir(workdir) as run:`` takes the lock (process 0 for all processes:
  :func:`saat_jax.distributed.take_workdir`; another run holding it is refused) and on every way
  out closes the metric writer and the checkpoints and releases it. In between:
  :meth:`resume` reads the work dir and decides where training continues, :meth:`start` writes
  what a start records, and the loop writes through :attr:`checkpoints` and :attr:`writer`.
  """

  def __init__(self, workdir: str, *, primary: Optional[bool] = None):
    self.workdir = workdir
    self.primary = jax.process_index() == 0 if primary is None else primary
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.lock = checkpointing.RunLock(workdir)
    self.checkpoints: Optional[checkpointing.RunCheckpoints] = None  # opened by resume (it creates dirs)
    self.writer: Optional[MetricWriter] = None  # opened by start

  def __enter__(self) -> "RunDir":
    # process 0 holds the lock for all processes; an interrupt before this returns releases it
    # there (``with`` calls __exit__ only once __enter__ has returned)
    distributed.take_workdir(self.lock)
    return self

  def __exit__(self, *exc) -> None:
    try:
      if self.writer is not None:
        self.writer.close()
      if self.checkpoints is not None:
        self.checkpoints.close()
    finally:
      self.lock.release()

  def history_at(self, meta: dict) -> tuple[list[dict], list[str]]:
    """:func:`history_at` of this work dir's metrics at the checkpoint of ``meta``, gaps filled from
    the records the kept checkpoints hold."""
    return history_at(self.metrics_path, meta, checkpointing.kept_records(self.workdir))

  def resume(self, config, spec: dict, data_format: str, steps_per_epoch: int,
             fresh_state: Callable[[], Any]) -> Resume:
    """Where a run of ``config`` (model ``spec``, data of ``data_format``) continues in this work dir.

    Refuses, before writing anything, a checkpoint of another model
    (:func:`saat_jax.checkpointing.check_same_model`), a config that changes the trajectory
    (:class:`ConfigChangeError`; ``allow_config_change`` overrides) or other data. A run with all
    its epochs is ``complete`` (nothing restored, no state built). Otherwise ``fresh_state()`` is
    the new state and the restore target: ``last`` is restored into it (one epoch back if the newest
    is unreadable, the history then repaired at that one), and a position saved inside the next
    epoch is continued when it belongs to this run (:func:`continues_epoch`). From the restore on
    the work dir is written (the checkpoint manager creates its directories)."""
    workdir, num_epochs = self.workdir, int(config.num_epochs)
    allow = config.get("allow_config_change", False)
    saved = checkpointing.read_meta(workdir, "last")
    history, changes, damage, done = [], {}, [], 0
    if saved is not None:
      checkpointing.check_same_model(saved, spec, workdir)
      done = int(saved["epoch"]) + 1
      changes = config_changes(saved.get("config", {}), config_json(config))
      if changes and not allow:
        raise refuse_config_change(workdir, done, changes)
      trained_on = (saved.get("record") or {}).get("data_format")
      if trained_on not in (None, "unknown", data_format) and not allow:
        raise refuse_data_change(workdir, done, trained_on, data_format)
      history, damage = self.history_at(saved)
      if done >= num_epochs:
        return Resume(start_epoch=done, history=tuple(history), changes=changes, damage=tuple(damage),
                      damage_note=damage_note(self.metrics_path, damage, len(history), done), complete=True,
                      step=saved["step"])

    state = fresh_state()
    # From here on the work dir is written.
    self.checkpoints = ckpts = checkpointing.RunCheckpoints(workdir)
    start_epoch, best_metric, best_epoch = 0, -1.0, -1
    if saved is not None:
      state, meta = ckpts.restore("last", state)
      if int(meta["epoch"]) != int(saved["epoch"]):  # the newest was unreadable: one epoch back
        history, damage = self.history_at(meta)
        done = int(meta["epoch"]) + 1
      start_epoch = int(meta["epoch"]) + 1
      best_metric, best_epoch = float(meta["best_metric"]), int(meta["best_epoch"])
      log.info(f"resuming {workdir} after epoch {start_epoch} of {num_epochs} (step {int(state.step)})")
      if changes:
        log.info("with a changed config (allow_config_change=True):\n" +
                 "\n".join(f"  {k}: {show(o)} -> {show(n)}" for k, (o, n) in changes.items()))
    # A position inside the epoch after `last` (SIGTERM, checkpoint_every_steps): continue from it.
    resume_at = None
    partial = ckpts.restore_partial(state, after_step=start_epoch * steps_per_epoch)
    if partial is not None:
      p_state, p_meta, p_metrics = partial
      if continues_epoch(p_meta, start_epoch, spec, config):
        state = p_state
        resume_at = (int(p_meta["step_in_epoch"]), unstack_steps(p_metrics), float(p_meta["train_time_s"]))
        log.info(f"continuing epoch {start_epoch + 1} from step {resume_at[0]} of {steps_per_epoch} "
                 f"(global step {int(state.step)}), saved at a stop inside the epoch")
      else:
        log.warn(f"ignoring the position saved inside epoch {int(p_meta['epoch']) + 1} in "
                 f"{checkpointing.checkpoint_dir(workdir, 'partial')}: it does not continue this run's epoch "
                 f"{start_epoch + 1} with this config")
    return Resume(start_epoch=start_epoch, history=tuple(history), best_metric=best_metric, best_epoch=best_epoch,
                  state=state, changes=changes, damage=tuple(damage),
                  damage_note=damage_note(self.metrics_path, damage, len(history), done), resume_at=resume_at)

  def start(self, config, decision: Resume) -> None:
    """Write what a start (or a resume) records, on process 0: the repaired ``metrics.jsonl`` (and
    TensorBoard's writer, :attr:`writer`) and the config history (:func:`record_config`); a
    repair is warned of. A ``complete`` run only has its metrics repaired, and says so."""
    if decision.complete:
      if decision.damage and self.primary:
        write_jsonl(self.metrics_path, list(decision.history))
        log.warn(decision.damage_note)
      log.info(f"{self.workdir} is complete: {decision.start_epoch} epochs done (num_epochs={int(config.num_epochs)}, "
               f"step {decision.step}); nothing to do. Raise --config.num_epochs to train longer.")
      return
    self.writer = MetricWriter(self.workdir, primary=self.primary)

    def record_start():
      try:
        self.writer.start(list(decision.history))
        record_config(self.workdir, config, decision.start_epoch, decision.changes)
      except OSError as e:
        raise checkpointing.WorkdirError.unwritable(self.workdir, e) from e
      if decision.damage:
        log.warn(decision.damage_note)

    distributed.on_primary(record_start, "write the run's records")
