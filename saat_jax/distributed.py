"""Many processes, one per host: start-up, and the few things only process 0 may do.

Training is data-parallel over the devices of every process (:mod:`saat_jax.parallel`): after
``jax.distributed.initialize`` the mesh spans all hosts, each process puts its own rows of every
batch on its own devices, and XLA all-reduces the gradients across hosts. Each process builds the
same replicated training state from the same seed and restores checkpoints into the replicated
sharding (Orbax reads them on every process). Process 0 alone writes the work dir's records
(``metrics.jsonl``, ``config.json``, ``configs.jsonl``) and holds its lock; every process takes
part in writing checkpoints, as Orbax requires, so the work dir must be on a file system all hosts
share.

:func:`initialize` takes the coordinator's address, the process count and this process's id from
flags or, when none is given, from the cluster's environment as JAX reads it (SLURM, Open MPI, TPU
pod slices). It fails with :class:`DistributedError` -- not a hang, not a crash -- when the values
are incomplete or the coordinator cannot be reached within the timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

import jax
import numpy as np

MESSAGE_BYTES = 2048  # how much of process 0's error the other processes are told


class DistributedError(ValueError):
  """Several processes cannot start or go on together; the message says why and what to do."""


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"coordinator address {address!r} is not host:port (e.g. 10.0.0.1:1234 or "
                           f"node001:1234): give process 0's host name or IP and a free port")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Return once something listens at ``address`` (host:port); raise :class:`DistributedError`
  after ``timeout_s`` seconds of refused or unanswered connections."""
  host, port = _split_address(address)
  deadline = time.monotonic() + float(timeout_s)
  last = None
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        return
    except OSError as e:
      last = e
    if time.monotonic() >= deadline:
      raise DistributedError(
          f"no coordinator answered at {address} within {timeout_s:g} s ({type(last).__name__}: {last}). "
          f"Start process 0 (--process_id=0) with the same --coordinator_address, check that {host} is "
          f"process 0's host as this host sees it and that port {port} is open between them; "
          f"--distributed_timeout sets how long to wait")
    time.sleep(0.2)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: int = 300, heartbeat_s: int = 100) -> None:
  """``jax.distributed.initialize`` with checked arguments and a bounded wait.

  Give all three of ``coordinator_address`` (or ``$JAX_COORDINATOR_ADDRESS``), ``num_processes``
  and ``process_id``, or none of them to let JAX read the cluster's environment. A process other
  than 0 first waits up to ``timeout_s`` for the coordinator to listen and raises
  :class:`DistributedError` if it does not; then every process waits up to ``timeout_s`` for all
  to register, and on expiry exits with status 2 and a message (:func:`_deadline`).

  ``heartbeat_s`` is JAX's heartbeat timeout: once a process has been silent that long (killed,
  preempted, its host gone), the others stop instead of waiting in a collective for ever. JAX ends
  them from its runtime (an abort with its own log lines), so nothing of theirs runs afterwards;
  the checkpoints written so far are what a restart resumes from.
  """
  if not int(timeout_s) >= 1:
    raise DistributedError(f"the distributed timeout must be >= 1 s, got {timeout_s}")
  if not int(heartbeat_s) >= 1:
    raise DistributedError(f"the distributed heartbeat timeout must be >= 1 s, got {heartbeat_s}")
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  given = {"--coordinator_address": address, "--num_processes": num_processes, "--process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if len(missing) == len(given):  # the cluster's environment (SLURM, Open MPI, TPU pod slice)
    try:
      with _deadline(timeout_s, "the processes of this job did not all join the coordinator JAX found in the "
                                "cluster's environment"):
        jax.distributed.initialize(initialization_timeout=int(timeout_s) + JAX_GRACE_S,
                                   heartbeat_timeout_seconds=int(heartbeat_s))
    except ValueError as e:
      if "defined" not in str(e):
        raise
      raise DistributedError(
          f"--distributed found no cluster to join ({e}): JAX reads the process count and id from "
          f"SLURM (srun), Open MPI (mpirun) or a TPU pod slice. Elsewhere pass all of "
          f"--coordinator_address=HOST:PORT (process 0's host and a free port), --num_processes=N and "
          f"--process_id=I (0..N-1, a different one per process)") from e
    return
  if missing:
    raise DistributedError(f"--distributed with {', '.join(k for k in given if k not in missing)} also needs "
                           f"{', '.join(missing)}: give all three, or none of them under SLURM, Open MPI or on "
                           f"a TPU pod slice, where JAX reads them from the environment")
  _split_address(address)
  if not int(num_processes) >= 1 or not 0 <= int(process_id) < int(num_processes):
    raise DistributedError(f"--process_id={process_id} with --num_processes={num_processes}: the ids are "
                           f"0..num_processes-1, one per process, and process 0 runs the coordinator")
  if int(process_id) != 0:
    wait_for_coordinator(address, timeout_s)
  print(f"process {process_id} of {num_processes}: joining the coordinator at {address} "
        f"(waiting up to {int(timeout_s)} s for all processes)", file=sys.stderr, flush=True)
  with _deadline(timeout_s, f"not all {num_processes} processes joined the coordinator at {address}: start each of "
                            f"--process_id=0..{int(num_processes) - 1} with the same --coordinator_address and "
                            f"--num_processes"):
    jax.distributed.initialize(address, int(num_processes), int(process_id),
                               initialization_timeout=int(timeout_s) + JAX_GRACE_S,
                               heartbeat_timeout_seconds=int(heartbeat_s))


JAX_GRACE_S = 30  # JAX's own deadline comes this much later than ours, so that ours explains it


@contextlib.contextmanager
def _deadline(timeout_s: float, what: str):
  """Exit the process with status 2 and ``what`` on stderr if the block has not finished after
  ``timeout_s`` seconds. JAX's own start-up deadline aborts the process (SIGABRT, a C++ stack
  trace) from inside ``initialize``, where no exception can be raised; this says why first."""
  finished = threading.Event()

  def watch():
    if not finished.wait(float(timeout_s)):
      print(f"error: {what} within {float(timeout_s):g} s (--distributed_timeout)", file=sys.stderr, flush=True)
      os._exit(2)

  threading.Thread(target=watch, name="distributed-start-deadline", daemon=True).start()
  try:
    yield
  finally:
    finished.set()


def is_primary() -> bool:
  return jax.process_index() == 0


def quiet_unless_primary() -> None:
  """Silence the standard output of every process but 0 (its progress lines would repeat process
  0's; the file descriptor, so that what C++ libraries print goes too); errors and warnings still
  go to standard error."""
  if not is_primary():
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process; every process calls this at the same point (a
  collective), so all of them get the same answer (e.g. whether any could read a checkpoint)."""
  return agree_on_stop(flag, 0)[0]


def agree_on_stop(flag: bool, next_step: int) -> tuple[bool, int]:
  """``(whether flag is set on any process, process 0's next_step)``: one allgather of two integers
  (``multihost_utils.process_allgather``), which every process calls at the same point (a
  collective), so all get the same answer, e.g. for a SIGTERM that reached only some. The training
  loop's agreement on a stop (:class:`saat_jax.preemption.StopAgreement`), which also agrees on
  where the next one is."""
  if jax.process_count() == 1:
    return bool(flag), int(next_step)
  from jax.experimental import multihost_utils

  gathered = np.asarray(multihost_utils.process_allgather(np.asarray([int(bool(flag)), int(next_step)], np.int32)))
  return bool(np.any(gathered[:, 0])), int(gathered[0, 1])


def agree(error: Optional[BaseException], what: str) -> None:
  """Every process learns whether any of them failed to do ``what``; then each one that did raises
  its own ``error`` and the others raise :class:`DistributedError` quoting the first failure, so
  that no process goes on to wait forever in a collective for one that has stopped."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  from jax.experimental import multihost_utils

  message = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:MESSAGE_BYTES]
  buf = np.zeros(MESSAGE_BYTES + 1, np.uint8)
  buf[0] = error is not None
  buf[1:1 + len(message)] = np.frombuffer(message, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buf))
  if error is not None:
    raise error
  for i, row in enumerate(gathered):
    if row[0]:
      text = bytes(row[1:]).rstrip(b"\0").decode(errors="replace")
      raise DistributedError(f"process {i} failed to {what}, so process {jax.process_index()} stops too: {text}")


