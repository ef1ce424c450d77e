"""The report of runs, everything read and checked before anything is written
(:func:`report_runs`), and its command line ``python -m saat_jax.report``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable, Sequence

import numpy as np

from saat_jax.paper import FIGURES
from saat_jax.report.figures import (acc_vs_eps_data, all_groups, gen_gap_data, metric_series, plot_acc_vs_eps,
                                     plot_budget, plot_curves, plot_gen_gap, plot_rd_capacity, plot_sweep,
                                     rd_capacity_data, run_labels, sweep_data)
from saat_jax.report.runs import (ReportError, Run, checkpoint_numbers, config_get, find_run_dirs,
                                  load_run, metric_name, run_data_format, run_data_note, run_dataset,
                                  run_eps_max_255, run_method, run_model, run_rho, run_row_id, stale_numbers,
                                  unique_names, uses_sa_pgd)
from saat_jax.report.tables import OLDER_MARK, STD_NOTE, build_table, format_latex, format_markdown, group_runs

def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr)


def describe_stale(run: Run, s: dict) -> str:
  """The warning for numbers of an older checkpoint (an entry of :func:`stale_numbers`)."""
  names = lambda keys: "/".join("the eps sweep and its RD" if k == "sweep" else metric_name(k) for k in keys)
  shown = []
  if s["marked"]:
    shown.append(f"{names(s['marked'])} are shown marked {OLDER_MARK} (older checkpoint)")
  if s["replaced"]:
    shown.append(f"{names(s['replaced'])} are the epoch-{s['epoch']} numbers of metrics.jsonl")
  epochs = ", ".join(map(str, s["measured_epochs"]))
  why = ("it trained on after the evaluation" if max(s["measured_epochs"]) < s["epoch"]
         else "metrics.jsonl ends before that epoch: was the run restarted from an earlier checkpoint?")
  return (f"{run.dir}: {', '.join(s['files'])} measured the {s['kind']} checkpoint at epoch {epochs}, but the run's "
          f"{s['kind']} checkpoint is now epoch {s['epoch']} ({why}): "
          f"{'; '.join(shown)}. Measure them again with: {s['command']}")


def _describe_unfinished(run: Run) -> str:
  return f"{run.dir} ({len(run.metrics)} of {run.num_epochs} epochs in metrics.jsonl)"


def report_runs(run_dirs: Sequence[str], out_dir: str, *, log: Callable[[str], None] = _stderr) -> dict:
  """Tables and figures of the finished runs among ``run_dirs`` into ``out_dir``; returns the
  report (also written as ``report.json``). Raises :class:`ReportError` on bad input, before
  anything is written."""
  if not run_dirs:
    raise ReportError("no run directory given; pass the --workdir of each run (or a folder holding runs)")
  warnings: list[str] = []

  def warn(msg):
    warnings.append(msg)
    log(f"warning: {msg}")

  skipped_paths: list[dict] = []
  dirs = find_run_dirs(run_dirs, skipped_paths)
  of_runs: dict[str, list[str]] = {}
  for sk in skipped_paths:
    if "of_run" in sk:  # runs/digits/* lists the run's own files: one line for them
      of_runs.setdefault(sk["of_run"], []).append(os.path.basename(sk["path"]))
    else:
      warn(f"skipped {sk['path']}: {sk['reason']}")
  for run_dir, names in of_runs.items():
    warn(f"skipped {', '.join(names)} in {run_dir}: files of the run {run_dir}, not run directories (pass "
         f"{run_dir} itself to report that run)")
  runs = [load_run(d, warn) for d in dirs]
  skipped = [r for r in runs if not r.finished]
  for r in skipped:
    warn(f"skipping unfinished run {_describe_unfinished(r)}")
  runs = [r for r in runs if r.finished]
  if not runs:
    raise ReportError("no finished run in " + ", ".join(_describe_unfinished(r) for r in skipped)
                      + "; train them to the end (launch.py resumes from the last checkpoint)")
  for r, name in zip(runs, unique_names([r.dir for r in runs])):
    r.name = name
  for r, label in zip(runs, run_labels(runs)):
    r.label = label
  grouped = group_runs(runs, warn)
  numbers = {r.name: checkpoint_numbers(r) for r in runs}
  stale = {r.name: stale_numbers(r, numbers[r.name]) for r in runs}
  for r in runs:
    for entry in stale[r.name]:
      warn(describe_stale(r, entry))
  tables = [build_table(t, gs, numbers) for t, gs in grouped.items()]

  # Everything was read and checked; now write.
  os.makedirs(out_dir, exist_ok=True)
  written, skipped_figs, figures = [], {}, {}

  def out(name):
    p = os.path.join(out_dir, name)
    written.append(p)
    return p

  with open(out("table.md"), "w") as f:
    f.write(format_markdown(tables))
  with open(out("table.tex"), "w") as f:
    f.write(format_latex(tables))
  for r in runs:
    figures[f"curves_{r.name}.png"] = plot_curves(r, numbers[r.name], out(f"curves_{r.name}.png"))
    name = f"budget_{r.name}.png"
    if not uses_sa_pgd(run_method(r)):
      continue
    if metric_series(r.metrics, "attack_eps_q50") is None and metric_series(r.metrics, "attack_eps_mean") is None:
      skipped_figs[name] = "metrics.jsonl has no attack_eps_* statistics"
      continue
    figures[name] = plot_budget(r, out(name))

  gap = gen_gap_data(runs)
  if gap is None:
    skipped_figs["gen_gap.png"] = ("needs SAAT runs with two or more values of rho (same method, network and "
                                   "eps_max) whose metrics.jsonl has trainsub_pgd_accuracy")
  else:
    plot_gen_gap(gap, out("gen_gap.png"))
    figures["gen_gap.png"] = gap
  rdc = rd_capacity_data(grouped, numbers)
  if rdc is None:
    skipped_figs["rd_capacity.png"] = "needs WRN-34-x runs of two or more widths with an eval.json sweep (RD)"
  else:
    plot_rd_capacity(rdc, out("rd_capacity.png"))
    figures["rd_capacity.png"] = rdc
  acc = acc_vs_eps_data(all_groups(grouped), numbers)
  if acc is None:
    skipped_figs["acc_vs_eps.png"] = ("no eval.json sweep; run python -m saat_jax.evaluate --workdir RUN "
                                      "--eval.sweep=default")
  else:
    plot_acc_vs_eps(acc, out("acc_vs_eps.png"), "Accuracy against test budget (Fig. 1(a))")
    figures["acc_vs_eps.png"] = acc
  for t in tables:
    if t["name"] not in FIGURES:
      continue
    fid = t["name"]
    items = [(fid, g) for g in grouped[fid]]
    d = acc_vs_eps_data(items, numbers) if len(items) > 1 else None
    if d is None:
      skipped_figs[f"acc_vs_eps_{fid}.png"] = "needs two or more settings of the sweep with an eval.json sweep"
    else:
      plot_acc_vs_eps(d, out(f"acc_vs_eps_{fid}.png"), FIGURES[fid].title.split(":")[0])
      figures[f"acc_vs_eps_{fid}.png"] = d
    s = sweep_data(t)
    if s is None:
      skipped_figs[f"sweep_{fid}.png"] = f"needs runs at two or more values of {FIGURES[fid].x_name}"
    else:
      plot_sweep(t, s, out(f"sweep_{fid}.png"))
      figures[f"sweep_{fid}.png"] = s

  report = {
      "units": {"accuracy": "%", "eps": "/255", "rd": "% of accuracy lost per 1/255 of test budget (Sec. 3.1)",
                "epoch": "1-based"},
      "std": STD_NOTE,
      "runs": {r.name: {"dir": r.dir, "row": run_row_id(r), "seed": config_get(r.config, "seed"),
                        "dataset": run_dataset(r), "method": run_method(r), "model": run_model(r),
                        "rho": run_rho(r), "eps_max_255": run_eps_max_255(r), "num_epochs": r.num_epochs,
                        "eval_files": r.eval_files, "data_format": run_data_format(r), "data_note": run_data_note(r),
                        "checkpoints": numbers[r.name], "older_evaluations": stale[r.name]} for r in runs},
      "skipped_runs": [{"dir": r.dir, "reason": f"unfinished: {len(r.metrics)} of {r.num_epochs} epochs"}
                       for r in skipped],
      "skipped_paths": skipped_paths,
      "warnings": warnings,
      "tables": {t["name"]: t for t in tables},
      "figures": figures,
      "skipped_figures": skipped_figs,
  }
  report["files"] = written + [os.path.join(out_dir, "report.json")]
  report = _json_clean(report)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, allow_nan=False)
  return report


def _json_clean(obj):
  """NaN -> None, tuples -> lists, numpy scalars -> Python: strict JSON."""
  if isinstance(obj, dict):
    return {str(k): _json_clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_clean(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if math.isnan(obj) or math.isinf(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      prog="python -m saat_jax.report",
      description="Tables (Markdown, LaTeX) and figures of finished runs beside the paper's numbers: Table 1-3 "
                  "rows grouped by config.experiment.row, seeds averaged; learning curves, SA-PGD budgets, "
                  "robust generalisation gap, RD against capacity, accuracy against test budget.")
  ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                  help="run directories (launch.py --workdir), or folders holding them")
  ap.add_argument("--out", required=True, help="output directory (created)")
  args = ap.parse_args(argv)
  try:
    report = report_runs(args.run_dirs, args.out)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_markdown(list(report["tables"].values())))
  print("written:")
  for p in report["files"]:
    print(f"  {p}")
  if report["skipped_figures"]:
    print("skipped figures:")
    for name, why in report["skipped_figures"].items():
      print(f"  {name}: {why}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
