"""Orbax checkpoints of a run: ``<workdir>/checkpoints/{last,best,partial}``.

``last`` is written after every epoch (the two newest are kept: an unreadable newest one is named
and the run falls back to the one before, never silently starting over) and ``best`` whenever the
selection metric (test or validation PGD-20 accuracy, as Rice et al. 2020 select) improves.
``partial`` holds a position inside an epoch (SIGTERM, or every ``checkpoint_every_steps``): the
state, the step, and the metrics of the epoch's steps so far; it is removed when its epoch ends.
Each checkpoint holds the full training state (params, batch_stats, optimizer state, step) and a
JSON ``meta`` record: the epoch, the model's identity, the best metric so far and the config.
Orbax writes into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoint intact; resuming from ``last`` is therefore always possible. A save
that fails (full disk, unwritable directory) raises :class:`CheckpointSaveError` naming the
checkpoint, the directory and the underlying error; the previous checkpoint of that kind stays as
it was, and what Orbax logged about the failure (from its threads) goes to
``checkpoints/errors.log`` instead of the console. Ctrl-C during a save is held back until the
save is complete.

Every checkpoint's meta also holds a SHA-256 checksum of each array (``checksums``, keyed by the
leaf's path, e.g. ``state.params.conv1.kernel``), computed on process 0 from the host arrays it
saves. Every restore -- training's, a position's, evaluation's of the weights alone -- goes through
:func:`newest_readable` and verifies each array it read: a checkpoint whose arrays cannot be read
(a truncated, deleted or emptied data file) or differ from their checksums (bit rot) is unreadable,
named in a warning, and the one before it is used. Checkpoints written before checksums were
recorded load unverified (one info line), and are refused if they hold NaN or inf.

:class:`RunLock` is the work dir's ``.lock`` (pid and host of the run using it), so that two runs
never write the same work dir at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import traceback
import uuid
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from saat_jax import distributed, log, preemption

KINDS = ("last", "best")


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (missing, or of another model)."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written (full disk, unwritable directory); the previous one is intact."""


class WorkdirError(CheckpointError):
  """The work dir cannot be created or written."""

  @classmethod
  def unwritable(cls, workdir: str, e: OSError, what: str = "write to the work dir") -> "WorkdirError":
    return cls(f"cannot {what} {workdir} ({type(e).__name__}: {e}); check its permissions and free space")


class WorkdirLocked(CheckpointError):
  """Another run is using the work dir."""


PARTIAL = "partial"  # a position inside an epoch; not a checkpoint to evaluate
KEEP = {"last": 2, "best": 1, PARTIAL: 1}  # `last`: the newest two, for the fallback


def checkpoint_dir(workdir: str, kind: str) -> str:
  if kind not in KEEP:
    raise CheckpointError(f"unknown checkpoint {kind!r}; use one of {KINDS}")
  return os.path.join(os.path.abspath(workdir), "checkpoints", kind)


def _manager(workdir: str, kind: str, create: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(workdir, kind),
                               options=ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind], create=create))


# What a damaged checkpoint raises when read: Orbax/TensorStore errors come as ValueError, OSError
# (missing or truncated files), KeyError/TypeError (a tree that does not match), JSON errors, and
# -- for an array whose data file is truncated, emptied or gone -- a bare ``Exception`` (see
# :func:`_unreadable`); an array that differs from its checksum raises :class:`ChecksumError`.
READ_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)

CHECKSUMS = "checksums"  # the meta key: {HASH: {leaf name: [dtype, shape, hex digest]}}
HASH = "sha256"  # hashlib's: 52 ms for PreAct ResNet-18's 89 MB state here, BLAKE2b 2.5x slower
# (benchmarks/checkpoint_checksums.py)


class ChecksumError(ValueError):
  """An array read back is not the one saved: its bytes, dtype or shape differ from its checksum."""


