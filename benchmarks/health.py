"""Long-run health of training: XLA compilations per epoch, host memory per epoch, time to resume.

Trains a digits run (configs/digits.py:<method>, default saat_up) for ``--epochs`` epochs in two
halves: the first half, then a resume in the same process (restore from the ``last`` checkpoint,
rebuild and recompile the step) to the end. Records from metrics.jsonl, per epoch: ``compiles``
(XLA backend compilations, evaluation included) and ``host_rss_mb``; and the resume's overhead (the
call's wall time minus its epochs' train and evaluation time).

  python benchmarks/health.py --epochs 30 --out benchmarks/results/health_digits_saat_up_30ep_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchinfo  # noqa: E402


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--method", default="saat_up", help="a method of configs/digits.py")
  ap.add_argument("--epochs", type=int, default=30)
  ap.add_argument("--out", default=None, help="JSON record path")
  args = ap.parse_args(argv)
  if args.epochs < 4:
    ap.error("--epochs must be >= 4 (two halves of at least two epochs)")

  from configs import digits
  from saat_jax.train import train_and_evaluate

  record = benchinfo.new_record("health", config=f"configs/digits.py:{args.method}", epochs=args.epochs)
  half = args.epochs // 2
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "run")
    c = digits.get_config(args.method)
    c.progress = False
    walls = []
    for n in (half, args.epochs):
      c.num_epochs = n
      t0 = time.time()
      train_and_evaluate(c, workdir)
      walls.append(time.time() - t0)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      recs = [json.loads(line) for line in f]
  second = recs[half:]
  rss = [r["host_rss_mb"] for r in recs]
  record.update(
      compiles_per_epoch=[r["compiles"] for r in recs],
      host_rss_mb_per_epoch=rss,
      compiles_after_first_epoch=sum(r["compiles"] for r in recs[1:half]) + sum(r["compiles"] for r in recs[half + 1:]),
      compiles_first_epoch_of_each_half=[recs[0]["compiles"], recs[half]["compiles"]],
      host_rss_growth_mb_epoch2_to_half=rss[half - 1] - rss[1],
      host_rss_growth_mb_resume_epoch2_to_end=rss[-1] - rss[half + 1],
      resume_overhead_s=walls[1] - sum(r["train_time_s"] + r["eval_time_s"] for r in second),
      first_half_overhead_s=walls[0] - sum(r["train_time_s"] + r["eval_time_s"] for r in recs[:half]),
      wall_s=walls)
  for k in ("compiles_after_first_epoch", "compiles_first_epoch_of_each_half", "host_rss_growth_mb_epoch2_to_half",
            "host_rss_growth_mb_resume_epoch2_to_end", "resume_overhead_s", "first_half_overhead_s"):
    print(f"{k}: {record[k]}")
  print("host RSS per epoch (MiB): " + " ".join(f"{v:.0f}" for v in rss))
  benchinfo.finish(record, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
