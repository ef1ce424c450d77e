"""What a run's work dir holds besides checkpoints, and the rules for resuming it.

* ``metrics.jsonl`` (written by :mod:`saat_jax.metric_writer`): one record per finished epoch; on resume it is read line
  by line (:func:`saat_jax.metric_writer.read_metrics`, leniently) and repaired against the checkpoint (the
  checkpoint is the truth: :func:`history_at`).
* ``config.json`` (the latest config) and ``configs.jsonl`` (one line per start or resume).
* :func:`config_changes`: which keys of a new config would change the training trajectory of a
  checkpoint trained with another (all but :data:`RESUME_FREE_KEYS`); resuming with such changes
  is refused (:class:`ConfigChangeError`) unless ``allow_config_change`` is set.
"""

from __future__ import annotations

import json
import math
import os
import time

from saat_jax.metric_writer import read_metrics
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


def config_changes(saved: dict, new: dict) -> dict:
  """``{dotted key: (old, new)}`` of the keys that differ between the config a checkpoint was
  trained with (``saved``, as JSON) and ``new`` and change the training trajectory (all but
  :data:`RESUME_FREE_KEYS`). A key the saved config lacks (added to the code since) counts as
  unchanged when ``new`` has its default; a missing value shows as ``(unset)``."""
  old_f, new_f = flatten(saved), flatten(new)
  defaults = flatten(config_json(base_config()))
  out = {}
  for k in sorted(set(old_f) | set(new_f)):
    if any(k == f or k.startswith(f + ".") for f in RESUME_FREE_KEYS):
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
