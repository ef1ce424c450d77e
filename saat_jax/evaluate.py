"""Evaluation of a run's checkpoints: ``python -m saat_jax.evaluate --workdir runs/x``.

The Natural / PGD-20 / AA columns of Table 1 and accuracy against the test budget with RD (Fig. 1a).
The numbers come from :mod:`saat_jax.evaluators` (the same evaluator as training's per-epoch
evaluation) on weights restored by :mod:`saat_jax.run_state`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from saat_jax.evaluators import (RobustnessEvaluator, accuracy_order_check, autoattack_accuracy,
                                 autoattack_evaluation, robustness_disparity, sweep_pgd_schedule)
from saat_jax.run_state import restore_for_eval, run_keys


# --------------------------------------------------------------------------------------------
# Evaluation of a run: `python -m saat_jax.evaluate --workdir runs/x`
# --------------------------------------------------------------------------------------------

ATTACKS = ("natural", "pgd20", "aa")


def _parse_list(s: str, what: str, cast=float):
  try:
    return [cast(v) for v in s.split(",") if v.strip()]
  except ValueError:
    raise SystemExit(f"error: --{what} must be a comma-separated list, got {s!r}") from None


def main(argv=None) -> int:
  import argparse
  import json
  import os
  import sys

  from saat_jax import checkpointing
  from saat_jax.data import DataError

  ap = argparse.ArgumentParser(prog="python -m saat_jax.evaluate",
                               description="Natural / PGD-20 / AutoAttack accuracy of a run's checkpoints "
                                           "(Table 1), and accuracy against test budget with RD (Fig. 1a).")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--checkpoints", default="best,last", help="comma list of best,last")
  ap.add_argument("--attacks", default="natural,pgd20,aa", help=f"comma list of {','.join(ATTACKS)}")
  ap.add_argument("--eps", type=float, default=None, help="test budget in /255 (default: the run's eval.eps, 8 for CIFAR)")
  ap.add_argument("--alpha", type=float, default=None, help="PGD-20 step in /255 (default: the run's eval.alpha, 2 for CIFAR)")
  ap.add_argument("--num-test", type=int, default=0, help="first N test points (0: all)")
  ap.add_argument("--batch-size", type=int, default=None, help="default: the run's eval.batch_size")
  ap.add_argument("--aa-version", default="standard")
  ap.add_argument("--sweep", default="", help="comma list of budgets in /255 for the RD sweep, e.g. "
                  "0,2,4,6,8,10,12,14,16; 'default' for 0..16 by 2; empty: no sweep")
  ap.add_argument("--sweep-attack", default="pgd", choices=("pgd", "aa"))
  ap.add_argument("--data-dir", default=None, help="override the run's data.data_dir")
  ap.add_argument("--seed", type=int, default=None,
                  help="seed of the attacks' random starts (default: those of the run's own evaluation)")
  ap.add_argument("--weights", default="raw", choices=("raw", "ema"),
                  help="the trained weights or their EMA (runs with ema.decay > 0)")
  ap.add_argument("--out", default=None, help="JSON path (default <workdir>/eval.json)")
  args = ap.parse_args(argv)

  kinds = _parse_list(args.checkpoints, "checkpoints", str)
  attacks = _parse_list(args.attacks, "attacks", str)
  for a in attacks:
    if a not in ATTACKS:
      print(f"error: unknown attack {a!r}; choose from {', '.join(ATTACKS)}", file=sys.stderr)
      return 2
  for k in kinds:
    if k not in checkpointing.KINDS:
      print(f"error: unknown checkpoint {k!r}; choose from {', '.join(checkpointing.KINDS)}", file=sys.stderr)
      return 2
  for name in ("eps", "alpha"):
    v = getattr(args, name)
    if v is not None and not (v >= 0 if name == "eps" else v > 0):
      print(f"error: --{name} must be {'>= 0' if name == 'eps' else '> 0'} (in /255), got {v}", file=sys.stderr)
      return 2
  if args.num_test < 0:
    print(f"error: --num-test must be >= 0 (the first N test points; 0: all of them), got {args.num_test}",
          file=sys.stderr)
    return 2
  if args.batch_size is not None:
    n_dev = jax.device_count()
    if args.batch_size < 1:
      print(f"error: --batch-size must be >= 1, got {args.batch_size} (default: the run's eval.batch_size)",
            file=sys.stderr)
      return 2
    if args.batch_size % n_dev:
      lo, hi = args.batch_size // n_dev * n_dev, (args.batch_size // n_dev + 1) * n_dev
      print(f"error: --batch-size={args.batch_size} is not divisible by the {n_dev} devices; use "
            + (f"{lo} or {hi}" if lo else f"{hi}"), file=sys.stderr)
      return 2
  sweep = [0, 2, 4, 6, 8, 10, 12, 14, 16] if args.sweep == "default" else _parse_list(args.sweep, "sweep")
  if any(not e >= 0 for e in sweep):
    print(f"error: --sweep budgets must be >= 0, got {sweep}", file=sys.stderr)
    return 2
  if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
    print(f"error: no checkpoint in {args.workdir} (expected {args.workdir}/checkpoints/{{best,last}}); "
          "train first with launch.py --workdir", file=sys.stderr)
    return 2

  try:
    report = evaluate_run(args.workdir, kinds=kinds, attacks=attacks,
                          eps=None if args.eps is None else args.eps / 255,
                          alpha=None if args.alpha is None else args.alpha / 255,
                          num_test=args.num_test, batch_size=args.batch_size, aa_version=args.aa_version,
                          sweep=sweep, sweep_attack=args.sweep_attack, data_dir=args.data_dir,
                          seed=args.seed, progress=True, weights=args.weights)
  except (checkpointing.CheckpointError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.workdir, "eval.json")
  with open(out, "w") as f:
    json.dump(report, f, indent=2)
  print(format_table(report))
  if sweep:
    png = os.path.splitext(out)[0] + "_sweep.png"
    plot_sweep(report, png)
    print(f"sweep plot: {png}")
  print(f"written: {out}")
  return 0


def evaluate_run(workdir, *, kinds=("best", "last"), attacks=("natural", "pgd20", "aa"), eps=None, alpha=None,
                 num_test=0, batch_size=None, aa_version="standard", sweep=(), sweep_attack="pgd",
                 data_dir=None, seed=0, progress=False, weights="raw") -> dict:
  """Evaluate checkpoints of a run; returns a JSON-able report (see ``format_table``).

  ``eps``/``alpha`` default to the run's own ``eval.eps``/``eval.alpha``, and PGD starts from the
  same random points as the per-epoch evaluation of training, so PGD-20 here repeats those numbers.
  """
  from tqdm.auto import tqdm

  from saat_jax.data import load_dataset

  report = {"workdir": workdir, "checkpoints": {}, "sweep_attack": sweep_attack, "weights": weights}
  data = None
  for kind in kinds:
    model, variables, meta, cfg = restore_for_eval(workdir, kind, weights)
    if data is None:
      eps = float(cfg.eval.eps) if eps is None else eps
      alpha = float(cfg.eval.alpha) if alpha is None else alpha
      batch_size = int(cfg.eval.batch_size) if batch_size is None else batch_size
      report["eps_255"], report["alpha_255"] = eps * 255, alpha * 255
      key = jax.random.fold_in(run_keys(int(cfg.seed))[2], 0) if seed is None else jax.random.key(seed)
      data = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, source=cfg.data.source)
      n = num_test or len(data.test_labels)
      images, labels = data.test_images[:n], data.test_labels[:n]
    logits_fn = jax.jit(lambda x, v=variables, m=model: m.apply(v, x, train=False))
    row = {"epoch": meta["epoch"] + 1, "num_test": int(len(labels))}
    todo = [a for a in attacks]
    bar = tqdm(total=len(todo) + len(sweep), desc=f"{kind}", disable=not progress, leave=False)
    if "natural" in todo or "pgd20" in todo:
      acc = RobustnessEvaluator(model.apply, eps=eps, alpha=alpha, steps=20, batch_size=batch_size).run(
          variables, images, labels, key)
      for attack, name in (("natural", "natural_accuracy"), ("pgd20", "pgd_accuracy")):
        if attack in todo:
          row[attack] = acc[name]
          bar.update(1)
    if "aa" in todo:
      aa = autoattack_evaluation(logits_fn, images, labels, eps=eps, version=aa_version, seed=seed or 0,
                                 batch_size=batch_size)
      row["aa"], row["checks"] = aa["accuracy"], aa["checks"]
      bar.update(1)
    row.setdefault("checks", []).append(accuracy_order_check(row, num_points=len(labels)))
    if sweep:
      accs = []
      for e255 in sweep:
        if sweep_attack == "aa":
          acc = autoattack_accuracy(logits_fn, images, labels, eps=e255 / 255, version=aa_version,
                                    seed=seed or 0, batch_size=batch_size)
        else:
          sweep_alpha, steps = sweep_pgd_schedule(e255)
          acc = RobustnessEvaluator(model.apply, eps=e255 / 255, alpha=sweep_alpha, steps=steps,
                                    batch_size=batch_size).run(variables, images, labels, key)["pgd_accuracy"]
        accs.append(acc)
        bar.update(1)
      row["sweep"] = {"eps_255": list(sweep), "accuracy": accs}
      if 0 in sweep and any(e > 0 for e in sweep):
        row["rd"] = robustness_disparity(sweep, accs)
    bar.close()
    report["checkpoints"][kind] = row
  return report


def format_table(report: dict) -> str:
  """Table 1's layout: one row per checkpoint, accuracies in percent."""
  cols = [c for c in ("natural", "pgd20", "aa", "rd") if any(c in r for r in report["checkpoints"].values())]
  names = {"natural": "Natural", "pgd20": "PGD-20", "aa": "AA", "rd": "RD"}
  head = f"{'checkpoint':<12}{'epoch':>6}" + "".join(f"{names[c]:>10}" for c in cols)
  units = "accuracies in %" + (", RD in % of accuracy lost per 1/255 of budget (Sec. 3.1)" if "rd" in cols else "")
  lines = [f"eps = {report['eps_255']:.3g}/255; {units}", head, "-" * len(head)]
  for kind, r in report["checkpoints"].items():
    # RD is computed from fractions (accuracy lost per 1/255); shown, as the accuracies, in %.
    cells = "".join(f"{100 * r[c]:>10.2f}" if c in r else f"{'-':>10}" for c in cols)
    lines.append(f"{kind:<12}{r['epoch']:>6}" + cells)
  return "\n".join(lines)


def plot_sweep(report: dict, path: str) -> None:
  """Accuracy against test budget per checkpoint, like Figure 1(a)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.6))
  for kind, r in report["checkpoints"].items():
    if "sweep" not in r:
      continue
    label = f"{kind} (RD {100 * r['rd']:.2f} %/(1/255))" if "rd" in r else kind
    ax.plot(r["sweep"]["eps_255"], 100 * np.asarray(r["sweep"]["accuracy"]), marker="o", label=label)
  ax.set_xlabel("test budget eps (/255)")
  ax.set_ylabel(f"accuracy under {report['sweep_attack'].upper()} (%)")
  ax.set_title(os.path.basename(os.path.normpath(report["workdir"])))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  raise SystemExit(main())
