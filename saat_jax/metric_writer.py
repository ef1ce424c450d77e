"""The one writer of a run's per-epoch metrics (written by process 0 only).

* ``<workdir>/metrics.jsonl``: one JSON record per finished epoch, rewritten atomically (a temporary
  file renamed into place) so a kill leaves the old or the new file, never half of one. This is the
  file a resume reads back (:mod:`saat_jax.workdir`) and the report plots.
* ``<workdir>/tensorboard/``: the same numbers as TensorBoard scalars (``tensorboard --logdir
  runs``), written with tensorboardX, so no TensorFlow is needed. The x axis is the epoch (1-based,
  as the progress lines count). Tags group by split: ``test/pgd_accuracy``,
  ``ema_test/natural_accuracy``, ``train/loss``, ``attack/eps_mean``, ``lr``.

On a resume the event files start with a purge at the first epoch that is trained again, so
TensorBoard drops what an interrupted run logged past its checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Optional

_PREFIXES = ("ema_trainsub", "ema_test", "ema_val", "trainsub", "test", "val", "train", "attack")
_NOT_SCALARS = ("epoch", "step", "best_epoch", "evaluated")


def tag(key: str) -> str:
  """The TensorBoard tag of a metrics.jsonl key: ``test_pgd_accuracy`` -> ``test/pgd_accuracy``."""
  for p in _PREFIXES:
    if key.startswith(p + "_"):
      return f"{p}/{key[len(p) + 1:]}"
  return key


def scalars(record: dict) -> dict[str, float]:
  """The record's numbers as TensorBoard scalars (booleans, counters and non-numbers left out)."""
  return {tag(k): float(v) for k, v in record.items()
          if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_jsonl(path: str, records: list[dict]) -> None:
  """Write ``records`` as JSON lines through a temporary file renamed into place."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


class MetricWriter:
  """``metrics.jsonl`` and TensorBoard scalars of one run; a no-op on processes other than 0.

  ``start(history)`` (at the start or resume of training) writes the records kept so far;
  ``write(history)`` after each epoch writes the file and the newest record's scalars.
  """

  def __init__(self, workdir: str, *, primary: Optional[bool] = None, tensorboard: bool = True):
    if primary is None:
      import jax
      primary = jax.process_index() == 0
    self.workdir, self.primary, self.tensorboard = workdir, primary, tensorboard
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None

  def start(self, history: list[dict]) -> None:
    if not self.primary:
      return
    write_jsonl(self.path, history)
    if self.tensorboard:
      from tensorboardX import SummaryWriter
      resumed = bool(history) or os.path.isdir(os.path.join(self.workdir, "tensorboard"))
      # purge_step: TensorBoard discards the events of earlier files from this step on.
      # The file name holds the time in whole seconds: a resume within the same second would reuse
      # the name and overwrite the earlier file without the suffix.
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"),
                               purge_step=len(history) + 1 if resumed else None,
                               filename_suffix=f".from_epoch_{len(history) + 1}.{os.getpid()}")

  def write(self, history: list[dict]) -> None:
    if not self.primary:
      return
    write_jsonl(self.path, history)
    if self._tb is not None and history:
      record = history[-1]
      for name, value in scalars(record).items():
        self._tb.add_scalar(name, value, global_step=int(record["epoch"]) + 1)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
