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
from pathlib import Path
from typing import Optional

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


class TinyRuns:
  """Finished tiny runs, one work dir per method under ``root``, each trained on first use:
  ``runs["saat_up"]`` is the work dir of ``tiny_config("saat_up", SHARED_RUN)`` trained to its end.

  Shared by the tests of one process (a session fixture of ``tests/conftest.py``), so they are read
  only: a test that writes into a run copies it first. :meth:`changed` says which files of the
  trained runs differ from when they were trained (the fixture's teardown checks it is empty)."""

  def __init__(self, root: Path):
    self.root = Path(root)
    self._hashes: dict[str, dict[str, str]] = {}

  @staticmethod
  def config(method: str) -> ml_collections.ConfigDict:
    return tiny_config(method, SHARED_RUN)

  def __getitem__(self, method: str) -> Path:
    workdir = self.root / method
    if method not in self._hashes:
      from saat_jax.train import train_and_evaluate  # JAX starts with the first run, not on import

      train_and_evaluate(self.config(method), str(workdir))
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
