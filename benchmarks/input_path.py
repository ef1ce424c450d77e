"""Step rate of the input paths in a host-bound setting: host batches (one step a dispatch) against
the training set on the device (one step, or k steps a dispatch with lax.scan).

A small CNN on digits (configs/digits.py:<method>, default natural: the cheapest step, so the input
path and dispatch matter most), batch 128, epochs timed from metrics.jsonl's ``train_time_s``
(the first epoch of each run, which compiles, left out); whole runs of the variants alternate.

  python benchmarks/input_path.py --out benchmarks/results/input_path_cpu_digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchinfo  # noqa: E402

VARIANTS = {"host_k1": {}, "device_k1": {"data_on_device": True},
            "device_k10": {"data_on_device": True, "steps_per_dispatch": 10}}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--method", default="natural")
  ap.add_argument("--batch-size", type=int, default=128)
  ap.add_argument("--epochs", type=int, default=8, help="epochs per run (the first, which compiles, is not timed)")
  ap.add_argument("--rounds", type=int, default=2, help="runs of each variant, in turn")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  from configs import digits
  from saat_jax.train import train_and_evaluate

  record = benchinfo.new_record("input_path", config=f"configs/digits.py:{args.method}", batch_size=args.batch_size,
                                epochs=args.epochs, rounds=args.rounds, variants={})
  times = {name: [] for name in VARIANTS}
  steps = None  # per epoch, as the runs count them
  with tempfile.TemporaryDirectory() as tmp:
    for rnd in range(args.rounds):  # whole runs (a run compiles in its first epoch), variants in turn
      for name, over in VARIANTS.items():
        c = digits.get_config(args.method)
        c.update_from_flattened_dict({"batch_size": args.batch_size, "progress": False, "num_epochs": args.epochs,
                                      "eval.every": 10**6, "eval.num_test": 128, "eval.train_subset": 0,
                                      **over})
        workdir = os.path.join(tmp, f"{name}_{rnd}")
        train_and_evaluate(c, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          recs = [json.loads(line) for line in f]
        times[name] += [r["train_time_s"] for r in recs[1:]]
        steps = recs[0]["step"]  # the global step after epoch 1
  for name, t in times.items():
    timed = sorted(t)
    med = timed[len(timed) // 2]
    record["variants"][name] = {"config": VARIANTS[name], "epoch_train_s": t, "median_epoch_s": med,
                                "steps_per_s": steps / med}
  base = record["variants"]["host_k1"]["median_epoch_s"]
  for name, v in record["variants"].items():
    v["speedup_vs_host_k1"] = base / v["median_epoch_s"]
    print(f"{name:12s} median epoch {v['median_epoch_s']:.3f}s  {v['steps_per_s']:.1f} steps/s  "
          f"x{v['speedup_vs_host_k1']:.2f} vs host_k1")
  benchinfo.finish(record, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