def _unreadable(e: BaseException) -> bool:
  """Whether ``e``, raised while reading a checkpoint, means the checkpoint cannot be used.

  Orbax re-raises a failed TensorStore read of an array as a bare ``Exception`` ("Encountered error
  while reading array index", serialization.py), whatever it wrapped: a KeyboardInterrupt (or
  SystemExit) found among the causes is re-raised as what it is, never taken for damage."""
  cause, seen = e, set()
  while cause is not None and id(cause) not in seen:
    if isinstance(cause, (KeyboardInterrupt, SystemExit)):
      raise cause
    seen.add(id(cause))
    cause = cause.__cause__ or cause.__context__
  return isinstance(e, READ_ERRORS) or type(e) is Exception


def _describe(e: BaseException) -> str:
  """``Type: message`` of the innermost cause of ``e`` on one line: TensorStore's own words ("OUT_OF_RANGE:
  Error reading "params.conv1.kernel/0.0.0.0" ..."), not Orbax's wrapper with its many-line spec."""
  while e.__cause__ is not None:
    e = e.__cause__
  return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _orbax_leftover(unraisable) -> bool:
  """Whether an "Exception ignored in ..." report is the noise of a failed Orbax read (see
  :func:`drop_failed_read`): a read left pending on the event loop Orbax closed, or TensorStore
  completing it there from its own thread ("Event loop is closed")."""
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
    return True
  return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def _filter_orbax_leftovers() -> None:
  """Put the filter of :func:`_orbax_leftover` in front of ``sys.unraisablehook`` (once per hook):
  before every read, since TensorStore may report a read left pending from its own thread while the
  failed restore is still unwinding, before :func:`drop_failed_read` runs."""
  hook = sys.unraisablehook
  if not getattr(hook, "drops_orbax_leftovers", False):

    def filtered(unraisable, previous=hook):
      if not _orbax_leftover(unraisable):
        previous(unraisable)

    filtered.drops_orbax_leftovers = True
    sys.unraisablehook = filtered


def drop_failed_read() -> None:
  """Orbax runs a restore's array reads on an event loop of its own and closes it when one read
  fails, the others still pending: each of those coroutines, when collected, and TensorStore, when
  it completes one of them from its thread, report "Exception ignored in: ..." with a traceback
  (what evaluating a damaged checkpoint printed, after its error). Those reports -- and only those
  -- are dropped (:func:`_filter_orbax_leftovers`, in place from before the read), and the pending
  reads are collected now, once the failure is summed up."""
  _filter_orbax_leftovers()
  asyncio_log = logging.getLogger("asyncio")  # "Task was destroyed but it is pending!"
  disabled, asyncio_log.disabled = asyncio_log.disabled, True
  try:
    gc.collect()
  finally:
    asyncio_log.disabled = disabled


class _Unreadable(Exception):
  """A failed read summed up (:func:`_describe`), without the traceback that keeps Orbax's pending
  reads alive (:func:`drop_failed_read`)."""


