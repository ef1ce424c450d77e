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

import difflib
import os
import re
import signal
import sys
import time

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
_CONFIG_HELP = flags.DEFINE_bool(
    "config_help", False, "Print every key of the --config (with the --config.<key> overrides applied), its value "
    "and what it means, then exit; no --workdir needed. Also spelled --config-help.")
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "config_help"], lambda v: bool(v["workdir"]) or v["config_help"],
    message="--workdir must have a value: the run's folder for checkpoints and metrics, e.g. --workdir runs/x")
# ---- end of the flags ----------------------------------------------------------------------------


EXIT_PEER_FAILED = 75  # EX_TEMPFAIL: another process of the job failed; rerunning every process resumes


class StoppedBySignal(Exception):
  """SIGTERM before the training loop took over the signal (while the data, the model or a
  checkpoint were loading): raised from the handler so that the work dir's lock is released on the
  way out. Inside the loop SIGTERM saves the position instead (:mod:`saat_jax.preemption`)."""


def _stop_on_sigterm(signum, frame) -> None:
  del frame
  raise StoppedBySignal(signal.Signals(signum).name)


def run(config, workdir: str) -> int:
  """Train; return the exit code: 0 done, 2 an error explained on stderr, 130 interrupted (Ctrl-C),
  143 stopped by SIGTERM (after saving its position inside the epoch, or before training started).
  With several processes, a process whose collective fails because another one died exits at once
  with 75 (:func:`_peer_failed`). A finished run ends with :func:`summary`."""
  import jax

  from saat_jax.checkpointing import CheckpointError
  from saat_jax.data import DataError
  from saat_jax.train import TrainingDiverged, TrainingInterrupted, TrainingPreempted, train_and_evaluate

  t0 = time.time()
  previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if _main_thread() else None
  try:
    history = train_and_evaluate(config, workdir)
  except KeyboardInterrupt as e:
    msg = str(e) if isinstance(e, TrainingInterrupted) and str(e) else \
        "interrupted before training started: run the same command to start (or resume) the run"
    print(msg, file=sys.stderr, flush=True)
    return 130
  except StoppedBySignal as e:
    print(f"stopped by {e} before training started (nothing was lost; the work dir is free): run the same "
          f"command to start (or resume) the run", file=sys.stderr, flush=True)
    return 143
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
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  from saat_jax import log

  log.info(summary(config, workdir, history, time.time() - t0))
  return 0


def _main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread()


def summary(config, workdir: str, history: list, seconds: float = 0.0) -> str:
  """What a finished run tells its user: the best and the last epoch with their accuracies, where
  their checkpoints are, and the commands that come next (evaluate, report, plot).

  Epochs are counted from 1 here, as in the progress lines; ``metrics.jsonl`` records and the
  checkpoint folders count from 0 (the Orbax step), which the summary says once."""
  from saat_jax.checkpointing import checkpoint_dir

  if not history:
    return f"{workdir}: no epoch recorded"
  last = history[-1]
  n = int(last["epoch"]) + 1
  ev = config.eval
  selected = f"{'EMA ' if ev.get('best_weights', 'raw') == 'ema' else ''}{ev.select_best_on} PGD-{int(ev.steps)}"

  def accuracies(r: dict) -> str:
    if not r.get("evaluated", True) or "test_pgd_accuracy" not in r:
      return "not evaluated"
    return (f"test natural {100 * r['test_natural_accuracy']:.2f}%, PGD-{int(ev.steps)} "
            f"{100 * r['test_pgd_accuracy']:.2f}% (eps {255 * float(ev.eps):.3g}/255)")

  by_epoch = {int(r["epoch"]): r for r in history}
  best = int(last.get("best_epoch", -1))
  took = f" in {seconds / 60:.1f} min" if seconds >= 1 else ""
  lines = [f"done: {n} of {int(config.num_epochs)} epochs{took}; {workdir}"]
  if best in by_epoch:
    lines.append(f"  best: epoch {best + 1} by {selected}: {accuracies(by_epoch[best])}"
                 f" -> {os.path.join(checkpoint_dir(workdir, 'best'), str(best))}")
  lines.append(f"  last: epoch {n}: {accuracies(last)} -> {os.path.join(checkpoint_dir(workdir, 'last'), str(n - 1))}")
  lines.append(f"  metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: tensorboard --logdir "
               f"{_quote(os.path.join(workdir, 'tensorboard'))}")
  lines.append(f"  (epochs count from 1 here and in the progress lines; metrics.jsonl's \"epoch\" and the checkpoint "
               f"folders count from 0: epoch {n} is \"epoch\": {n - 1} and checkpoints/last/{n - 1})")
  w = _quote(workdir)
  lines += ["  next:",
            f"    python -m saat_jax.evaluate --workdir {w}      # Natural / PGD-20 / AutoAttack of best and last",
            f"    python -m saat_jax.report {w} --out {_quote(os.path.join(workdir, 'report'))}   # tables and figures",
            f"    python -m saat_jax.plot --workdir {w}          # curves, loss and lr, SA-PGD budgets"]
  if n >= int(config.num_epochs):
    lines.append("  (to train longer, run the same command with --config.num_epochs=N: it resumes from last)")
  return "\n".join(lines)


