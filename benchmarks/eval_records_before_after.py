"""Train short digits runs and dump their metrics.jsonl records (timing/rss fields dropped) as JSON.
usage: PYTHONPATH=<checkout> python3 run.py OUT.json"""
import json, os, sys, tempfile
import jax
jax.config.update("jax_platforms", "cpu")
import saat_jax
from saat_jax.config_base import digits_config
from saat_jax.train import train_and_evaluate

DROP = {"train_time_s", "eval_time_s", "host_rss_mb", "compiles"}
out = {"saat_jax": saat_jax.__file__}
for name, over in (("at", {"ema.decay": 0.9, "data.val_size": 64}), ("saat_up", {})):
  c = digits_config(name)
  c.progress = False
  c.num_epochs = 2
  c.data.num_train = 256
  c.eval.num_test = 100
  c.eval.batch_size = 64
  c.eval.train_subset = 64
  for k, v in over.items():
    sec, key = k.split(".")
    c[sec][key] = v
  wd = tempfile.mkdtemp()
  train_and_evaluate(c, wd)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    recs = [json.loads(l) for l in f if l.strip()]
  out[name] = [{k: v for k, v in r.items() if k not in DROP} for r in recs]
with open(sys.argv[1], "w") as f:
  json.dump(out, f, indent=1)
print("wrote", sys.argv[1])