def leaf_name(path) -> str:
  """A leaf's path as Orbax names its array on disk, ``params.conv1.kernel``: the same for a
  dataclass field, a dict key or a sequence index, so that a restore of a part of the state (plain
  dicts) finds the names a save of the whole state (a :class:`saat_jax.train.TrainState`) recorded."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _host(a) -> np.ndarray:
  """The bytes of a leaf on this host; an array replicated over several processes gives its local copy."""
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    if not a.is_fully_replicated:
      raise ValueError("cannot checksum an array sharded over processes: checkpoints hold the replicated state")
    a = a.addressable_data(0)
  return np.asarray(a, order="C")  # (not ascontiguousarray: it makes a 0-d array 1-d)


def _checksum(a) -> list:
  a = _host(a)
  return [a.dtype.name, list(a.shape), hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()]


def checksums(items: dict) -> dict:
  """``{'<item>.<leaf name>': [dtype, shape, sha256 of the bytes]}`` of every array of ``items``
  (``{'state': pytree, ...}``, the items of one checkpoint)."""
  return {f"{item}.{leaf_name(p)}": _checksum(a) for item, tree in items.items()
          for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _verify(restored: dict, sums: dict) -> None:
  """Raise :class:`ChecksumError` naming the first array of ``restored`` (``{item: pytree}``, all
  or a part of what was saved) that is not the one saved, or that has no checksum under its name."""
  for item, tree in restored.items():
    for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = f"{item}.{leaf_name(p)}"
      want = sums.get(name)
      if want is None:
        raise ChecksumError(f"{name} has no checksum in the checkpoint's meta: its tree is not the one saved")
      got = _checksum(a)
      if got != list(want):
        what = (f"sha256 {got[2][:16]}..., {want[2][:16]}... when saved" if got[:2] == list(want[:2]) else
                f"{got[0]} {tuple(got[1])}, {want[0]} {tuple(want[1])} when saved")
        raise ChecksumError(f"{name} does not match its checksum ({what}): the data changed after it was written")


def _check_finite(state) -> None:
  """A checkpoint without checksums cannot be verified, but a saved state is always finite (a NaN
  loss stops the run before its epoch's checkpoint): NaN or inf means damage."""
  for p, a in jax.tree_util.tree_flatten_with_path(state)[0]:
    a = _host(a)
    if jnp.issubdtype(a.dtype, jnp.inexact) and not np.isfinite(a).all():
      raise ValueError(f"state.{leaf_name(p)} holds NaN or inf, which a saved training state never does")


def _restore_target(target, sums: Optional[dict]):
  """``target``'s shapes and shardings in the dtypes the arrays were saved in: an array is verified as
  saved, then cast to the target's dtype (:func:`_cast_like`)."""

  def one(path, leaf):
    s = ocp.utils.to_shape_dtype_struct(leaf)
    saved = (sums or {}).get(f"state.{leaf_name(path)}")
    if saved is None or jnp.dtype(saved[0]) == s.dtype:
      return s
    return jax.ShapeDtypeStruct(s.shape, jnp.dtype(saved[0]), sharding=getattr(s, "sharding", None))

  return jax.tree_util.tree_map_with_path(one, target)


def _cast_like(restored, target):
  """``restored`` (read in the saved dtypes) in ``target``'s dtypes and, for device arrays, shardings."""

  def one(a, t):
    if a.dtype == t.dtype:
      return a
    return jax.device_put(a.astype(t.dtype), t.sharding) if isinstance(t, jax.Array) else np.asarray(a).astype(t.dtype)

  leaves, treedef = jax.tree_util.tree_flatten(restored)
  return jax.tree_util.tree_unflatten(treedef, [one(a, t) for a, t in zip(leaves, jax.tree_util.tree_leaves(target))])


def _read(mngr: ocp.CheckpointManager, step: int, target: Any = None, step_metrics: bool = False,
          part: Optional[tuple] = None) -> dict:
  """The items of one checkpoint, verified. ``meta`` (without its checksums) always; ``state``
  restored into ``target``'s shapes, dtypes and shardings when a target is given, or only its
  top-level entries ``part`` that hold arrays (as host arrays, the rest -- the optimizer state --
  not read; needs a manager with :func:`_part_reader`'s handlers); the ``step_metrics`` of a
  ``partial`` one when asked. ``verified``: whether the meta had checksums to verify them with."""
  _filter_orbax_leftovers()
  meta = dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
  sums = meta.pop(CHECKSUMS, None)
  sums = sums.get(HASH) if isinstance(sums, dict) else None
  items, restored = {}, {}
  if target is not None:
    items["state"] = ocp.args.StandardRestore(_restore_target(target, sums))
  elif part is not None:
    saved = dict(mngr.item_metadata(step)["state"])
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                        {k: saved[k] for k in part if jax.tree_util.tree_leaves(saved.get(k))})
    if like:
      items["state"] = ocp.args.PyTreeRestore(
          like, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), like),
          partial_restore=True)
    else:
      restored["state"] = {}
  if step_metrics:
    items["step_metrics"] = ocp.args.StandardRestore()
  if items:
    got = mngr.restore(step, args=ocp.args.Composite(**items))
    restored.update({k: got[k] for k in items})
    if target is not None:
      _check_shapes(restored["state"], target)
    if sums is not None:
      _verify(restored, sums)
    elif "state" in restored:
      _check_finite(restored["state"])
    if target is not None:
      restored["state"] = _cast_like(restored["state"], target)
  return {"meta": meta, "verified": sums is not None, **restored}


