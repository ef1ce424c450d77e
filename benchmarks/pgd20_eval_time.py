"""Time of the test-set PGD-20 evaluation (natural + PGD-20 accuracy on 10,000 CIFAR-10 test images).

saat_jax: ``saat_jax.evaluators.RobustnessEvaluator``, the evaluator training runs every epoch
(l_inf, eps 8/255, alpha 2/255, 20 steps, one uniform random start, BatchNorm on running
statistics), timed twice: the first run includes compilation, the second is the compiled one.
PyTorch reference (when torch is installed): Rice et al.'s test loop, as the released SAAT code
runs it (``model.eval()``, ``attack_pgd(model, X, y, 8/255, 2/255, 20, 1)``, then the robust and
the natural forward passes), on the same weights, exported with ``saat_jax.models.torch_export``.

The network is a run's ``last`` checkpoint (``--workdir``; e.g. the GPU suite's 3-epoch SAAT run),
or a freshly initialised ``--model`` when no work dir is given.

  python benchmarks/pgd20_eval_time.py --workdir runs/saat --out benchmarks/results/pgd20_eval_time.json
  python benchmarks/pgd20_eval_time.py --model preact_resnet18 --n 500          # untrained, quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchinfo  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default=None, help="a training run whose 'last' checkpoint is evaluated")
  ap.add_argument("--model", default="preact_resnet18", help="without --workdir: a fresh model of this name")
  ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
  ap.add_argument("--cache-dir", default=None, help="decoded-array cache (default saat_jax's)")
  ap.add_argument("--n", type=int, default=10_000, help="test images (the first N)")
  ap.add_argument("--batch-size", type=int, default=500, help="saat_jax's eval batch (config eval.batch_size)")
  ap.add_argument("--torch-batch-size", type=int, default=None, help="the reference's batch (default: the same)")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--torch-device", default=None)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  warnings.filterwarnings("ignore", category=DeprecationWarning)

  want_torch = not args.skip_torch
  if want_torch:
    try:
      import torch
    except ImportError:
      want_torch = False
    else:
      device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
      if device.startswith("cuda"):
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

  import jax

  from saat_jax.data import load_dataset
  from saat_jax.evaluators import RobustnessEvaluator
  from saat_jax.models import create_model, init_variables

  if not os.path.exists(args.data):
    ap.error(f"no CIFAR-10 archive at {args.data!r}; pass --data")
  if args.workdir:
    from saat_jax.run_state import restore_for_eval

    model, variables, meta, _ = restore_for_eval(args.workdir, "last")
    name, norm = meta["model"]["name"], meta["model"]["normalization"]
    source = f"{args.workdir} (last, epoch {meta['epoch'] + 1})"
  else:
    name, norm = args.model, "cifar10"
    model = create_model(name, 10, normalization=norm)
    variables = init_variables(model, jax.random.key(0), (32, 32, 3))
    source = "fresh initialisation (untrained)"
  t0 = time.perf_counter()
  ds = load_dataset("cifar10", args.data, cache_dir=args.cache_dir)
  load_s = time.perf_counter() - t0
  images, labels = ds.test_images[:args.n], ds.test_labels[:args.n]
  n = len(labels)

  record = {"benchmark": "pgd20_eval_time", "created": benchinfo.now_utc(), "command": benchinfo.command_line(),
            "model": name, "normalization": norm, "weights": source, "n": n, "steps": args.steps,
            "eps_255": 8, "alpha_255": 2, "data_load_s": load_s, "device": benchinfo.device_info(),
            "versions": benchinfo.versions(), "git": benchinfo.git_state(), "threads": benchinfo.threads_info(),
            "load_before": benchinfo.loadavg()}
  ev = RobustnessEvaluator(model.apply, eps=8 / 255, alpha=2 / 255, steps=args.steps, batch_size=args.batch_size)
  runs = []
  for label in ("first (with compilation)", "second (compiled)"):
    t0 = time.perf_counter()
    acc = ev.run(variables, images, labels, jax.random.key(0))
    dt = time.perf_counter() - t0
    runs.append({"run": label, "wall_s": dt, "images_per_s": n / dt, **acc})
    print(f"saat_jax {label}: {dt:.2f} s, {n / dt:.1f} img/s, natural {acc['natural_accuracy']:.4f} "
          f"pgd{args.steps} {acc['pgd_accuracy']:.4f}", flush=True)
  record["jax"] = {"batch_size": args.batch_size, "runs": runs}

  if want_torch:
    try:
      record["torch"] = run_torch(args, name, norm, variables, images, labels, device)
    except ValueError as e:  # no PyTorch reference architecture for this model (e.g. small_cnn)
      want_torch = False
      record["torch"] = {"skipped": str(e)}
      print(f"torch reference skipped: {e}")
  if want_torch:
    t = record["torch"]
    print(f"torch ({device}): {t['wall_s']:.2f} s, {t['images_per_s']:.1f} img/s, natural "
          f"{t['natural_accuracy']:.4f} pgd{args.steps} {t['pgd_accuracy']:.4f}", flush=True)
    record["ratio_jax_compiled_over_torch"] = runs[1]["wall_s"] / t["wall_s"]
  benchinfo.finish(record, args.out)
  return 0


def run_torch(args, name, norm, variables, images, labels, device):
  import jax
  import numpy as np
  import torch

  from saat_jax.models.torch_export import export_state_dict
  from saat_jax.testing.torch_reference import build_torch_model
  from train_throughput import attack_pgd

  net = build_torch_model(name, 10, normalization=norm)
  sd = export_state_dict(jax.device_get(variables), name)
  getattr(net, "model", net).load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in sd.items()})
  net = net.to(device).eval()
  bs = args.torch_batch_size or args.batch_size
  x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y_all = torch.from_numpy(labels.astype(np.int64))
  torch.manual_seed(0)
  nat = rob = 0
  t0 = time.perf_counter()
  for s in range(0, len(labels), bs):
    X = (x_all[s:s + bs].to(device).float() / 255.)
    y = y_all[s:s + bs].to(device)
    delta = attack_pgd(net, X, y, 8 / 255., 2 / 255., args.steps, 1).detach()
    robust_output = net(torch.clamp(X + delta[:X.size(0)], min=0, max=1))
    output = net(X)
    rob += (robust_output.max(1)[1] == y).sum().item()
    nat += (output.max(1)[1] == y).sum().item()
  if device.startswith("cuda"):
    torch.cuda.synchronize()
  dt = time.perf_counter() - t0
  n = len(labels)
  return {"device": device, "batch_size": bs, "wall_s": dt, "images_per_s": n / dt,
          "natural_accuracy": nat / n, "pgd_accuracy": rob / n,
          "loop": "Rice et al. / SAAT main.py test loop: model.eval(), attack_pgd(20 iters), robust + natural forward"}


if __name__ == "__main__":
  sys.exit(main())
