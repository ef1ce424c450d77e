"""Orbax checkpoints of a run: ``<workdir>/checkpoints/{last,best,partial}``.

``last`` is written after every epoch (the two newest are kept: an unreadable newest one is named
and the run falls back to the one before, never silently starting over) and ``best`` whenever the
selection metric (test or validation PGD-20 accuracy, as Rice et al. 2020 select) improves.
``partial`` holds a position inside an epoch (SIGTERM, or every ``checkpoint_every_steps``): the
state, the step, and the metrics of the epoch's steps so far; it is removed when its epoch ends.
Each checkpoint holds the full training state (params, batch_stats, optimizer state, step) and a JSON ``meta`` record: the epoch,
the model's identity, the best metric so far and the config. Orbax writes into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous checkpoint
intact; resuming from ``last`` is therefore always possible. A save that fails (full disk,
unwritable directory) raises :class:`CheckpointSaveError` naming the checkpoint, the directory and
the underlying error; the previous checkpoint of that kind stays as it was.

:class:`RunLock` is the work dir's ``.lock`` (pid and host of the run using it), so that two runs
never write the same work dir at once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from saat_jax import log

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
# (missing or truncated files), KeyError/TypeError (a tree that does not match), JSON errors.
READ_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)


def _read(mngr: ocp.CheckpointManager, step: int, target: Any = None, step_metrics: bool = False):
  """The items of one checkpoint: ``meta``; ``state`` restored into ``target``'s shapes, dtypes and
  shardings when a target is given; the ``step_metrics`` of a ``partial`` one when asked."""
  items = {"meta": ocp.args.JsonRestore()}
  if target is not None:
    items["state"] = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
  if step_metrics:
    items["step_metrics"] = ocp.args.StandardRestore()
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  if target is not None:
    _check_shapes(out.state, target)
  return out


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


def _newest_readable(where: str, kind: str, steps: list, read) -> tuple[Any, int]:
  """``read(step)`` of the newest step that can be read, newest first; a step that cannot is named
  in a warning. Raises :class:`CheckpointError` when none can (the first error quoted)."""
  errors = []
  for step in sorted(steps, reverse=True):
    try:
      out = read(step)
    except READ_ERRORS as e:
      errors.append((step, e))
      continue
    for bad, e in errors:
      log.warn(f"the {kind!r} checkpoint {os.path.join(where, str(bad))} is unreadable "
               f"({type(e).__name__}: {str(e)[:300]}); using the one before it, step {step}")
    return out, step
  if not errors:
    raise CheckpointError(f"no {kind!r} checkpoint in {where}")
  step, e = errors[0]
  raise CheckpointError(
      f"no {kind!r} checkpoint in {where} can be read for this config: it does not fit the model of this "
      "config, or it is damaged (" + "; ".join(f"step {s}: {type(x).__name__}: {str(x)[:200]}" for s, x in errors)
      + "). Nothing was started over: use another --workdir for another model; a damaged directory can be "
      "moved away to start again, or restored from a backup") from e


class RunCheckpoints:
  """The ``last``, ``best`` and ``partial`` checkpoints of one work dir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    try:
      self._managers = {kind: _manager(workdir, kind, create=True) for kind in KEEP}
    except OSError as e:
      raise WorkdirError.unwritable(workdir, e, "create the checkpoint directories of") from e

  def latest_epoch(self, kind: str = "last") -> Optional[int]:
    return self._managers[kind].latest_step()

  def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
    """Write ``kind`` for ``epoch`` (0-based). On failure raise :class:`CheckpointSaveError`; the
    previous checkpoint of this kind is untouched (Orbax only replaces it after a complete write)."""
    mngr = self._managers[kind]
    before = mngr.all_steps()
    if epoch in before:
      # A resumed run re-computing an epoch it had already saved as `best` before being killed:
      # the state is bit-identical (training is deterministic), keep the one on disk.
      return
    try:
      mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)))
      mngr.wait_until_finished()
    except (OSError, ValueError) as e:
      # Orbax/TensorStore report a failed write (ENOSPC, EACCES, EFBIG) as an OSError or as a
      # ValueError carrying the OS error; either way the step directory was never finalised.
      where = checkpoint_dir(self.workdir, kind)
      _remove_partial(where, epoch)
      prev = f"epoch {max(before) + 1}" if before else "none yet"
      raise CheckpointSaveError(
          f"could not save the {kind!r} checkpoint of epoch {epoch + 1} in {where}: "
          f"{type(e).__name__}: {str(e)[:500]}. The previous {kind!r} checkpoint ({prev}) is intact. "
          f"Free disk space or fix the permissions of {os.path.abspath(self.workdir)}, then run the same "
          f"command to resume.") from e

  def restore_meta(self, kind: str = "last", epoch: Optional[int] = None) -> dict:
    mngr = self._managers[kind]
    epoch = mngr.latest_step() if epoch is None else epoch
    if epoch is None:
      raise CheckpointError(f"no {kind!r} checkpoint in {checkpoint_dir(self.workdir, kind)}")
    return dict(_read(mngr, epoch).meta)

  def restore(self, kind: str, target: Any, epoch: Optional[int] = None) -> tuple[Any, dict]:
    """Restore ``(state, meta)``; ``target`` is a state pytree of the expected structure. Without
    ``epoch``: the newest readable checkpoint of ``kind`` (an unreadable newer one is named in a
    warning); :class:`CheckpointError` if none can be read or none fits the model."""
    mngr = self._managers[kind]
    where = checkpoint_dir(self.workdir, kind)

    def read(step):
      out = _read(mngr, step, target)
      return out.state, dict(out.meta)

    steps = mngr.all_steps() if epoch is None else [epoch]
    out, step = _newest_readable(where, kind, steps, read)
    newer = [s for s in steps if s > step]
    if newer:  # set the unreadable ones aside, so that the epochs trained again are saved anew
      for s in newer:
        aside = os.path.join(where, f"{s}.unreadable-{int(time.time())}")
        os.replace(os.path.join(where, str(s)), aside)
        log.warn(f"moved the unreadable {kind!r} checkpoint {os.path.join(where, str(s))} to {aside}")
      mngr.reload()
    return out

  def save_partial(self, step: int, state: Any, meta: dict, metrics: dict) -> None:
    """A position inside an epoch at global ``step``: the state, ``meta`` and the stacked metrics of
    the epoch's steps so far (the epoch's record needs them). Same failure contract as ``save``."""
    mngr = self._managers[PARTIAL]
    try:
      # (not "metrics": CheckpointManager keeps that item name for its own use)
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                              step_metrics=ocp.args.StandardSave(metrics)), force=True)
      mngr.wait_until_finished()
    except (OSError, ValueError) as e:
      where = checkpoint_dir(self.workdir, PARTIAL)
      _remove_partial(where, step)
      raise CheckpointSaveError(
          f"could not save the position at step {step} in {where}: {type(e).__name__}: {str(e)[:500]}. "
          f"The 'last' checkpoint is intact; free disk space, then run the same command to resume.") from e

  def restore_partial(self, target: Any, after_step: int) -> Optional[tuple[Any, dict, dict]]:
    """``(state, meta, metrics)`` of the newest readable position past global step ``after_step``
    (the end of the ``last`` checkpoint's epoch), or None when there is none."""
    mngr = self._managers[PARTIAL]
    steps = [s for s in mngr.all_steps() if s > after_step]
    if not steps:
      return None

    def read(step):
      out = _read(mngr, step, target, step_metrics=True)
      return out.state, dict(out.meta), dict(out.step_metrics)

    try:
      return _newest_readable(checkpoint_dir(self.workdir, PARTIAL), PARTIAL, steps, read)[0]
    except CheckpointError as e:
      log.warn(f"{e}; resuming from the end of the last epoch instead")
      return None

  def clear_partial(self) -> None:
    """Remove the positions inside an epoch (called once the epoch's ``last`` is saved)."""
    mngr = self._managers[PARTIAL]
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


def read_meta(workdir: str, kind: str = "last") -> Optional[dict]:
  """The ``meta`` of the latest ``kind`` checkpoint, or None if there is none; writes nothing (the
  checkpoint directory is not created)."""
  where = checkpoint_dir(workdir, kind)
  if not os.path.isdir(where):
    return None
  mngr = ocp.CheckpointManager(where, options=ocp.CheckpointManagerOptions(create=False))
  try:
    steps = mngr.all_steps()
    if not steps:
      return None
    return _newest_readable(where, kind, steps, lambda step: dict(_read(mngr, step).meta))[0]
  finally:
    mngr.close()


# --------------------------------------------------------------------------------------------
# One run at a time per work dir
# --------------------------------------------------------------------------------------------

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
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
    return None if _pid_alive(pid) else f"pid {pid} on {host} is not running"

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
      except OSError as e:
        try:
          os.remove(self.path)
        except OSError:
          pass
        raise WorkdirError.unwritable(self.workdir, e) from e
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
