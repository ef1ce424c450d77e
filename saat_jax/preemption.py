"""SIGTERM as a request to stop between steps (what Colab, TPU VMs, spot instances, Kubernetes and
SLURM's ``--signal`` send some seconds before they kill a process).

The handler only records the signal; the training loop reads :attr:`StopRequest.requested` after
each dispatch, finishes the step it is in, writes a checkpoint of its position inside the epoch
and raises :class:`saat_jax.workdir.TrainingPreempted`. The next launch continues from that step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional


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
