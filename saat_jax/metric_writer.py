"""The one writer of a run's per-epoch metrics (written by process 0 only), and the one reader of them.

* ``<workdir>/metrics.jsonl``: one JSON record per finished epoch, rewritten atomically (a temporary
  file renamed into place) so a kill leaves the old or the new file, never half of one. This is the
  file a resume reads back (:class:`saat_jax.workdir.RunDir`, leniently: it repairs) and the report
  plots (:func:`saat_jax.report.runs.read_metrics`, strictly: it refuses); both read it with
  :func:`read_metrics`, so they agree on what a record is (:func:`record_problem`).
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
from typing import Callable, Optional

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


class MetricsFileError(ValueError):
  """A ``metrics.jsonl`` line that is not an epoch record, read strictly; the message names the file
  and the line."""


def record_problem(r) -> Optional[str]:
  """What keeps a parsed line from being an epoch record, or None: a record is a JSON object whose
  ``epoch`` is an integer (not a boolean: ``true`` is 1 in Python, not an epoch). The one rule both
  readings of :func:`read_metrics` apply."""
  if not isinstance(r, dict):
    return "expected a JSON object per line"
  epoch = r.get("epoch")
  if "epoch" not in r:
    return "lacks epoch"
  if isinstance(epoch, bool) or not isinstance(epoch, int):
    return f"epoch = {epoch!r} is not an integer"
  return None


def read_metrics(path: str, *, strict: bool = False,
                 check: Optional[Callable[[dict, str, list], Optional[str]]] = None) -> tuple[list[dict], list[str]]:
  """The epoch records of ``metrics.jsonl`` (:func:`record_problem`), and what is wrong with the
  lines that are not. Blank lines are skipped; a line is UTF-8 JSON.

  Lenient (the default; a resume, which repairs the file against the checkpoint): a missing file is
  empty, and a bad line is left out and named in the problems (``line N is not JSON (...)``,
  ``line N is not an epoch record``). Strict (the report, which must not plot a damaged run): the
  first bad line raises :class:`MetricsFileError` naming the file and the line, and ``check(record,
  where, records so far)`` -- ``where`` is ``"<path> line N"`` -- may reject a record with a message
  of its own (the report's required keys, fractions, increasing epochs). ``check`` runs before
  :func:`record_problem`, so that a record lacking several keys is refused naming all of them; every
  line the lenient reading leaves out, the strict one refuses."""
  if not os.path.exists(path):
    if strict:
      raise MetricsFileError(f"{path} is missing")
    return [], []
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records, bad = [], []
  for lineno, raw in enumerate(lines, 1):
    if not raw.strip():
      continue
    try:
      r = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
      if strict:
        raise MetricsFileError(f"{path} is damaged at line {lineno} ({e}); delete the broken line(s) and resume the "
                               "run with launch.py, which rewrites metrics.jsonl") from None
      bad.append(f"line {lineno} is not JSON ({e})")
      continue
    problem = record_problem(r)
    if strict:
      where = f"{path} line {lineno}"
      if not isinstance(r, dict):
        raise MetricsFileError(f"{path} is damaged at line {lineno}: {problem}")
      message = check(r, where, records) if check is not None else None
      if message is None and problem is not None:
        message = f"{where}: {problem}"
      if message is not None:
        raise MetricsFileError(message)
    elif problem is not None:
      bad.append(f"line {lineno} is not an epoch record")
      continue
    records.append(r)
  return records, bad


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
