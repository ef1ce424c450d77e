"""A behaviour-unchanged check for refactorings: short digits runs of every method, fingerprinted.

Trains each method of ``configs/digits.py`` (both SAAT starts, TRADES, SA-TRADES, AWP on AT and on
TRADES, and one run with an EMA) for two epochs on a small subset and prints, per run, a SHA-256 of
every array of the final ``last`` checkpoint (parameters, BatchNorm statistics, optimizer state,
EMA) and of the metrics.jsonl records without their timing and memory fields. Run it on the commit
before a refactoring and on the one after, on the same machine, and compare the JSON: a refactoring
that keeps behaviour leaves every hash unchanged, bit for bit. (Not a test: the hashes depend on the
machine's floating-point reduction order, so they are compared within one machine only.)

  python benchmarks/fingerprint_methods.py --out /tmp/before.json      # on the old commit
  python benchmarks/fingerprint_methods.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

# name -> (configs/digits.py method, overrides)
RUNS = {
    "natural": ("natural", {}),
    "at": ("at", {}),
    "saat_zero_start": ("saat_down", {}),
    "saat_pgd_start": ("saat_up", {}),
    "trades": ("trades", {}),
    "sa_trades": ("sa_trades_up", {}),
    "awp_at": ("awp_at", {}),
    "awp_trades": ("awp_trades", {"awp.warmup": 1}),
    "awp_saat_ema": ("awp_saat_up", {"ema.decay": 0.9}),
}
VOLATILE = ("train_time_s", "eval_time_s", "host_rss_mb", "compiles")


def _set(config, dotted: str, value) -> None:
  *path, last = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  node[last] = value


def fingerprint(name: str, workdir: str) -> dict:
  import numpy as np

  from saat_jax import checkpointing
  from saat_jax.config_base import digits_config
  from saat_jax.train import train_and_evaluate

  method, overrides = RUNS[name]
  c = digits_config(method)
  c.num_epochs, c.data.num_train, c.eval.num_test, c.eval.train_subset = 2, 256, 100, 64
  c.progress = False
  for k, v in overrides.items():
    _set(c, k, v)
  history = train_and_evaluate(c, workdir)
  part, _ = checkpointing.restore_part(workdir, "last", ("params", "batch_stats", "opt_state", "ema"))
  import jax

  arrays = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(part)[0], key=lambda t: jax.tree_util.keystr(t[0])):
    a = np.asarray(leaf)
    arrays.update(jax.tree_util.keystr(path).encode() + str(a.dtype).encode() + a.tobytes())
  records = [{k: v for k, v in r.items() if k not in VOLATILE} for r in history]
  return {"checkpoint_sha256": arrays.hexdigest(),
          "metrics_sha256": hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest(),
          "last_record": records[-1]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="JSON written with one fingerprint per run")
  ap.add_argument("--compare", help="an earlier --out to compare with; exit 1 on any difference")
  ap.add_argument("--runs", nargs="+", default=list(RUNS), help=f"any of {', '.join(RUNS)}")
  args = ap.parse_args(argv)
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.runs:
      out[name] = fingerprint(name, os.path.join(tmp, name))
      print(f"{name}: checkpoint {out[name]['checkpoint_sha256'][:16]} metrics {out[name]['metrics_sha256'][:16]}",
            flush=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2, sort_keys=True)
  if args.compare:
    with open(args.compare) as f:
      before = json.load(f)
    differ = [n for n in out if n in before and (before[n]["checkpoint_sha256"], before[n]["metrics_sha256"])
              != (out[n]["checkpoint_sha256"], out[n]["metrics_sha256"])]
    missing = [n for n in out if n not in before]
    for n in differ:
      print(f"DIFFERENT: {n}\n  before {before[n]['last_record']}\n  after  {out[n]['last_record']}")
    print(f"{len(out) - len(differ) - len(missing)} of {len(out)} runs bit-identical"
          + (f"; not in {args.compare}: {', '.join(missing)}" if missing else ""))
    return 1 if differ else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
