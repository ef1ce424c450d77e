"""What the checkpoints' checksums cost: SHA-256 of every array at a save, verified at a restore.

Builds the training state of a config's model (default: configs/saat_cifar10.py, PreAct ResNet-18:
params, BatchNorm statistics and the SGD momentum), then times, best and median of ``--repeats``:
the checksums alone (:func:`saat_jax.checkpointing.checksums` on the host arrays), their
verification alone, a ``last`` save (checksums included) and a restore (verification included) of
the whole state into the device-resident target as training restores it, a restore of the weights
alone as evaluation does, the save and restore without checksums (as before they existed; that
restore checks for NaN/inf instead), and hashlib's SHA-256 and BLAKE2b on one buffer of the
state's size.

  python benchmarks/checkpoint_checksums.py --out benchmarks/results/checkpoint_checksums_cpu_preact18.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchinfo  # noqa: E402


def timed(fn, repeats: int) -> dict:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {"best_s": min(times), "median_s": statistics.median(times)}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="saat_cifar10", help="a module of configs/ (its model)")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None, help="JSON record path")
  args = ap.parse_args(argv)

  import importlib

  import jax
  import numpy as np

  from saat_jax import checkpointing, run_state, train

  c = importlib.import_module(f"configs.{args.config}").get_config()
  spec = {"name": c.model.name, "num_classes": 10, "normalization": c.model.normalization,
          "kwargs": dict(c.model.get("kwargs", {}) or {})}
  shape = (8, 8, 1) if c.data.name == "digits" else (32, 32, 3)
  state = train.initial_state(run_state.model_from_spec(spec), train.make_optimizer(c, 390)[0], jax.random.key(0),
                              shape)
  host = jax.device_get(state)
  leaves = jax.tree_util.tree_leaves(host)
  nbytes = sum(np.asarray(a).nbytes for a in leaves)
  record = benchinfo.new_record("checkpoint_checksums", config=f"configs/{args.config}.py", model=spec["name"],
                                state_mb=nbytes / 1e6, arrays=len(leaves), repeats=args.repeats)
  sums = checkpointing.checksums({"state": host})
  buf = np.random.default_rng(0).bytes(nbytes)
  r = {"checksums": timed(lambda: checkpointing.checksums({"state": host}), args.repeats),
       "verify": timed(lambda: checkpointing._verify({"state": host}, sums), args.repeats),
       "sha256_one_buffer": timed(lambda: hashlib.sha256(buf).digest(), args.repeats),
       "blake2b_one_buffer": timed(lambda: hashlib.blake2b(buf).digest(), args.repeats)}
  with tempfile.TemporaryDirectory() as tmp:
    ck = checkpointing.RunCheckpoints(tmp)
    epoch = iter(range(10 ** 6))
    r["save_last"] = timed(lambda: ck.save("last", next(epoch), host, {"epoch": 0}), args.repeats)
    r["restore_last"] = timed(lambda: jax.block_until_ready(ck.restore("last", state)[0]), args.repeats)
    r["restore_weights"] = timed(lambda: run_state.restore_weights(tmp, "last"), args.repeats)
    # the same without checksums: a save that records none (as before they existed; here by making
    # this process one that does not compute them), and its restore (unverified: checked for NaN/inf)
    real, checkpointing.distributed.is_primary = checkpointing.distributed.is_primary, lambda: False
    try:
      r["save_last_no_checksums"] = timed(lambda: ck.save("last", next(epoch), host, {"epoch": 0}), args.repeats)
    finally:
      checkpointing.distributed.is_primary = real
    r["restore_last_no_checksums"] = timed(lambda: jax.block_until_ready(ck.restore("last", state)[0]), args.repeats)
    ck.close()
  record.update(r)
  for k, v in r.items():
    print(f"{k:20s} best {1000 * v['best_s']:8.1f} ms  median {1000 * v['median_s']:8.1f} ms")
  print(f"state: {nbytes / 1e6:.1f} MB in {len(leaves)} arrays")
  benchinfo.finish(record, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