def _check_shapes(restored: Any, target: Any) -> None:
  """Orbax restores an array with the shape it was saved with whatever the target's shape (into a
  numpy target, at least): a checkpoint of a wider or narrower model would come back without an
  error. Raise ``ValueError`` (one of ``READ_ERRORS``) naming the first leaf whose shape differs."""
  got = jax.tree_util.tree_flatten_with_path(restored)[0]
  want = jax.tree_util.tree_leaves(target)
  for (path, a), b in zip(got, want):
    if tuple(a.shape) != tuple(b.shape):
      raise ValueError(f"{jax.tree_util.keystr(path)} has shape {tuple(a.shape)} in the checkpoint, "
                       f"{tuple(b.shape)} in this config's state")


def newest_readable(where: str, kind: str, steps: list, read, evaluation: bool = False) -> tuple[Any, int]:
  """``read(step)`` of the newest step that can be read, newest first; a step that cannot is named
  in a warning. Raises :class:`CheckpointError` when none can (every step's error quoted, then what
  to do: for training, or for ``evaluation``). With several processes every one reads each step,
  and a step that any of them cannot read is unreadable for all: they go on from the same one."""
  errors = []
  for step in sorted(steps, reverse=True):
    error = None
    try:
      out = read(step)
    except Exception as e:  # noqa: BLE001 -- Orbax's bare Exception is one of them; others re-raised
      if not _unreadable(e):
        raise
      error = _Unreadable(_describe(e))
    if error is not None:
      drop_failed_read()
    if distributed.any_process(error is not None):
      errors.append((step, str(error or "CheckpointError: another process could not read it (its log says why)")))
      continue
    for bad, why in errors:
      log.warn(f"the {kind!r} checkpoint {os.path.join(where, str(bad))} is unreadable "
               f"({why[:300]}); using the one before it, step {step}")
    return out, step
  if not errors:
    raise CheckpointError(f"no {kind!r} checkpoint in {where}")
  e = _Unreadable(errors[0][1])
  quoted = "; ".join(f"step {s}: {why[:200]}" for s, why in errors)
  if evaluation:
    raise CheckpointError(f"no {kind!r} checkpoint in {where} can be read: it is damaged ({quoted}). Evaluate "
                          f"another checkpoint (--eval.checkpoints), or restore {where} from a backup") from e
  raise CheckpointError(
      f"no {kind!r} checkpoint in {where} can be read for this config: it does not fit the model of this "
      f"config, or it is damaged ({quoted}). Nothing was started over: use another --workdir for another model; "
      "a damaged directory can be moved away to start again, or restored from a backup") from e


def _unverified_note(kind: str, path: str) -> None:
  log.info(f"the {kind!r} checkpoint {path} has no checksums (written before saat_jax recorded them): its "
           "arrays are used unverified")


@contextlib.contextmanager
def interrupts_held():
  """Hold Ctrl-C (SIGINT) back while a checkpoint is written and deliver it once the write is
  complete, to the handler of before (Python's raises KeyboardInterrupt): a KeyboardInterrupt
  inside Orbax's save would leave its thread writing (and printing a traceback) and the message
  naming the checkpoint before. A save that fails drops it: its own error ends the run. Only in
  the main thread (elsewhere signals cannot be handled, and SIGINT keeps its meaning)."""
  held = preemption.StopRequest(signals=(signal.SIGINT,)).install()
  try:
    yield
  except BaseException:
    held.uninstall()
    raise
  held.uninstall()
  if held.requested:
    signal.raise_signal(signal.SIGINT)