def _quote(path: str) -> str:
  import shlex

  return shlex.quote(str(path))


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
  if _CONFIG_HELP.value:
    from saat_jax.config_help import describe

    print(describe(_CONFIG.value, _config_arg(sys.argv)))
    sys.exit(0)
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


# ---- Parsing the command line: every mistake is one line on stderr and exit status 2 -----------


def _config_arg(argv) -> str:
  """The value of ``--config`` in ``argv`` (``path`` or ``path:arg``), or ''."""
  for i, a in enumerate(argv):
    if a in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith(("--config=", "-config=")):
      return a.split("=", 1)[1]
  return ""


def _usage_error(msg: str) -> None:
  print(f"error: {msg}\nusage: saat-train --config <config file>[:<arg>] --workdir DIR [--config.<key>=<value> ...] "
        f"(--help lists the flags, --config_help the config's keys)", file=sys.stderr, flush=True)
  sys.exit(2)


def _check_config_file(spec: str) -> None:
  """Refuse a ``--config`` that names no Python file, suggesting the closest config beside it."""
  path = spec.split(":", 1)[0]
  if os.path.isfile(path):
    if not path.endswith(".py"):
      _usage_error(f"--config={spec}: {path} is not a Python config file (a .py with get_config())")
    return
  folder = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
  near = []
  if os.path.isdir(folder):
    py = [f for f in sorted(os.listdir(folder)) if f.endswith(".py") and not f.startswith("_")]
    near = [] if folder == path else [os.path.join(os.path.dirname(path), f)
                                      for f in difflib.get_close_matches(os.path.basename(path), py, n=3)]
    listing = f"; the configs there: {', '.join(py)}" if py and not near else ""
  else:
    listing = f"; the folder {folder} does not exist either"
  hint = f" (did you mean {' or '.join(near)}?)" if near else listing
  where = "" if os.path.isabs(path) else f" (from {os.getcwd()})"
  kind = "a folder, not a config file" if os.path.isdir(path) else "no such file"
  _usage_error(f"--config={spec}: {path}{where}: {kind}{hint}")


def _unknown_override(argv, spec: str) -> str:
  """The message for a ``--config.<key>`` that the config does not have, with the closest keys."""
  from saat_jax.config_help import flat_keys, load_config

  try:
    keys = flat_keys(load_config(spec))
  except Exception:  # noqa: BLE001 -- the config itself fails: say that instead
    return ""
  for a in argv:
    if a.startswith("--config."):
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        return f"--config.{key}: the config {spec} has no key {key!r}{hint} (--config_help lists them)"
  return ""


def _parse_flags(argv):
  """absl's flag parsing with every error as one line (``error: ...``, exit 2) instead of a
  traceback: a config file that does not exist, a config whose ``get_config`` raises (an unknown
  ``configs/digits.py:<method>``), an override of a key the config lacks (with the closest key), a
  value that does not parse. ``--help`` still prints the flags."""
  argv = ["--config_help" if a == "--config-help" else a for a in argv]
  spec = _config_arg(argv)
  if spec:
    _check_config_file(spec)
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS["config"].value  # loads the file (and applies the overrides) now, not in the middle of a run
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 -- absl, ml_collections and the config's own errors
    msg = _unknown_override(argv, spec) if isinstance(e, (AttributeError, KeyError, flags.UnrecognizedFlagError)) else ""
    if not msg:
      text = str(e).strip()
      lines = [l.strip() for l in text.splitlines() if l.strip()]
      # A config's own exception comes wrapped in ml_collections' traceback text: its last line is the message.
      if "Traceback" in text and lines:
        msg = f"--config={spec}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', lines[-1])}"
      else:
        msg = re.sub(r"^flags [^:]*: ", "", lines[0]) if lines else type(e).__name__
        if "Did you mean" in text:
          msg += " " + " ".join(l for l in lines[1:] if "Did you mean" in l)
    _usage_error(msg)
  return rest


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
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
