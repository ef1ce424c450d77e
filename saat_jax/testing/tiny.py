"""The tiny digits run the tests train: one definition, for every test that needs a real run.

:data:`TINY` shrinks a digits config (:func:`saat_jax.config_base.digits_config`) to a run of a
few seconds on a CPU: 128 training images in 2 batches of 64, a small CNN of width 4, 3 epochs,
evaluation on 64 test and 64 training images, no progress bar. A test that needs more (steps
inside an epoch to stop at, augmentation) says so in its overrides. Runs of the same shapes share
their compiled programs (the tests' persistent compilation cache, ``tests/conftest.py``), so a
test that keeps these values is cheaper than one that changes them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

try:
  import fcntl  # POSIX
except ImportError:  # Windows: no lock, so each process keeps its own runs (tests/conftest.py)
  fcntl = None

import ml_collections

from saat_jax.config_base import digits_config

TINY = {"data.num_train": 128, "batch_size": 64, "eval.num_test": 64, "eval.batch_size": 64,
        "eval.train_subset": 64, "progress": False, "model.kwargs": {"width": 4}, "num_epochs": 3}

# More steps per epoch (5 of 32), with augmentation: for the tests that stop inside an epoch.
STEPS_INSIDE = {"data.num_train": 160, "batch_size": 32, "eval.train_subset": 32, "data.augment": True,
                "data.pad": 2}


def tiny_config(method: str = "natural", overrides: Optional[dict] = None, **more) -> ml_collections.ConfigDict:
  """The digits config of ``method`` with :data:`TINY`, then ``overrides`` (dotted keys, e.g.
  ``{"eval.every": 2}``) and ``more`` (plain keys, e.g. ``num_epochs=1``) applied."""
  c = digits_config(method)
  c.update_from_flattened_dict({**TINY, **(overrides or {}), **more})
  return c


# The shared finished runs' settings: the learning rate drops /10 after epoch 2, so that the curves
# of the plots and reports have a milestone to show.
SHARED_RUN = {"optim.lr_milestones": (2,)}


CAN_SHARE = fcntl is not None  # whether processes may share one TinyRuns root


class TinyRuns:
  """Finished tiny runs, one work dir per method under ``root``, each trained on first use:
  ``runs["saat_up"]`` is the work dir of ``tiny_config("saat_up", SHARED_RUN)`` trained to its end.

  Shared by the tests of one session (a session fixture of ``tests/conftest.py``), so they are read
  only: a test that writes into a run copies it first. :meth:`changed` says which files of the
  trained runs differ from when this process first used them (the fixture's teardown checks it is
  empty). Several processes (the xdist workers) may share one ``root``: the first to ask for a run
  trains it under a lock on ``<root>.locks/<method>``, and the others wait for it and read it, so a
  session trains each run once. A run whose training did not finish (no ``<method>.done`` beside
  its lock: that process failed or was killed) is removed and trained again."""

  def __init__(self, root: Path):
    self.root = Path(root)
    self._locks = self.root.with_name(self.root.name + ".locks")  # beside root: a run folder lists only runs
    self._hashes: dict[str, dict[str, str]] = {}

  @staticmethod
  def config(method: str) -> ml_collections.ConfigDict:
    return tiny_config(method, SHARED_RUN)

  def __getitem__(self, method: str) -> Path:
    workdir = self.root / method
    if method not in self._hashes:
      self._locks.mkdir(parents=True, exist_ok=True)
      with open(self._locks / method, "a") as lock:
        if fcntl is not None:
          fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        done = self._locks / f"{method}.done"
        if not done.exists():
          from saat_jax.train import train_and_evaluate  # JAX starts with the first run, not on import

          shutil.rmtree(workdir, ignore_errors=True)  # what a failed process left half-written
          train_and_evaluate(self.config(method), str(workdir))
          done.touch()
      self._hashes[method] = _file_hashes(workdir)
    return workdir

  def records(self, method: str) -> list[dict]:
    """The run's ``metrics.jsonl`` records."""
    return [json.loads(line) for line in (self[method] / "metrics.jsonl").read_text().splitlines()]

  def changed(self) -> list[str]:
    """The files of the trained runs added, removed or rewritten since they were trained."""
    out = []
    for method, before in self._hashes.items():
      now = _file_hashes(self.root / method)
      out += [f"{method}/{name}" for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    return out


def _file_hashes(root: Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}
