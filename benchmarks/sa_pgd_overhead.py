"""SA-PGD's cost against plain PGD making the same number of gradient steps.

With rho = inf every example takes all n_stages * K steps of Algorithm 1, so SA-PGD and a plain
PGD loop (``saat_jax.attack.pgd``, a ``fori_loop``) do the same signed-gradient steps on the same
model and batch; SA-PGD adds one value-and-grad pass (the clean loss of line 4) plus its masks.
The issue's target: time(SA-PGD) / time(PGD) <= 1.10. Both are timed in this run, alternately,
after compilation; the ratio of the fastest repeats is reported (the minimum is the least
disturbed by other load on the machine), with the medians beside it.

  python benchmarks/sa_pgd_overhead.py --model preact_resnet18 --batch 32 --out benchmarks/results/sa_pgd_overhead_cpu.json
"""

import argparse
import json
import platform
import statistics
import sys
import time

import jax

from saat_jax.attack import budget_schedule, pgd, sa_pgd
from saat_jax.losses import ce_loss_fn
from saat_jax.models import create_model, init_variables


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="preact_resnet18")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--eps-max", type=float, default=14.0, help="in /255")
  ap.add_argument("--tau", type=float, default=2.0, help="in /255")
  ap.add_argument("--k", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()

  model = create_model(args.model, 10, normalization="cifar10")
  variables = init_variables(model, jax.random.key(0), (32, 32, 3))
  x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)

  def logits_fn(xa):  # as during training: BatchNorm on batch statistics, running stats untouched
    return model.apply(variables, xa, train=True, mutable=["batch_stats"])[0]

  loss_fn = ce_loss_fn(logits_fn)
  eps_max, tau, alpha = args.eps_max / 255, args.tau / 255, 2 / 255
  n_steps = (len(budget_schedule(eps_max, tau)) - 1) * args.k
  run_sa = jax.jit(lambda x, y: sa_pgd(loss_fn, x, y, rho=float("inf"), eps_max=eps_max, tau=tau,
                                       k=args.k, alpha=alpha)[0])
  run_pgd = jax.jit(lambda x, y: pgd(loss_fn, x, y, eps=eps_max, alpha=alpha, steps=n_steps))

  def timed(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn(x, y))
    return time.perf_counter() - t

  timed(run_sa), timed(run_pgd)  # compile
  t_sa, t_pgd = [], []
  for _ in range(args.repeats):
    t_sa.append(timed(run_sa))
    t_pgd.append(timed(run_pgd))
  res = {
      "benchmark": "sa_pgd_overhead", "model": args.model, "batch": args.batch, "steps": n_steps,
      "sa_pgd_s_min": min(t_sa), "pgd_s_min": min(t_pgd), "ratio": min(t_sa) / min(t_pgd),
      "sa_pgd_s_median": statistics.median(t_sa), "pgd_s_median": statistics.median(t_pgd),
      "ratio_of_medians": statistics.median(t_sa) / statistics.median(t_pgd), "target_ratio": 1.10,
      "repeats": args.repeats, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "n_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
      "platform": platform.platform(), "command": " ".join(["python"] + sys.argv),
  }
  print(json.dumps(res, indent=2))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
