"""Running the reference PyTorch AutoAttack (``pyautoattack`` 0.2.0) and reading off its results.

For comparisons with :func:`saat_jax.autoattack.autoattack` (the torch tests and the benchmarks);
needs the ``torch`` extra. The reference reports the accuracy after each attack only in its
``auto-attack`` log, so :func:`run_reference` captures that log while the run lasts and parses it.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np

_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)%(?: \(total time ([\d.]+) s\))?")
_INITIAL = re.compile(r"initial accuracy: ([\d.]+)%")


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def run_reference(adversary, xt, yt, *, batch_size: int) -> dict:
  """``adversary.run_standard_evaluation(xt, yt, batch_size)`` with its results as numbers.

  Args:
    adversary: a configured ``pyautoattack.AutoAttack`` (its ``model`` in eval mode).
    xt, yt: torch tensors, images NCHW in [0, 1] and int64 labels.

  Returns a dict: ``clean`` (initial accuracy), ``robust_accuracy`` (per attack of
  ``adversary.attacks_to_run``, lower-case names; 0 for attacks skipped once no point was robust),
  ``attack_times_s`` (per attack, from the log's cumulative times), ``wall_s``, ``x_adv`` (NHWC
  numpy) and ``robust`` (per point: ``x_adv`` still classified correctly).
  """
  import torch

  logger = logging.getLogger("auto-attack")
  handler, level = _Capture(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    t0 = time.time()
    x_adv, _ = adversary.run_standard_evaluation(xt, yt, batch_size=batch_size)
    wall = time.time() - t0
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  clean, accs, times, last = None, {}, {}, 0.0
  for m in handler.messages:
    hit = _INITIAL.match(m)
    if hit:
      clean = float(hit.group(1)) / 100
    hit = _AFTER.match(m)
    if hit:
      name = hit.group(1).lower()
      accs[name] = float(hit.group(2)) / 100
      if hit.group(3) is not None:
        times[name] = float(hit.group(3)) - last
        last = float(hit.group(3))
  for name in adversary.attacks_to_run:  # skipped once nothing was robust any more
    accs.setdefault(name, 0.0)
  with torch.no_grad():
    logits = adversary.model(x_adv.to(getattr(adversary, "device", "cpu")))  # model on cuda or cpu
    robust = logits.argmax(1).cpu().numpy() == yt.cpu().numpy()
  return dict(clean=clean, robust_accuracy=accs, attack_times_s=times, wall_s=wall,
              x_adv=x_adv.cpu().numpy().transpose(0, 2, 3, 1), robust=np.asarray(robust))
