"""Train (and evaluate every epoch) from an ml_collections config.

  python launch.py --config configs/saat_cifar10.py --workdir runs/saat
  python launch.py --config configs/saat_digits.py --config.num_epochs=5 --workdir runs/digits

Running again with the same --workdir resumes from its `last` checkpoint. On several hosts (TPU
pods, multi-node GPU), pass --distributed to call jax.distributed.initialize() first.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config in configs/.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  import jax

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  from saat_jax.checkpointing import CheckpointError
  from saat_jax.data import DataError
  from saat_jax.train import TrainingDiverged, train_and_evaluate

  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DataError, CheckpointError, TrainingDiverged, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
