"""Evaluation: natural and PGD-k accuracy of a model on a split (the Natural / PGD-20 columns).

PGD-20 follows the released SAAT code and Rice et al. (2020): l_inf, eps 8/255, step 2/255, one
uniform random start, BatchNorm on running averages (``train=False``).
"""

from __future__ import annotations

import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saat_jax import parallel
from saat_jax.attack import pgd
from saat_jax.input_pipeline import to_float
from saat_jax.losses import ce_loss_fn, correct


def make_eval_step(apply_fn: Callable, *, eps: float, alpha: float, steps: int, restarts: int = 1):
  """``eval_step(variables, images_u8, labels, mask, key) -> (n_natural_correct, n_pgd_correct)``."""

  def eval_step(variables, images, labels, mask, key):
    x = to_float(images)
    logits_fn = lambda xa: apply_fn(variables, xa, train=False)
    nat = correct(logits_fn(x), labels) & mask
    if steps > 0 and eps > 0:
      x_adv = pgd(ce_loss_fn(logits_fn), x, labels, eps=eps, alpha=alpha, steps=steps, key=key,
                  restarts=restarts)
      rob = correct(logits_fn(x_adv), labels) & mask
    else:
      rob = nat
    return jnp.sum(nat), jnp.sum(rob)

  return eval_step


def natural_and_pgd_accuracy(eval_step, variables, images: np.ndarray, labels: np.ndarray, *,
                             batch_size: int, key: jax.Array, mesh=None) -> tuple[float, float]:
  """Accuracies over a whole split; the last batch is padded (and masked) to keep one compiled shape."""
  n = len(labels)
  if n == 0:
    return float("nan"), float("nan")
  mesh = mesh or parallel.make_mesh()
  variables = jax.device_put(variables, parallel.replicated(mesh))  # as in training: one compiled program
  nat_sum, rob_sum = 0, 0
  totals = []
  for b, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, min(start + batch_size, n))
    mask = np.zeros(batch_size, bool)
    mask[:len(idx)] = True
    pad_idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
    imgs, labs, m = parallel.shard_batch(mesh, images[pad_idx], labels[pad_idx], mask)
    totals.append(eval_step(variables, imgs, labs, m, jax.random.fold_in(key, b)))
  for nat, rob in jax.device_get(totals):
    nat_sum += int(nat)
    rob_sum += int(rob)
  return nat_sum / n, rob_sum / n


# --------------------------------------------------------------------------------------------
# Evaluation of a run: `python -m saat_jax.evaluate --workdir runs/x`
# --------------------------------------------------------------------------------------------

ATTACKS = ("natural", "pgd20", "aa")


def robustness_disparity(eps_list, accuracies) -> float:
  """RD of Sec. 3.1: ``(1/n) sum_i (A_0 - A_i) / eps_i`` over the budgets ``eps_i > 0``.

  ``accuracies[j]`` is the accuracy at ``eps_list[j]``; ``A_0`` is the one at eps 0 (natural).
  Budgets are taken in units of 1/255, as the paper writes them (eps = 8 means 8/255), so RD is
  accuracy lost per 1/255 of budget.
  """
  eps = np.asarray(eps_list, np.float64)
  acc = np.asarray(accuracies, np.float64)
  if eps.shape != acc.shape or eps.ndim != 1:
    raise ValueError("robustness_disparity: eps_list and accuracies must be 1-D and of equal length")
  zero = np.flatnonzero(eps == 0)
  if len(zero) == 0:
    raise ValueError("robustness_disparity needs the accuracy at eps = 0 (A_0)")
  pos = eps > 0
  if not pos.any():
    raise ValueError("robustness_disparity needs at least one budget eps_i > 0")
  a0 = acc[zero[0]]
  return float(np.mean((a0 - acc[pos]) / eps[pos]))


def sweep_pgd_schedule(eps_255: float) -> tuple[float, int]:
  """(alpha, steps) of the PGD used at a sweep budget, as the released SAAT code's budget sweep:
  alpha 2/255 and 2.5 steps per 1/255 of budget (PGD-20 at 8/255)."""
  return 2 / 255, max(1, int(math.ceil(2.5 * eps_255)))


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
  import time

  from tqdm.auto import tqdm

  from saat_jax import checkpointing
  from saat_jax.input_pipeline import DataError, load_dataset

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