class _HeldLog(logging.Handler):
  """The records Orbax logs (through absl's Python logger, from its threads too) while a save runs."""

  def __init__(self):
    super().__init__(logging.NOTSET)
    self.records: list = []

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)

  def write(self, path: str, error: BaseException) -> str:
    """Append the records and ``error``'s traceback to ``path``; the sentence that names it."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    try:
      with open(path, "a") as f:
        f.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(str(error).split())[:300]}\n")
        for r in self.records:
          f.write(fmt.format(r) + "\n")
        f.write("".join(traceback.format_exception(error)))
    except OSError as e:
      return f"(What Orbax logged about it could not be written to {path} either: {type(e).__name__}: {e}.)"
    return f"What Orbax logged about it ({len(self.records)} records) and the traceback are in {path}."


@contextlib.contextmanager
def _orbax_log_held():
  """While a save runs, what Orbax logs is held back (from its threads it logs a failed write at
  ERROR, with tracebacks, several times over: some 300 lines for one full disk). A save that
  succeeds passes the records on as they would have gone; a failed one writes them to the work
  dir's ``checkpoints/errors.log`` (:meth:`_HeldLog.write`) and says so in its one message."""
  logger = logging.getLogger("absl")
  held, handlers, propagate = _HeldLog(), logger.handlers, logger.propagate
  logger.handlers, logger.propagate = [held], False
  ok = False
  try:
    yield held
    ok = True
  finally:
    logger.handlers, logger.propagate = handlers, propagate
    if ok:
      for record in held.records:
        logger.handle(record)


