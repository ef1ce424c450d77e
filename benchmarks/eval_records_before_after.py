"""Per-epoch evaluation records of two short digits runs, to compare two versions of the code bit for bit.

Written for issue 20 item 1 (evaluators by config): the default ``config.evals`` must give the
records the hard-wired ``RobustnessEvaluator`` gave. Run it with each checkout first on PYTHONPATH
(e.g. ``git worktree add /tmp/before <commit>``), then compare:

  PYTHONPATH=/tmp/before python3 benchmarks/eval_records_before_after.py /tmp/before.json
  PYTHONPATH=. python3 benchmarks/eval_records_before_after.py /tmp/after.json
  python3 benchmarks/eval_records_before_after.py --compare /tmp/before.json /tmp/after.json

The runs: ``digits_config('at')`` with an EMA (ema.decay 0.9) and a validation split (64), and
``digits_config('saat_up')``; 2 epochs on 256 training digits, 100 test points in batches of 64 (a
padded last batch), 64 training points for ``trainsub``. Compared: every record field but the
timing and memory ones (train_time_s, eval_time_s, host_rss_mb, compiles), keys in order, values
exactly.
"""
import json
import os
import sys
import tempfile

DROP = {"train_time_s", "eval_time_s", "host_rss_mb", "compiles"}
RUNS = (("at", {"ema.decay": 0.9, "data.val_size": 64}), ("saat_up", {}))


def records(out_path):
  import saat_jax
  from saat_jax.config_base import digits_config
  from saat_jax.train import train_and_evaluate

  out = {"saat_jax": saat_jax.__file__}
  for name, over in RUNS:
    c = digits_config(name)
    c.update_from_flattened_dict({"progress": False, "num_epochs": 2, "data.num_train": 256, "eval.num_test": 100,
                                  "eval.batch_size": 64, "eval.train_subset": 64, **over})
    wd = tempfile.mkdtemp()
    train_and_evaluate(c, wd)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      out[name] = [{k: v for k, v in json.loads(l).items() if k not in DROP} for l in f if l.strip()]
  with open(out_path, "w") as f:
    json.dump(out, f, indent=1)
  print("wrote", out_path)


def compare(a_path, b_path) -> int:
  a, b = json.load(open(a_path)), json.load(open(b_path))
  a.pop("saat_jax"), b.pop("saat_jax")
  bad = 0
  for name in a:
    for ra, rb in zip(a[name], b[name]):
      if list(ra.items()) != list(rb.items()):
        bad += 1
        print(f"{name} epoch {ra['epoch']}: differs:", {k: (ra.get(k), rb.get(k)) for k in set(ra) | set(rb)
                                                          if ra.get(k) != rb.get(k)} or "key order")
    evals = sorted(k for k in a[name][0] if k.endswith(("natural_accuracy", "pgd_accuracy")))
    print(f"{name}: {len(a[name])} records, {len(a[name][0])} fields each; evaluation fields: {', '.join(evals)}")
  print("identical" if not bad and a.keys() == b.keys() else f"{bad} records differ")
  return int(bool(bad))


if __name__ == "__main__":
  if sys.argv[1] == "--compare":
    raise SystemExit(compare(sys.argv[2], sys.argv[3]))
  import jax
  jax.config.update("jax_platforms", "cpu")
  records(sys.argv[1])
