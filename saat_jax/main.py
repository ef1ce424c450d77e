"""Train (and evaluate every epoch) from an ml_collections config: ``saat-train`` / ``launch.py``.

  saat-train --config configs/saat_cifar10.py --workdir runs/saat
  python launch.py --config configs/saat_digits.py --config.num_epochs=5 --workdir runs/digits

The config is a file passed by path (any path: the configs/ of a checkout, or your own copy), so
the installed ``saat-train`` console script works outside the repository too.

Running again with the same --workdir resumes from its `last` checkpoint (a finished run says so
and exits 0); a config that would change the run's trajectory is refused unless
--config.allow_config_change=True. Ctrl-C exits with 130 after saying which checkpoint a rerun
resumes from. Errors (bad config, data, checkpoint, a work dir in use) exit with 2.

One process per host (multi-node GPU, SLURM, TPU pod slices; see the README's "Many processes"):
pass --distributed, alone where JAX reads the cluster's environment, or with --coordinator_address,
--num_processes and --process_id, e.g. two processes on this machine:

  saat-train --distributed --coordinator_address=localhost:1234 --num_processes=2 --process_id=0 ...
  saat-train --distributed --coordinator_address=localhost:1234 --num_processes=2 --process_id=1 ...
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# ---- Command-line flags (all of them; `saat-train --help` and `python launch.py --help`) ----------
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config, e.g. configs/saat_cifar10.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl.")
# Many processes (saat_jax/distributed.py).
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Run as one of several processes (one per host): join them through "
    "jax.distributed.initialize() first. Alone, JAX reads the cluster's environment (SLURM, Open MPI, TPU pod "
    "slices); elsewhere also pass --coordinator_address, --num_processes and --process_id.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: HOST:PORT of process 0, where it runs the coordinator "
    "(a free port; every process passes the same). Default: $JAX_COORDINATOR_ADDRESS or the cluster's.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes in all.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0..num_processes-1.",
                                   lower_bound=0)
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "With --distributed: seconds to wait for the coordinator and for every process "
    "to join before failing.", lower_bound=1)
_DISTRIBUTED_HEARTBEAT = flags.DEFINE_integer(
    "distributed_heartbeat", 100, "With --distributed: seconds without a heartbeat after which the processes "
    "decide that one of them is gone and stop (JAX's heartbeat timeout). Lower it where machines are "
    "preempted, so that the survivors stop (and can be restarted) soon after a peer vanishes.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])
# ---- end of the flags ----------------------------------------------------------------------------


EXIT_PEER_FAILED = 75  # EX_TEMPFAIL: another process of the job failed; rerunning every process resumes


def run(config, workdir: str) -> int:
  """Train; return the exit code: 0 done, 2 an error explained on stderr, 130 interrupted (Ctrl-C),
  143 stopped by SIGTERM after saving its position inside the epoch. With several processes, a
  process whose collective fails because another one died exits at once with 75
  (:func:`_peer_failed`)."""
  import jax

  from saat_jax.checkpointing import CheckpointError
  from saat_jax.data import DataError
  from saat_jax.train import TrainingDiverged, TrainingInterrupted, TrainingPreempted, train_and_evaluate

  try:
    train_and_evaluate(config, workdir)
  except KeyboardInterrupt as e:
    msg = str(e) if isinstance(e, TrainingInterrupted) and str(e) else \
        "interrupted before training started: run the same command to start (or resume) the run"
    print(msg, file=sys.stderr, flush=True)
    return 130
  except TrainingPreempted as e:  # SIGTERM: 128 + 15, as a process the signal had ended
    print(str(e), file=sys.stderr, flush=True)
    return 143
  except (DataError, CheckpointError, TrainingDiverged, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    _peer_failed(e)
  return 0


def _peer_failed(error: BaseException) -> None:
  """A collective between the processes failed, which in a running job means another process died
  (killed, preempted, out of memory, its host gone). Say so and exit with 75 at once: a normal exit
  would wait in JAX's shutdown barrier for the dead process until the heartbeat timeout
  (``--distributed_heartbeat``, 100 s by default). Nothing is lost: the lock was released on the way
  out, and the checkpoints are what every process resumes from."""
  import jax

  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  print(f"error: process {jax.process_index()} of {jax.process_count()}: an operation between the processes "
        f"failed ({first[:300]}). Another process of this job has most likely died (its own log says why). "
        f"Start every process again with the same command: the run resumes from its last checkpoint.",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(EXIT_PEER_FAILED)


def _main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from saat_jax import distributed

  multi = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in multi) and not _DISTRIBUTED.value:
    print("error: --coordinator_address, --num_processes and --process_id are for several processes: "
          "add --distributed", file=sys.stderr, flush=True)
    sys.exit(2)
  if _DISTRIBUTED.value:
    try:
      distributed.initialize(*multi, timeout_s=_DISTRIBUTED_TIMEOUT.value,
                             heartbeat_s=_DISTRIBUTED_HEARTBEAT.value)
    except distributed.DistributedError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
    distributed.quiet_unless_primary()
  sys.exit(run(_CONFIG.value, _WORKDIR.value))


def _help_shows_these_flags() -> None:
  """absl's ``--help`` lists the main module's flags and docstring: the console script's
  generated module and launch.py define none, so they get this module's."""
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  program = sys.modules["__main__"]
  if not getattr(program, "__doc__", None):
    program.__doc__ = __doc__


def main():
  """The ``saat-train`` console script (and ``python launch.py``): parses the flags, then trains."""
  _help_shows_these_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
