"""Train (and evaluate every epoch) from an ml_collections config.

  python launch.py --config configs/saat_cifar10.py --workdir runs/saat
  python launch.py --config configs/saat_digits.py --config.num_epochs=5 --workdir runs/digits

Running again with the same --workdir resumes from its `last` checkpoint (a finished run says so
and exits 0); a config that would change the run's trajectory is refused unless
--config.allow_config_change=True. Ctrl-C exits with 130 after saying which checkpoint a rerun
resumes from. Errors (bad config, data, checkpoint, a work dir in use) exit with 2. On several hosts
(TPU pods, multi-node GPU), pass --distributed to call jax.distributed.initialize() first.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config in configs/.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> int:
  """Train; return the exit code: 0 done, 2 an error explained on stderr, 130 interrupted (Ctrl-C)."""
  from saat_jax.checkpointing import CheckpointError
  from saat_jax.data import DataError
  from saat_jax.train import TrainingDiverged, TrainingInterrupted, train_and_evaluate

  try:
    train_and_evaluate(config, workdir)
  except KeyboardInterrupt as e:
    msg = str(e) if isinstance(e, TrainingInterrupted) and str(e) else \
        "interrupted before training started: run the same command to start (or resume) the run"
    print(msg, file=sys.stderr, flush=True)
    return 130
  except (DataError, CheckpointError, TrainingDiverged, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  import jax

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  sys.exit(run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
