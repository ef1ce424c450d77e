"""The one logging path of saat_jax: Python's ``saat_jax`` logger.

Progress and notes (``info``) go to stdout as plain lines, ``warn`` to stderr as ``warning: ...``:
the lines a user of ``launch.py`` reads. Only process 0 of a multi-process run prints (the others
would repeat every line); errors (``error``) are printed by every process. The handler looks up
``sys.stdout``/``sys.stderr`` when it writes, so redirections (and pytest's capture) see the lines.
Other libraries' logging (absl, Orbax) is left as it is.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("saat_jax")


def _process_index() -> int:
  jax = sys.modules.get("jax")  # never import jax just to log
  try:
    return jax.process_index() if jax is not None else 0
  except Exception:  # noqa: BLE001 - a backend that cannot start yet: behave as one process
    return 0


class _Handler(logging.Handler):

  def emit(self, record: logging.LogRecord) -> None:
    if record.levelno < logging.ERROR and _process_index() != 0:
      return
    stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
    prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
    try:
      stream.write(prefix + record.getMessage() + "\n")
      stream.flush()
    except Exception:  # noqa: BLE001 - as logging.StreamHandler: a closed stream must not end the run
      self.handleError(record)


if not any(isinstance(h, _Handler) for h in logger.handlers):
  logger.addHandler(_Handler())
logger.setLevel(logging.INFO)
logger.propagate = False  # absl's root handler would print every line a second time


def info(msg: str) -> None:
  logger.info(msg)


def warn(msg: str) -> None:
  logger.warning(msg)


def error(msg: str) -> None:
  logger.error(msg)