def _restore_for_eval(workdir: str, kind: str, weights: str = "raw"):
  from saat_jax import checkpointing, train

  ck = checkpointing.RunCheckpoints(workdir)
  try:
    meta = ck.restore_meta(kind)
    model = train.model_from_spec(meta["model"])
    import ml_collections

    cfg = ml_collections.ConfigDict(meta["config"])
    image_shape = meta.get("image_shape") or ((8, 8, 1) if cfg.data.name == "digits" else (32, 32, 3))
    tx, _ = train.make_optimizer(cfg, 1)
    has_ema = float(cfg.get("ema", {}).get("decay", 0.0)) > 0
    if weights == "ema" and not has_ema:
      raise ValueError(f"{workdir} was trained without an EMA of the weights (ema.decay = 0); "
                       "evaluate its raw weights (--weights raw)")
    target = train.initial_state(model, tx, jax.random.key(0), tuple(image_shape), ema=has_ema)
    state, meta = ck.restore(kind, target)
  finally:
    ck.close()
  return model, state.ema_variables if weights == "ema" else state.variables, meta, cfg


def evaluate_run(workdir, *, kinds=("best", "last"), attacks=("natural", "pgd20", "aa"), eps=None, alpha=None,
                 num_test=0, batch_size=None, aa_version="standard", sweep=(), sweep_attack="pgd",
                 data_dir=None, seed=0, progress=False, weights="raw") -> dict:
  """Evaluate checkpoints of a run; returns a JSON-able report (see ``format_table``).

  ``eps``/``alpha`` default to the run's own ``eval.eps``/``eval.alpha``, and PGD starts from the
  same random points as the per-epoch evaluation of training, so PGD-20 here repeats those numbers.
  """
  from tqdm.auto import tqdm

  from saat_jax import train
  from saat_jax.input_pipeline import load_dataset

  report = {"workdir": workdir, "checkpoints": {}, "sweep_attack": sweep_attack, "weights": weights}
  data = None
  for kind in kinds:
    model, variables, meta, cfg = _restore_for_eval(workdir, kind, weights)
    if data is None:
      eps = float(cfg.eval.eps) if eps is None else eps
      alpha = float(cfg.eval.alpha) if alpha is None else alpha
      batch_size = int(cfg.eval.batch_size) if batch_size is None else batch_size
      report["eps_255"], report["alpha_255"] = eps * 255, alpha * 255
      key = jax.random.fold_in(train.run_keys(int(cfg.seed))[2], 0) if seed is None else jax.random.key(seed)
      data = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, source=cfg.data.source)
      n = num_test or len(data.test_labels)
      images, labels = data.test_images[:n], data.test_labels[:n]
    logits_fn = jax.jit(lambda x, v=variables, m=model: m.apply(v, x, train=False))
    row = {"epoch": meta["epoch"] + 1, "num_test": int(len(labels))}
    todo = [a for a in attacks]
    bar = tqdm(total=len(todo) + len(sweep), desc=f"{kind}", disable=not progress, leave=False)
    if "natural" in todo or "pgd20" in todo:
      step = jax.jit(make_eval_step(model.apply, eps=eps, alpha=alpha, steps=20))
      nat, rob = natural_and_pgd_accuracy(step, variables, images, labels, batch_size=batch_size, key=key)
      if "natural" in todo:
        row["natural"] = nat
        bar.update(1)
      if "pgd20" in todo:
        row["pgd20"] = rob
        bar.update(1)
    if "aa" in todo:
      row["aa"] = _aa_accuracy(logits_fn, images, labels, eps=eps, version=aa_version, seed=seed or 0,
                               batch_size=batch_size)
      bar.update(1)
    if sweep:
      accs = []
      for e255 in sweep:
        if sweep_attack == "aa":
          acc = _aa_accuracy(logits_fn, images, labels, eps=e255 / 255, version=aa_version, seed=seed or 0,
                             batch_size=batch_size)
        else:
          sweep_alpha, steps = sweep_pgd_schedule(e255)
          step = jax.jit(make_eval_step(model.apply, eps=e255 / 255, alpha=sweep_alpha, steps=steps))
          acc = natural_and_pgd_accuracy(step, variables, images, labels, batch_size=batch_size, key=key)[1]
        accs.append(acc)
        bar.update(1)
      row["sweep"] = {"eps_255": list(sweep), "accuracy": accs}
      if 0 in sweep and any(e > 0 for e in sweep):
        row["rd"] = robustness_disparity(sweep, accs)
    bar.close()
    report["checkpoints"][kind] = row
  return report


def _aa_accuracy(logits_fn, images, labels, *, eps, version, seed, batch_size) -> float:
  from saat_jax.autoattack import autoattack
  from saat_jax.input_pipeline import to_float

  res = autoattack(logits_fn, to_float(images), jnp.asarray(labels), eps=eps, version=version, seed=seed,
                   batch_size=batch_size, progress=True)
  return float(np.mean(np.asarray(res.robust)))


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