class RunCheckpoints:
  """The ``last``, ``best`` and ``partial`` checkpoints of one work dir.

  ``unverified``: the path of the checkpoint the run resumed from when it had no checksums (one
  written before they were recorded), until the run writes a checkpoint of its own; a NaN loss in
  between names it (:func:`saat_jax.train.divergence_advice`)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.unverified: Optional[str] = None
    try:
      self._managers = {kind: _manager(workdir, kind, create=True) for kind in KEEP}
    except OSError as e:
      raise WorkdirError.unwritable(workdir, e, "create the checkpoint directories of") from e

  def latest_epoch(self, kind: str = "last") -> Optional[int]:
    return self._managers[kind].latest_step()

  def errors_log(self) -> str:
    """Where a failed save writes what Orbax logged: ``checkpoints/errors.log`` (process 0's)."""
    i = jax.process_index()
    return os.path.join(os.path.abspath(self.workdir), "checkpoints",
                        "errors.log" if i == 0 else f"errors.process-{i}.log")

  def _write(self, kind: str, step: int, items: dict, meta: dict, failure: Callable[[BaseException], str],
             force: bool = False) -> None:
    """Save ``items`` (``{'state': ..., 'step_metrics'?: ...}``) and ``meta`` with the items'
    checksums (computed on process 0, whose meta Orbax writes) as ``step`` of ``kind``, Ctrl-C held
    back until it is complete. On failure remove the unfinished directory and raise
    :class:`CheckpointSaveError` with ``failure(error)`` and where Orbax's log of it went."""
    mngr = self._managers[kind]
    if distributed.is_primary():
      meta = {**meta, CHECKSUMS: {HASH: checksums(items)}}
    args = {"state": ocp.args.StandardSave(items["state"]), "meta": ocp.args.JsonSave(meta)}
    # (not "metrics": CheckpointManager keeps that item name for its own use)
    args.update({k: ocp.args.StandardSave(v) for k, v in items.items() if k != "state"})
    with interrupts_held(), _orbax_log_held() as held:
      try:
        mngr.save(step, args=ocp.args.Composite(**args), force=force)
        mngr.wait_until_finished()
      except (OSError, ValueError) as e:
        # Orbax/TensorStore report a failed write (ENOSPC, EACCES, EFBIG) as an OSError or as a
        # ValueError carrying the OS error; either way the step directory was never finalised.
        _remove_partial(checkpoint_dir(self.workdir, kind), step)
        raise CheckpointSaveError(f"{failure(e)} {held.write(self.errors_log(), e)}") from e
    if kind != "best":
      self.unverified = None  # a state of this run's own is saved

  def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
    """Write ``kind`` for ``epoch`` (0-based). On failure raise :class:`CheckpointSaveError`; the
    previous checkpoint of this kind is untouched (Orbax only replaces it after a complete write)."""
    before = self._managers[kind].all_steps()
    if epoch in before:
      # A resumed run re-computing an epoch it had already saved as `best` before being killed:
      # the state is bit-identical (training is deterministic), keep the one on disk.
      return

    def failure(e):
      prev = f"epoch {max(before) + 1}" if before else "none yet"
      return (f"could not save the {kind!r} checkpoint of epoch {epoch + 1} in {checkpoint_dir(self.workdir, kind)}: "
              f"{type(e).__name__}: {' '.join(str(e).split())[:500]}. The previous {kind!r} checkpoint ({prev}) is "
              f"intact. Free disk space or fix the permissions of {os.path.abspath(self.workdir)}, then run the "
              f"same command to resume.")

    self._write(kind, epoch, {"state": state}, meta, failure)

  def restore_meta(self, kind: str = "last", epoch: Optional[int] = None) -> dict:
    mngr = self._managers[kind]
    epoch = mngr.latest_step() if epoch is None else epoch
    if epoch is None:
      raise CheckpointError(f"no {kind!r} checkpoint in {checkpoint_dir(self.workdir, kind)}")
    return _read(mngr, epoch)["meta"]

  def restore(self, kind: str, target: Any, epoch: Optional[int] = None) -> tuple[Any, dict]:
    """Restore ``(state, meta)``; ``target`` is a state pytree of the expected structure. Without
    ``epoch``: the newest readable checkpoint of ``kind`` (an unreadable newer one is named in a
    warning and set aside); :class:`CheckpointError` if none can be read or none fits the model."""
    mngr = self._managers[kind]
    where = checkpoint_dir(self.workdir, kind)
    steps = mngr.all_steps() if epoch is None else [epoch]
    out, step = newest_readable(where, kind, steps, lambda s: _read(mngr, s, target))
    if not out["verified"]:
      _unverified_note(kind, os.path.join(where, str(step)))
    self.unverified = None if out["verified"] else os.path.join(where, str(step))
    newer = [s for s in steps if s > step]
    if newer:  # set the unreadable ones aside, so that the epochs trained again are saved anew

      def set_aside():
        for s in newer:
          aside = os.path.join(where, f"{s}.unreadable-{int(time.time())}")
          os.replace(os.path.join(where, str(s)), aside)
          log.warn(f"moved the unreadable {kind!r} checkpoint {os.path.join(where, str(s))} to {aside}")

      distributed.on_primary(set_aside, f"set the unreadable {kind!r} checkpoints in {where} aside")
      mngr.reload()
    return out["state"], out["meta"]

  def save_partial(self, step: int, state: Any, meta: dict, metrics: dict) -> None:
    """A position inside an epoch at global ``step``: the state, ``meta`` and the stacked metrics of
    the epoch's steps so far (the epoch's record needs them). Same failure contract as ``save``."""

    def failure(e):
      return (f"could not save the position at step {step} in {checkpoint_dir(self.workdir, PARTIAL)}: "
              f"{type(e).__name__}: {' '.join(str(e).split())[:500]}. The 'last' checkpoint is intact; free disk "
              f"space, then run the same command to resume.")

    self._write(PARTIAL, step, {"state": state, "step_metrics": metrics}, meta, failure, force=True)

  def restore_partial(self, target: Any, after_step: int) -> Optional[tuple[Any, dict, dict]]:
    """``(state, meta, metrics)`` of the newest readable position past global step ``after_step``
    (the end of the ``last`` checkpoint's epoch), or None when there is none."""
    mngr = self._managers[PARTIAL]
    steps = [s for s in mngr.all_steps() if s > after_step]
    if not steps:
      return None
    where = checkpoint_dir(self.workdir, PARTIAL)
    try:
      out, step = newest_readable(where, PARTIAL, steps, lambda s: _read(mngr, s, target, step_metrics=True))
    except CheckpointError as e:
      log.warn(f"{e}; resuming from the end of the last epoch instead")
      return None
    if not out["verified"]:
      _unverified_note(PARTIAL, os.path.join(where, str(step)))
      self.unverified = os.path.join(where, str(step))
    return out["state"], out["meta"], dict(out["step_metrics"])

  def clear_partial(self) -> None:
    """Remove the positions inside an epoch (called once the epoch's ``last`` is saved)."""
    mngr = self._managers[PARTIAL]
    with interrupts_held():
      for step in mngr.all_steps():
        mngr.delete(step)

  def close(self) -> None:
    for m in self._managers.values():
      m.close()


def _remove_partial(where: str, epoch: int) -> None:
  """Best effort: delete the unfinished ``<epoch>.orbax-checkpoint-tmp*`` of a failed save (it frees
  the space a full disk needs; Orbax would also replace it at the next save of that step)."""
  try:
    for name in os.listdir(where):
      if name.startswith(f"{epoch}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(where, name), ignore_errors=True)
  except OSError:
    pass


def _reader(where: str, part: bool = False) -> ocp.CheckpointManager:
  """A manager that reads ``where`` and creates nothing; with ``part``, handlers that restore a part
  of the state (PyTreeCheckpointHandler reads what StandardSave wrote)."""
  handlers = {"item_handlers": {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}} \
      if part else {}
  return ocp.CheckpointManager(where, options=ocp.CheckpointManagerOptions(create=False), **handlers)


def read_meta(workdir: str, kind: str = "last") -> Optional[dict]:
  """The ``meta`` of the latest ``kind`` checkpoint, or None if there is none; writes nothing (the
  checkpoint directory is not created)."""
  where = checkpoint_dir(workdir, kind)
  if not os.path.isdir(where):
    return None
  mngr = _reader(where)
  try:
    steps = mngr.all_steps()
    if not steps:
      return None
    return newest_readable(where, kind, steps, lambda step: _read(mngr, step)["meta"])[0]
  finally:
    mngr.close()


def restore_part(workdir: str, kind: str, part: tuple, epoch: Optional[int] = None) -> tuple[dict, dict]:
  """``({name: subtree}, meta)`` of the newest readable ``kind`` checkpoint (or of ``epoch``): the
  top-level entries ``part`` of its state that hold arrays (e.g. ``('params', 'batch_stats')``, or
  ``('ema',)``), as host arrays verified against their checksums; the rest (the optimizer state) is
  not read. What evaluation reads. Writes nothing: an unreadable newer checkpoint is named in a
  warning and left in place (the training run sets it aside when it resumes)."""
  where = checkpoint_dir(workdir, kind)
  if not os.path.isdir(where):
    raise CheckpointError(f"no {kind!r} checkpoint in {where}")
  mngr = _reader(where, part=True)
  try:
    steps = mngr.all_steps() if epoch is None else [epoch]
    out, step = newest_readable(
        where, kind, steps, lambda s: _read(mngr, s, part=tuple(part)), evaluation=True)
  finally:
    mngr.close()
  if not out["verified"]:
    _unverified_note(kind, os.path.join(where, str(step)))
  return out["state"], out["meta"]


def kept_records(workdir: str) -> list[dict]:
  """The epoch records (``meta['record']``) of every kept checkpoint whose meta can be read (both
  ``last``, ``best``), which the repair of metrics.jsonl restores lost lines from
  (:func:`saat_jax.workdir.history_at`). Reads only metas, writes nothing, warns of nothing (an
  unreadable checkpoint is named where it is restored)."""
  records = []
  for kind in KINDS:
    where = checkpoint_dir(workdir, kind)
    if not os.path.isdir(where):
      continue
    mngr = _reader(where)
    try:
      for step in mngr.all_steps():
        try:
          record = _read(mngr, step)["meta"].get("record")
        except Exception as e:  # noqa: BLE001 -- as newest_readable
          if not _unreadable(e):
            raise
          continue
        if isinstance(record, dict):
          records.append(record)
    finally:
      mngr.close()
  return records


# --------------------------------------------------------------------------------------------
# One run at a time per work dir
# --------------------------------------------------------------------------------------------

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  except OSError:
    return True
  return True


class RunLock:
  """``<workdir>/.lock``, created with ``O_CREAT | O_EXCL`` and holding the pid and host of the run.

  A second run on the same work dir raises :class:`WorkdirLocked`. A lock left by a run that died
  without releasing it (its pid is not alive on this host) is taken over with a warning. Use as a
  context manager: released on exit, exceptions included.
  """

  STALE_UNREADABLE_S = 60.0  # an unreadable lock file older than this is a leftover

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.token = uuid.uuid4().hex
    self.held = False

  def _read(self) -> Optional[dict]:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> Optional[str]:
    """Why the lock described by ``holder`` is stale, or None if it may be held."""
    if not holder:
      try:
        age = time.time() - os.path.getmtime(self.path)
      except OSError:
        return None
      return f"unreadable and {age:.0f} s old" if age > self.STALE_UNREADABLE_S else None
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
      return None
    return None if pid_alive(pid) else f"pid {pid} on {host} is not running"

  def _describe(self, holder: Optional[dict]) -> str:
    if not holder:
      return "a run (the lock file is unreadable)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started', '?')})"

  def acquire(self) -> "RunLock":
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f"cannot create the work dir {self.workdir}: {type(e).__name__}: {e}") from e
    for attempt in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:  # released meanwhile
          continue
        why = self._stale(holder) if attempt == 0 else None
        if why is None:
          raise WorkdirLocked(
              f"work dir {self.workdir} is in use by {self._describe(holder)}: its lock {self.path} exists. "
              f"Wait for that run to finish, or use another --workdir; if no run is using it (e.g. a crash on "
              f"another host), delete {self.path}.") from None
        log.warn(f"taking over the stale lock {self.path} ({why}): the run that held it is gone")
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      except OSError as e:
        raise WorkdirError.unwritable(self.workdir, e) from e
      try:
        with os.fdopen(fd, "w") as f:
          json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
      except BaseException as e:  # a full disk, or Ctrl-C / SIGTERM right after the file appeared
        try:
          os.remove(self.path)
        except OSError:
          pass
        if isinstance(e, OSError):
          raise WorkdirError.unwritable(self.workdir, e) from e
        raise
      self.held = True
      return self
    raise WorkdirLocked(f"work dir {self.workdir}: could not take its lock {self.path}; another run is starting there")

  def release(self) -> None:
    """Remove the lock if it is still ours."""
    if not self.held:
      return
    self.held = False
    holder = self._read()
    if holder is not None and holder.get("token") == self.token:
      try:
        os.remove(self.path)
      except OSError:
        pass

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def check_same_model(meta: dict, model_spec: dict, workdir: str) -> None:
  """Refuse to resume or evaluate a checkpoint written for another model."""
  saved = meta.get("model")
  if saved != model_spec:
    raise CheckpointError(
        f"work dir {workdir} holds a checkpoint of model {saved}, but the config asks for "
        f"{model_spec}. Use a new --workdir for this model, or the config the run was started with.")
