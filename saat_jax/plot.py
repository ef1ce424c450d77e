"""Pictures of runs, finished or still training: ``python -m saat_jax.plot --workdir runs/x [runs/y ...]``.

For each run, into ``<workdir>/plots/`` (or ``--out``/``<run name>``):

* ``curves.png``: train and test, natural and PGD-20 accuracy per epoch, best and last marked
  (:func:`saat_jax.report.plot_curves`, Fig. 1(c)/3(c));
* ``loss_lr.png``: the training loss (the method's outer loss on its adversarial examples) and the
  learning rate per epoch, with the epoch time (train and evaluation) beside;
* ``budget.png`` (runs whose adversary is SA-PGD): quantile bands of the per-example budget eps per
  epoch, the fraction reaching ``loss >= rho`` and the mean number of PGD steps
  (:func:`saat_jax.report.plot_budget`).

With several runs, ``compare.png`` in ``--out`` (default: the first run's ``plots/``) overlays their
test natural and PGD-20 accuracy. The paper's tables are :mod:`saat_jax.report`'s job.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from saat_jax import report
from saat_jax.report import ReportError


def load(run_dir: str) -> report.Run:
  """A run with at least one finished epoch, or :class:`ReportError` saying what is missing."""
  if not os.path.isdir(run_dir):
    raise ReportError(f"{run_dir} is not a directory; pass the --workdir of a run (launch.py --workdir)")
  if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
    raise ReportError(f"{run_dir} has no metrics.jsonl: nothing to plot. Is it a run's --workdir? A run "
                      "writes metrics.jsonl after its first epoch")
  path = os.path.join(run_dir, "metrics.jsonl")
  with open(path, errors="replace") as f:
    if not any(line.strip() for line in f):
      raise ReportError(f"{path} has no epoch yet: nothing to plot; plot again after the first epoch")
  run = report.load_run(run_dir)
  run.name = os.path.basename(os.path.normpath(run_dir))
  run.label = report.run_label(run)
  return run


def plot_loss_lr(run: report.Run, path: str) -> dict:
  """Training loss, learning rate (log scale) and seconds per epoch (train, evaluation)."""
  plt = report.pyplot()
  ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
  loss, lr = report.metric_series(run.metrics, "train_loss"), report.metric_series(run.metrics, "lr")
  t_train = report.metric_series(run.metrics, "train_time_s")
  t_eval = report.metric_series(run.metrics, "eval_time_s")
  data = {"epoch": ep.tolist()}
  with plt.rc_context(report.RC):
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if loss is not None:
      report.plot_series(ax, ep, loss, color="C3", lw=1.6, label="training loss (outer loss, adversarial inputs)")
      data["train_loss"] = loss.tolist()
    ax.set_ylabel("training loss")
    ax.set_title(f"{report.run_title(run)}: loss and learning rate")
    ax.grid(alpha=0.3)
    handles = list(ax.get_legend_handles_labels()[0])
    if lr is not None and np.nanmax(lr) > 0:
      ax_lr = ax.twinx()
      # a record's lr is the one of its epoch's steps: constant over that epoch
      handles += ax_lr.plot(ep, lr, color="k", ls="--", lw=1.3, drawstyle="steps-pre", label="learning rate")
      ax_lr.set_yscale("log")
      ax_lr.set_ylabel("learning rate")
      data["lr"] = lr.tolist()
    for y, label, color in ((t_train, "training", "C0"), (t_eval, "evaluation", "C1")):
      if y is not None:
        handles += ax2.plot(ep, y, color=color, lw=1.4, label=f"seconds per epoch: {label}")
        data[f"{label}_time_s"] = y.tolist()
    ax2.set_ylabel("seconds per epoch")
    ax2.set_xlabel("epoch")
    report.integer_x(ax2)
    ax2.grid(alpha=0.3)
    if handles:  # under the figure: the twin axes' curves cannot cross it
      report.legend_below(fig, handles, ncol=2)
    report.save_figure(fig, path)
  return data


def plot_compare(runs: Sequence[report.Run], path: str) -> dict:
  """Test natural (dashed) and PGD-20 (solid) accuracy of several runs per epoch; each run its own
  colour and marker (:func:`saat_jax.report.series_styles`), named by its label."""
  from matplotlib.lines import Line2D

  plt = report.pyplot()
  data = {}
  with plt.rc_context(report.RC):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    handles = []
    for style, run in zip(report.series_styles(len(runs), linestyles=False), runs):
      ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
      pre = report.metrics_prefix(run)
      for key, ls in ((f"{pre}test_pgd_accuracy", "-"), (f"{pre}test_natural_accuracy", "--")):
        y = report.metric_series(run.metrics, key, 100)
        if y is not None:
          report.plot_series(ax, ep, y, ls=ls, lw=1.5, ms=5, **style)
          data[f"{run.name}/{key}"] = y.tolist()
      handles.append(Line2D([], [], lw=1.5, ms=5, label=run.label or run.name, **style))
    data["labels"] = [h.get_label() for h in handles]
    handles += [Line2D([], [], color="k", ls="-", label="PGD-20"), Line2D([], [], color="k", ls="--", label="natural")]
    ax.set_xlabel("epoch")
    report.integer_x(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy: PGD-20 (solid), natural (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), framealpha=0.9,
              fontsize=8 if len(handles) > 10 else 9)
    report.save_figure(fig, path)
  return data


def plot_runs(run_dirs: Sequence[str], out: Optional[str] = None) -> list[str]:
  """Draw every run's figures (all runs are read and checked before anything is written); returns
  the PNG paths written."""
  if not run_dirs:
    raise ReportError("no run given; pass --workdir RUN [RUN ...]")
  runs = [load(d) for d in run_dirs]
  for run, label in zip(runs, report.run_labels(runs)):
    run.label = label
  written = []
  for run in runs:
    where = os.path.join(out, run.name) if out and len(runs) > 1 else (out or os.path.join(run.dir, "plots"))
    os.makedirs(where, exist_ok=True)
    report.plot_curves(run, report.checkpoint_numbers(run), os.path.join(where, "curves.png"))
    plot_loss_lr(run, os.path.join(where, "loss_lr.png"))
    written += [os.path.join(where, "curves.png"), os.path.join(where, "loss_lr.png")]
    if (report.uses_sa_pgd(report.run_method(run))
        and report.metric_series(run.metrics, "attack_eps_q50") is not None):
      report.plot_budget(run, os.path.join(where, "budget.png"))
      written.append(os.path.join(where, "budget.png"))
  if len(runs) > 1:
    where = out or os.path.join(runs[0].dir, "plots")
    os.makedirs(where, exist_ok=True)
    plot_compare(runs, os.path.join(where, "compare.png"))
    written.append(os.path.join(where, "compare.png"))
  return written


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m saat_jax.plot", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", nargs="+", required=True, metavar="RUN", help="run work dirs (launch.py --workdir)")
  ap.add_argument("--out", default=None, help="output folder (default: <workdir>/plots of each run)")
  args = ap.parse_args(argv)
  try:
    paths = plot_runs(args.workdir, args.out)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("written:\n" + "\n".join(f"  {p}" for p in paths))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
