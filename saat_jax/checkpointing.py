"""Orbax checkpoints of a run: ``<workdir>/checkpoints/{last,best}``.

``last`` is written after every epoch and ``best`` whenever the selection metric (test or
validation PGD-20 accuracy, as Rice et al. 2020 select) improves. Each checkpoint holds the full
training state (params, batch_stats, optimizer state, step) and a JSON ``meta`` record: the epoch,
the model's identity, the best metric so far and the config. Orbax writes into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous checkpoint
intact; resuming from ``last`` is therefore always possible.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

KINDS = ("last", "best")


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (missing, or of another model)."""


def checkpoint_dir(workdir: str, kind: str) -> str:
  if kind not in KINDS:
    raise CheckpointError(f"unknown checkpoint {kind!r}; use one of {KINDS}")
  return os.path.join(os.path.abspath(workdir), "checkpoints", kind)


def _manager(workdir: str, kind: str, create: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(workdir, kind),
                               options=ocp.CheckpointManagerOptions(max_to_keep=1, create=create))


class RunCheckpoints:
  """The ``last`` and ``best`` checkpoints of one work dir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._managers = {kind: _manager(workdir, kind, create=True) for kind in KINDS}

  def latest_epoch(self, kind: str = "last") -> Optional[int]:
    return self._managers[kind].latest_step()

  def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
    mngr = self._managers[kind]
    if epoch in mngr.all_steps():
      # A resumed run re-computing an epoch it had already saved as `best` before being killed:
      # the state is bit-identical (training is deterministic), keep the one on disk.
      return
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()

  def restore_meta(self, kind: str = "last", epoch: Optional[int] = None) -> dict:
    mngr = self._managers[kind]
    epoch = mngr.latest_step() if epoch is None else epoch
    if epoch is None:
      raise CheckpointError(f"no {kind!r} checkpoint in {checkpoint_dir(self.workdir, kind)}")
    return dict(mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore(self, kind: str, target: Any, epoch: Optional[int] = None) -> tuple[Any, dict]:
    """Restore ``(state, meta)``; ``target`` is a state pytree of the expected structure."""
    mngr = self._managers[kind]
    epoch = mngr.latest_step() if epoch is None else epoch
    if epoch is None:
      raise CheckpointError(f"no {kind!r} checkpoint in {checkpoint_dir(self.workdir, kind)}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      out = mngr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"the {kind!r} checkpoint in {checkpoint_dir(self.workdir, kind)} does not fit the model of "
          f"this config ({type(e).__name__}: {str(e)[:300]}); use another --workdir") from e
    return out.state, dict(out.meta)

  def close(self) -> None:
    for m in self._managers.values():
      m.close()


def check_same_model(meta: dict, model_spec: dict, workdir: str) -> None:
  """Refuse to resume or evaluate a checkpoint written for another model."""
  saved = meta.get("model")
  if saved != model_spec:
    raise CheckpointError(
        f"work dir {workdir} holds a checkpoint of model {saved}, but the config asks for "
        f"{model_spec}. Use a new --workdir for this model, or the config the run was started with.")
