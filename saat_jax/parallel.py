"""Data parallelism over every device: one ``Mesh`` axis ``data``, ``jit`` with ``NamedSharding``.

This is what the design calls "pmapped", done the current way: parameters are replicated, each
global batch is split along its first axis over all devices (and hosts, after
``jax.distributed.initialize()``), and XLA inserts the gradient all-reduce. BatchNorm statistics are
those of the global batch, so 1 and N devices compute the same numbers.
"""

from __future__ import annotations

import functools

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


def describe_devices() -> str:
  """'4 devices' on one process, '4 devices (2 processes x 2 local devices)' on several."""
  n, procs = jax.device_count(), jax.process_count()
  if procs == 1:
    return f"{n} devices"
  return f"{n} devices ({procs} processes x {jax.local_device_count()} local devices)"


def nearest_multiples_hint(value: int, n: int) -> str:
  """'use 96 or 104 (the nearest multiples of the 8 devices)' for a batch size that does not divide."""
  lo, hi = value // n * n, (value // n + 1) * n
  if lo < 1:
    return f"use {hi} (the smallest multiple of the {n} devices)"
  return f"use {lo} or {hi} (the nearest multiples of the {n} devices)"


def check_batch_divisible(batch_size: int, what: str = "batch_size") -> None:
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the {describe_devices()}; "
                     f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})")


@functools.lru_cache(maxsize=64)
def process_rows(mesh: Mesh, global_size: int) -> slice:
  """The rows of a global batch of ``global_size`` that this process puts on its devices.

  Read from the sharding (not assumed from the process index), so any device order of the mesh
  works as long as each process's devices hold one contiguous block of rows, which is what
  ``jax.make_array_from_process_local_data`` needs; a mesh that interleaves processes, or a batch
  that leaves a process an empty or ragged share, raises ``ValueError`` saying what to change.
  """
  if global_size % mesh.size:
    raise ValueError(f"a batch of {global_size} cannot be split over the {describe_devices()}; "
                     f"use a multiple of {mesh.size}")
  blocks = sorted({(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                   for s in data_sharded(mesh).addressable_devices_indices_map((global_size,)).values()})
  start, stop = blocks[0][0], blocks[-1][1]
  if stop <= start or any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])):
    raise ValueError(f"process {jax.process_index()}'s devices hold rows {blocks} of a batch of {global_size}, "
                     f"not one contiguous block: build the mesh with each process's devices next to each other "
                     f"(jax.devices() order)")
  return slice(start, stop)


def shard_batch(mesh: Mesh, *arrays: np.ndarray, index: np.ndarray | None = None):
  """Put a *global* batch onto the devices of ``mesh``, split along axis 0.

  Without ``index`` the arrays are the global batch (the same on every process) and each process
  keeps its own rows. With ``index`` (the global batch's row numbers) the arrays are the whole data
  set and each process reads only the rows of its share, ``arrays[i][index[process_rows]]``.
  """
  sharding = data_sharded(mesh)
  n = len(arrays[0]) if index is None else len(index)
  rows = process_rows(mesh, n)
  out = []
  for a in arrays:
    local = a[rows] if index is None else a[index[rows]]
    out.append(jax.make_array_from_process_local_data(sharding, local, (n, *a.shape[1:])))
  return out if len(out) > 1 else out[0]
