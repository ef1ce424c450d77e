"""Data parallelism over every device: one ``Mesh`` axis ``data``, ``jit`` with ``NamedSharding``.

This is what the design calls "pmapped", done the current way: parameters are replicated, each
global batch is split along its first axis over all devices (and hosts, after
``jax.distributed.initialize()``), and XLA inserts the gradient all-reduce. BatchNorm statistics are
those of the global batch, so 1 and N devices compute the same numbers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(batch_size: int, what: str = "batch_size") -> None:
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the {n} devices; "
                     f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})")


def shard_batch(mesh: Mesh, *arrays: np.ndarray):
  """Put host arrays of the *global* batch onto the devices, split along axis 0.

  Each process contributes its own contiguous slice of the global batch (all of it on one host).
  """
  sharding = data_sharded(mesh)
  n_proc, idx = jax.process_count(), jax.process_index()
  out = []
  for a in arrays:
    per = a.shape[0] // n_proc
    local = a[idx * per:(idx + 1) * per]
    out.append(jax.make_array_from_process_local_data(sharding, local, a.shape))
  return out if len(out) > 1 else out[0]