def on_primary(fn: Callable[[], object], what: str) -> None:
  """Run ``fn`` on process 0 only, then :func:`agree` on whether it failed (``what`` names it)."""
  error = None
  if is_primary():
    try:
      fn()
    except Exception as e:  # noqa: BLE001 -- shared with the other processes, then re-raised
      error = e
  agree(error, what)


def take_workdir(lock) -> None:
  """Process 0 takes the work dir's lock (a :class:`saat_jax.checkpointing.RunLock`) for all
  processes; the others check that they see it, i.e. that the work dir is one directory shared by
  every host, as Orbax's checkpoints need. Whatever ends it early (a refusal, another process's
  failure, Ctrl-C or SIGTERM between two of its lines) releases the lock if it was taken."""
  try:
    on_primary(lock.acquire, f"take the work dir {lock.workdir}")
    error = None
    if not is_primary():
      try:
        os.makedirs(lock.workdir, exist_ok=True)
      except OSError as e:
        error = e
      if error is None and not os.path.exists(lock.path):
        error = DistributedError(
            f"process {jax.process_index()} does not see the lock {lock.path} that process 0 has just taken: "
            f"the work dir is not shared. Give every process the same --workdir on a file system all hosts "
            f"mount (NFS, Lustre, Filestore, gcsfuse)")
    agree(error, "see the shared work dir")
  except BaseException:
    lock.release()  # process 0's, if it holds it
    raise
