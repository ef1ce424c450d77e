"""SIGTERM as a request to stop between steps (what Colab, TPU VMs, spot instances, Kubernetes and
SLURM's ``--signal`` send some seconds before they kill a process).

The handler only records the signal; the training loop reads :attr:`StopRequest.requested` after
each dispatch, finishes the step it is in, writes a checkpoint of its position inside the epoch
and raises :class:`TrainingPreempted`. The next launch continues from that step. Ctrl-C (SIGINT) stops
training as :class:`TrainingInterrupted`. Both are defined here, with the stop they report.

With several processes the signal may reach them at different steps (or only some of them), so
they stop where they have agreed to (:class:`StopAgreement`): at steps about :data:`AGREE_EVERY_S`
apart, chosen as they go, so that a stop is acted on within one such interval (or one dispatch,
where a dispatch takes longer) plus the time to save the position, whatever ``check_every`` is.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional

import jax

from saat_jax import distributed

AGREE_EVERY_S = 1.0  # seconds of training between two agreements of the processes on a stop


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C during training; ``str(e)`` says where and which checkpoint a rerun resumes from."""


class TrainingPreempted(Exception):
  """SIGTERM during training: the position inside the epoch was saved; ``str(e)`` says where."""


class StopRequest:
  """While installed (``install()``/``uninstall()``, or a ``with`` block), SIGTERM sets :attr:`signum` instead of ending the process.

  Signal handlers can only be installed from the main thread; elsewhere (a notebook's worker
  thread, a test runner's thread) it stays inactive and SIGTERM keeps its default meaning.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = tuple(signals)
    self.signum: Optional[int] = None
    self._previous: dict = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def _handler(self, signum, frame) -> None:
    del frame
    self.signum = signum

  def install(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def uninstall(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def __enter__(self) -> "StopRequest":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else ""


def next_interval(steps: int, seconds: float, every_s: float = AGREE_EVERY_S) -> int:
  """Steps until the next agreement: as many as fit in ``every_s`` at the pace of the last interval
  (``steps`` steps in ``seconds``), at least 1 and at most ``2 * steps``. An interval therefore
  starts at one step (the first, compiling, is slow) and doubles up to the pace, and a pace that
  holds keeps agreements ``every_s`` apart; a step that suddenly takes longer stretches the interval
  by as much."""
  steps = max(1, int(steps))
  if not seconds > 0:
    return 2 * steps
  return max(1, min(2 * steps, int(float(every_s) * steps / float(seconds))))


class StopAgreement:
  """Where the processes agree on a stop, so that all of them stop after the same step.

  The training loop calls :meth:`after_steps` after each dispatch, with the global step reached, and
  :meth:`between_epochs` after each epoch's checkpoint; every process makes the same calls. With one
  process :meth:`after_steps` is the request itself, read after every dispatch (no wait, nothing
  exchanged). With several, at the agreement steps each process waits for its dispatched steps to
  finish (``dispatched``: any output of the last dispatch), reads its request only then, and one
  allgather (:func:`saat_jax.distributed.agree_on_stop`) tells all whether any has one, and where
  the next agreement is: process 0 proposes it from the pace it measured over the last interval
  (:func:`next_interval`). A request that comes while the steps of an interval run is therefore
  acted on at that interval's end, at most ``every_s`` (or one dispatch) of training later. Between
  agreements nothing waits: the host stays ahead of the devices, as on one process.
  """

  def __init__(self, request: StopRequest, step: int, every_s: float = AGREE_EVERY_S):
    self.request, self.every_s = request, float(every_s)
    self.interval, self.next_step = 1, int(step) + 1
    self._since = (int(step), time.monotonic())

  def after_steps(self, step: int, dispatched=None) -> bool:
    """Whether to stop after global step ``step`` (a collective at the agreement steps)."""
    if jax.process_count() == 1:
      return self.request.requested
    if int(step) < self.next_step:
      return False
    jax.block_until_ready(dispatched)  # the steps are done: a request read now is not one step late
    last, since = self._since
    proposal = int(step) + next_interval(int(step) - last, time.monotonic() - since, self.every_s)
    stop, self.next_step = distributed.agree_on_stop(self.request.requested, proposal)
    self.interval = self.next_step - int(step)
    self._since = (int(step), time.monotonic())
    return stop

  def between_epochs(self, step: int) -> bool:
    """Whether to stop now that the epoch ending at global step ``step`` is saved (a collective on
    every process count: a request that came during the last steps, the evaluation or the
    checkpoint). The next agreement is the last interval's length on."""
    stop, self.next_step = distributed.agree_on_stop(self.request.requested, int(step) + self.interval)
    self._since = (int(step), time.monotonic())
    return stop
