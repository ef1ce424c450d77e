"""Tables and figures of finished runs, beside the paper's numbers (Table 1-3, Figures 1-3).

  python -m saat_jax.report runs/at_s0 runs/at_s1 runs/saat_s0 runs/saat_s1 --out reports/table1
  python -m saat_jax.report runs/ --out reports/all        # every run directory below runs/

A run directory holds ``config.json`` and ``metrics.jsonl`` (written by ``launch.py``) and, after
``python -m saat_jax.evaluate``, ``eval.json`` (and any later ``eval*.json``: merged by file
modification time, later values winning per checkpoint and number). Runs are grouped by
``config.experiment.row`` (an id of :data:`saat_jax.paper.ROWS`) into the paper's tables; seeds of
a row are averaged. Runs not tied to a paper row go into a table ``runs``.

Written into ``--out``: ``table.md`` and ``table.tex`` (one table per paper table / figure sweep /
``runs``; cells ``mean ± std (paper)``), ``report.json`` (every number shown), and PNG figures:
``curves_<run>.png`` (Fig. 1(c)/3(c)), ``budget_<run>.png`` (SA-PGD budgets of SAAT runs),
``gen_gap.png`` (Fig. 3(d)), ``rd_capacity.png`` (Fig. 2(b)/3(e)), ``acc_vs_eps.png`` (Fig. 1(a)),
``acc_vs_eps_<figure>.png`` (Fig. 1(b), 3(a), 3(b)) and ``sweep_<figure>.png`` (accuracy and RD
against the swept hyper-parameter). A figure without data is skipped and listed, never drawn empty.
Accuracies are in %, budgets in /255, and RD (Sec. 3.1) in % of accuracy lost per 1/255 of budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from saat_jax import paper
from saat_jax.paper import FIGURES, ROWS, TABLES

KINDS = ("best", "last")
METRICS = ("natural", "pgd20", "aa")
METRIC_NAMES = {"natural": "Natural", "pgd20": "PGD-20", "aa": "AA", "rd": "RD"}
SAAT_METHODS = ("saat", "sa_trades")  # methods whose adversary is SA-PGD (Algorithm 1)
STD_NOTE = "sample standard deviation over seeds (ddof=1; no ± with a single seed)"
REQUIRED_RECORD_KEYS = ("epoch", "test_natural_accuracy", "test_pgd_accuracy", "best_epoch")
DASH = "–"


class ReportError(ValueError):
  """Bad input to the report: a missing or damaged file, no finished run, mixed data sets."""


# --------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One run directory: its config, per-epoch records and merged evaluations."""
  dir: str
  config: dict
  metrics: list
  eval: dict  # {'best'|'last': {key: {'value', 'file', 'num_test', 'epoch'}}}
  eval_files: list
  eval_meta: dict  # {'sweep_attack', 'eps_255'} of the evaluations used
  name: str = ""

  @property
  def num_epochs(self) -> int:
    return int(self.config["num_epochs"])

  @property
  def finished(self) -> bool:
    return len(self.metrics) >= self.num_epochs


def _read_json(path: str) -> dict:
  """A JSON object from ``path``; errors name the file."""
  if not os.path.isfile(path):
    raise ReportError(f"{path} is missing")
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ReportError(f"{path} is damaged ({e}); rewrite it (config.json: rerun launch.py; eval.json: "
                      "rerun python -m saat_jax.evaluate)") from None
  if not isinstance(obj, dict):
    raise ReportError(f"{path} is damaged: expected a JSON object, got {type(obj).__name__}")
  return obj


def _is_fraction(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isnan(v) or 0 <= v <= 1)


def read_metrics(path: str) -> list[dict]:
  """The records of ``metrics.jsonl``, checked: one JSON object a line, the keys the report needs,
  accuracies as fractions and epochs increasing. Errors name the file and the line."""
  if not os.path.isfile(path):
    raise ReportError(f"{path} is missing; a run directory needs the metrics.jsonl written by launch.py")
  records = []
  with open(path, errors="replace") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise ReportError(f"{path} is damaged at line {lineno} ({e}); delete the broken line(s) and "
                          "resume the run with launch.py, which rewrites metrics.jsonl") from None
      if not isinstance(r, dict):
        raise ReportError(f"{path} is damaged at line {lineno}: expected a JSON object per line")
      # epochs skipped by eval.every > 1 carry no test metrics ("evaluated": false)
      required = REQUIRED_RECORD_KEYS if r.get("evaluated", True) else ("epoch", "best_epoch")
      missing = [k for k in required if k not in r]
      if missing:
        raise ReportError(f"{path} line {lineno} lacks {', '.join(missing)}; is it a metrics.jsonl of launch.py?")
      for k in ("epoch", "best_epoch"):
        if not isinstance(r[k], int) or isinstance(r[k], bool):
          raise ReportError(f"{path} line {lineno}: {k} = {r[k]!r} is not an integer")
      for k, v in r.items():
        if k.endswith("_accuracy") and not _is_fraction(v):
          raise ReportError(f"{path} line {lineno}: {k} = {v!r} is not a fraction in [0, 1]")
      if records and r["epoch"] <= records[-1]["epoch"]:
        raise ReportError(f"{path} line {lineno}: epoch {r['epoch']} does not follow epoch "
                          f"{records[-1]['epoch']}; the file is damaged (resume the run to rewrite it)")
      records.append(r)
  return records


def _get(config: dict, dotted: str, default=None):
  """``config['a']['b']`` for ``'a.b'``; ``default`` when a level is missing."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def _check_config(config: dict, path: str) -> None:
  for key in ("seed", "num_epochs", "method", "data.name", "model.name"):
    if _get(config, key) is None:
      raise ReportError(f"{path} lacks {key}; is it the config.json written by launch.py?")
  if not isinstance(config["num_epochs"], int) or config["num_epochs"] < 1:
    raise ReportError(f"{path}: num_epochs = {config['num_epochs']!r} is not a positive integer")


def _check_eval_entry(path: str, kind: str, entry) -> None:
  if not isinstance(entry, dict):
    raise ReportError(f"{path} is damaged: checkpoints.{kind} is not an object")
  for k in METRICS:
    if k in entry and not _is_fraction(entry[k]):
      raise ReportError(f"{path}: checkpoints.{kind}.{k} = {entry[k]!r} is not a fraction in [0, 1]")
  if "rd" in entry and not isinstance(entry["rd"], (int, float)):
    raise ReportError(f"{path}: checkpoints.{kind}.rd = {entry['rd']!r} is not a number")
  if "sweep" in entry:
    s = entry["sweep"]
    ok = (isinstance(s, dict) and isinstance(s.get("eps_255"), list) and isinstance(s.get("accuracy"), list)
          and len(s["eps_255"]) == len(s["accuracy"]) and all(_is_fraction(a) for a in s["accuracy"])
          and all(isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 0 for e in s["eps_255"]))
    if not ok:
      raise ReportError(f"{path}: checkpoints.{kind}.sweep must be {{'eps_255': [...], 'accuracy': [...]}} "
                        "of equal length, budgets >= 0 and accuracies in [0, 1]")


def merge_evals(paths: Sequence[str], ref_eps_255: Optional[float], warn: Callable[[str], None],
                weights: str = "raw"):
  """Merge ``eval*.json`` files in the given order (oldest first), later values winning per
  checkpoint and key. Natural/PGD-20/AA measured at a test eps other than ``ref_eps_255`` (the
  run's ``eval.eps``) are left out with a warning; sweeps (with their own budgets) are kept. A file
  of other weights (``"weights": "ema"`` when the run reports ``raw``, or the reverse) is left out."""
  merged: dict = {}
  meta: dict = {}
  for path in paths:
    ev = _read_json(path)
    cks = ev.get("checkpoints")
    if not isinstance(cks, dict):
      raise ReportError(f"{path} is damaged: no 'checkpoints' object; rerun python -m saat_jax.evaluate")
    if ev.get("weights", "raw") != weights:
      warn(f"{path} evaluates the {ev.get('weights')} weights but the run reports its {weights} weights "
           "(eval.best_weights); left out")
      continue
    eps = ev.get("eps_255")
    other_eps = eps is not None and ref_eps_255 is not None and abs(float(eps) - ref_eps_255) > 1e-6
    for kind, entry in cks.items():
      _check_eval_entry(path, kind, entry)
      if kind not in KINDS:
        continue
      for key in (*METRICS, "sweep", "rd"):
        if key not in entry:
          continue
        if key in METRICS and other_eps:
          warn(f"{path}: {kind} {METRIC_NAMES[key]} is at eps {eps:g}/255, not the run's {ref_eps_255:g}/255; left out")
          continue
        merged.setdefault(kind, {})[key] = {"value": entry[key], "file": os.path.basename(path),
                                            "num_test": entry.get("num_test"), "epoch": entry.get("epoch")}
        if key == "sweep":
          merged[kind].pop("rd", None)  # an older rd belongs to an older sweep
          meta["sweep_attack"] = ev.get("sweep_attack", "pgd")
    if eps is not None and not other_eps:
      meta["eps_255"] = float(eps)
  return merged, meta


def _eval_paths(run_dir: str) -> list[str]:
  paths = [p for p in glob.glob(os.path.join(run_dir, "eval*.json")) if os.path.isfile(p)]
  return sorted(paths, key=lambda p: (os.path.getmtime(p), p))


def load_run(run_dir: str, warn: Callable[[str], None] = lambda s: None) -> Run:
  """Read and check ``config.json``, ``metrics.jsonl`` and ``eval*.json`` of ``run_dir``."""
  cfg_path = os.path.join(run_dir, "config.json")
  config = _read_json(cfg_path)
  _check_config(config, cfg_path)
  metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  eps = _get(config, "eval.eps")
  ref = None if eps is None else float(eps) * 255
  paths = _eval_paths(run_dir)
  ev, meta = merge_evals(paths, ref, warn, weights=str(_get(config, "eval.best_weights") or "raw"))
  return Run(dir=run_dir, config=config, metrics=metrics, eval=ev, eval_files=[os.path.basename(p) for p in paths],
             eval_meta=meta)


def find_run_dirs(paths: Sequence[str]) -> list[str]:
  """Run directories among ``paths``: a path holding config.json or metrics.jsonl is a run; any other
  directory stands for the run directories below it."""
  found: list[str] = []
  for p in paths:
    if not os.path.isdir(p):
      raise ReportError(f"{p} is not a directory; pass run directories (the --workdir of launch.py)")
    if any(os.path.exists(os.path.join(p, f)) for f in ("config.json", "metrics.jsonl")):
      found.append(p)
      continue
    below = []
    for root, dirs, files in os.walk(p):
      dirs[:] = sorted(d for d in dirs if d != "checkpoints")
      if "config.json" in files:
        below.append(root)
        dirs[:] = []
    if not below:
      raise ReportError(f"{p} holds no run: no config.json in it or below it (a run directory is the "
                        "--workdir of launch.py, with config.json and metrics.jsonl)")
    found.extend(below)
  unique, seen = [], set()
  for d in found:
    key = os.path.realpath(d)
    if key not in seen:
      seen.add(key)
      unique.append(d)
  return unique


def _unique_names(dirs: Sequence[str]) -> list[str]:
  """Short file-safe names: the directory's basename, with parents added until they are unique."""
  parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in dirs]
  depth = 1
  while True:
    names = ["_".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
      break
    depth += 1
  names = [re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("_") or "run" for n in names]
  out, used = [], {}
  for n in names:  # still equal (e.g. symlinked copies): number them
    used[n] = used.get(n, 0) + 1
    out.append(n if used[n] == 1 else f"{n}_{used[n]}")
  return out


# --------------------------------------------------------------------------------------------
# What a run is: its paper row, hyper-parameters, and the numbers of its checkpoints
# --------------------------------------------------------------------------------------------


def run_dataset(run: Run) -> str:
  return str(_get(run.config, "data.name"))


def run_method(run: Run) -> str:
  return str(_get(run.config, "method"))


def run_model(run: Run) -> str:
  return str(_get(run.config, "model.name"))


def run_awp(run: Run) -> bool:
  awp = _get(run.config, "awp")
  if isinstance(awp, dict):
    return bool(awp.get("enabled", (awp.get("gamma") or 0) > 0))
  return bool(awp) or run_method(run).startswith("awp")


def run_rho(run: Run) -> Optional[float]:
  v = _get(run.config, "saat.rho")
  return float(v) if run_method(run) in SAAT_METHODS and v is not None else None


def run_eps_max_255(run: Run) -> Optional[float]:
  v = _get(run.config, "saat.eps_max")
  return float(v) * 255 if run_method(run) in SAAT_METHODS and v is not None else None


def metrics_prefix(run: Run) -> str:
  """``'ema_'`` when the run picks ``best`` by its EMA weights (``eval.best_weights = 'ema'``) and
  metrics.jsonl has ``ema_test_*``; the report then shows those weights throughout."""
  ema = _get(run.config, "eval.best_weights") == "ema"
  return "ema_" if ema and any("ema_test_pgd_accuracy" in r for r in run.metrics) else ""


def run_row_id(run: Run) -> Optional[str]:
  row = _get(run.config, "experiment.row")
  return str(row) if row else None


def wrn_width(model: str) -> Optional[tuple[int, int]]:
  """``(depth, width)`` of a Wide ResNet name such as ``wrn34_10``; ``None`` for other models."""
  m = re.fullmatch(r"(?:wrn|wide_resnet)_?(\d+)_(\d+)", model.lower().replace("-", "_"))
  return (int(m.group(1)), int(m.group(2))) if m else None


def run_key(run: Run) -> str:
  """A label grouping seeds of one setting among runs not tied to a paper row."""
  method = run_method(run)
  prefix = "AWP-" if run_awp(run) and not method.startswith("awp") else ""
  if method in SAAT_METHODS and run_rho(run) is not None and run_eps_max_255(run) is not None:
    hp = f" (eps_max={run_eps_max_255(run):g}, rho={run_rho(run):g})"
  elif method in ("trades", "at") and _get(run.config, f"{method}.eps") is not None:
    hp = f" (eps={float(_get(run.config, f'{method}.eps')) * 255:.3g})"
  else:
    hp = ""
  return f"{prefix}{method}{hp}, {run_model(run)}"


def percent_rd(sweep: dict) -> Optional[float]:
  """RD of Sec. 3.1 from a sweep, in % of accuracy per 1/255; ``None`` without eps 0 and eps > 0."""
  from saat_jax.evaluate import robustness_disparity

  eps = np.asarray(sweep["eps_255"], np.float64)
  if not ((eps == 0).any() and (eps > 0).any()):
    return None
  return robustness_disparity(eps, 100 * np.asarray(sweep["accuracy"], np.float64))


def checkpoint_numbers(run: Run) -> dict:
  """``{kind: {'epoch', 'natural'|'pgd20'|'aa'|'rd': {'value' (%), 'source'}, 'sweep'}}``.

  eval.json values win; otherwise Natural/PGD-20 come from metrics.jsonl (best: the record at the
  final ``best_epoch``, last: the final record) and AA is absent.
  """
  final = run.metrics[-1]
  by_epoch = {r["epoch"]: r for r in run.metrics}
  best_rec = by_epoch.get(final["best_epoch"])
  if best_rec is None:
    raise ReportError(f"{os.path.join(run.dir, 'metrics.jsonl')}: best_epoch {final['best_epoch']} has no "
                      "record; the file is damaged (resume the run to rewrite it)")
  out = {}
  pre = metrics_prefix(run)
  for kind, rec in (("best", best_rec), ("last", final)):
    ev = run.eval.get(kind, {})
    nums: dict = {"epoch": rec["epoch"] + 1}
    for key, mkey in (("natural", f"{pre}test_natural_accuracy"), ("pgd20", f"{pre}test_pgd_accuracy"), ("aa", None)):
      if key in ev:
        e = ev[key]
        nums[key] = {"value": 100 * float(e["value"]), "source": e["file"], "num_test": e["num_test"]}
        if e.get("epoch") is not None:
          nums["epoch"] = int(e["epoch"])
      elif mkey is not None and rec.get(mkey) is not None:
        nums[key] = {"value": 100 * float(rec[mkey]), "source": "metrics.jsonl", "num_test": None}
    if "sweep" in ev:
      sweep = ev["sweep"]["value"]
      nums["sweep"] = {"eps_255": [float(e) for e in sweep["eps_255"]],
                       "accuracy": [100 * float(a) for a in sweep["accuracy"]], "source": ev["sweep"]["file"]}
      rd = percent_rd(sweep)
      if rd is not None:
        nums["rd"] = {"value": rd, "source": ev["sweep"]["file"], "num_test": ev["sweep"]["num_test"]}
    elif "rd" in ev:
      nums["rd"] = {"value": 100 * float(ev["rd"]["value"]), "source": ev["rd"]["file"], "num_test": None}
    out[kind] = nums
  return out


# --------------------------------------------------------------------------------------------
# Grouping runs into tables
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Group:
  """The seeds of one setting (a paper row or a ``run_key``) in one table."""
  key: str
  label: str
  row: Optional[paper.Row]
  x: Optional[float] = None
  runs: list = dataclasses.field(default_factory=list)


TABLE_TITLES = {
    "table1": "Table 1: CIFAR-10, PreAct ResNet-18, Natural / PGD-20 / AA accuracy (%), best and last checkpoints",
    "table2": "Table 2: best checkpoint, across data sets, networks and AT methods",
    "table3": "Table 3: last checkpoint, across data sets, networks and AT methods",
    "runs": "Runs not tied to a paper row",
}


def _table_of_kinds(table: str) -> tuple[str, ...]:
  return {"table2": ("best",), "table3": ("last",)}.get(table, KINDS)


def group_runs(runs: Sequence[Run], warn: Callable[[str], None]) -> dict[str, list[Group]]:
  """Tables (paper tables, figure sweeps, ``runs``) -> groups of seeds, in the paper's order."""
  groups: dict[str, dict[str, Group]] = {}

  def add(table, key, label, row, run, x=None):
    g = groups.setdefault(table, {}).setdefault(key, Group(key, label, row, x))
    g.runs.append(run)

  for run in runs:
    row_id = run_row_id(run)
    row = None
    if row_id is not None:
      try:
        row = paper.get_row(row_id)
      except ValueError as e:
        raise ReportError(f"{os.path.join(run.dir, 'config.json')}: experiment.row: {e}") from None
      if row.dataset != run_dataset(run):
        warn(f"{run.dir}: trained on {run_dataset(run)} but paper row {row_id!r} is a {row.dataset} row; "
             "reported in table 'runs', without the paper's numbers")
        row = None
    if row is None:
      key = run_key(run)
      label = _get(run.config, "experiment.label")  # the config's own name, e.g. "digits saat_up"
      add("runs", key, f"{label}: {key}" if label else key, None, run)
      continue
    for t in paper.tables_of(row.id):
      add(t, row.id, row.label, row, run)
    fig = paper.figure_of(row.id)
    if fig is not None:
      add(fig[0], row.id, row.label, row, run, x=fig[1])

  order = [*paper.TABLE_NAMES, *FIGURES, "runs"]
  out: dict[str, list[Group]] = {}
  for table in order:
    if table not in groups:
      continue
    gs = list(groups[table].values())
    if table in TABLES:
      gs.sort(key=lambda g: TABLES[table].index(g.key))
    elif table in FIGURES:
      gs.sort(key=lambda g: g.x)
    else:
      gs.sort(key=lambda g: g.key)
    _check_one_dataset(table, gs)
    for g in gs:
      seeds = [_get(r.config, "seed") for r in g.runs]
      dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
      if dup:
        warn(f"table {table}, {g.label}: seed(s) {', '.join(map(str, dup))} appear in more than one run "
             f"({', '.join(r.dir for r in g.runs)}); copies of one run?")
    out[table] = gs
  return out


def _check_one_dataset(table: str, groups: Sequence[Group]) -> None:
  """One data set per table, except Tables 2/3 whose paper layout has a Dataset column."""
  if table in ("table2", "table3"):
    return
  by_ds: dict[str, list[str]] = {}
  for g in groups:
    for r in g.runs:
      by_ds.setdefault(run_dataset(r), []).append(r.dir)
  if len(by_ds) > 1:
    parts = "; ".join(f"{ds}: {', '.join(dirs)}" for ds, dirs in sorted(by_ds.items()))
    raise ReportError(f"runs of different data sets in table {table!r} ({parts}); report each data set "
                      "separately (one python -m saat_jax.report call per data set, each with its own --out)")


# --------------------------------------------------------------------------------------------
# Numbers of the tables
# --------------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict:
  """``{'mean', 'std' (sample, ddof=1; None for one value), 'n', 'values'}``."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()) if len(v) else None,
          "std": float(v.std(ddof=1)) if len(v) > 1 else None,
          "n": int(len(v)), "values": [float(x) for x in v]}


def format_cell(stat: Optional[dict], paper_value: Optional[float] = None, n_seeds: Optional[int] = None,
                pm: str = "±") -> str:
  """``'76.12 ± 0.31 (76.37)'``: mean ± std over seeds, the paper's value in parentheses, and
  ``[n=k]`` when only k of the row's ``n_seeds`` seeds have the number."""
  if stat is None or not stat["n"]:
    s = DASH
  else:
    s = f"{stat['mean']:.2f}"
    if stat["std"] is not None:
      s += f" {pm} {stat['std']:.2f}"
    if n_seeds is not None and stat["n"] < n_seeds:
      s += f" [n={stat['n']}]"
  if paper_value is not None:
    s += f" ({paper_value:.2f})"
  return s


def _paper_value(row: Optional[paper.Row], table: str, kind: str, metric: str) -> Optional[float]:
  if row is None or metric not in METRICS:
    return None
  t = row.paper.get(table, {}).get(kind)
  return None if t is None else t[METRICS.index(metric)]


_NETWORK = {"preact_resnet18": "PR-18", "resnet18": "ResNet-18", "small_cnn": "small CNN"}


def network_name(model: str) -> str:
  """The paper's network names: PR-18, WRN-34-10."""
  w = wrn_width(model)
  return f"WRN-{w[0]}-{w[1]}" if w else _NETWORK.get(model, model)


def _dataset_name(ds: str) -> str:
  return {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}.get(ds, ds)


def build_table(table: str, groups: Sequence[Group], numbers: dict[str, dict]) -> dict:
  """A table's JSON: lead columns, per-row cells (mean/std/n/values/paper) and their text."""
  kinds = _table_of_kinds(table)
  has_rd = {k: any("rd" in numbers[r.name][k] for g in groups for r in g.runs) for k in kinds}
  metrics = {k: [*METRICS, *(["rd"] if has_rd[k] else [])] for k in kinds}
  if table in ("table2", "table3"):
    lead = ["Dataset", "Network", "Basic AT", "Method", "Seeds"]
  elif table in FIGURES:
    lead = [FIGURES[table].x_name, "Method", "Seeds"]
  elif table == "table1":
    lead = ["Method", "Seeds"]
  else:
    lead = ["Run", "Dataset", "Seeds"]
  rows = []
  for g in groups:
    n = len(g.runs)
    if table in ("table2", "table3"):
      r = g.row
      lead_cells = [_dataset_name(r.dataset), network_name(r.model),
                    "TRADES" if r.method in ("trades", "sa_trades") else "AT", g.label, str(n)]
    elif table in FIGURES:
      lead_cells = [f"{g.x:g}", g.label, str(n)]
    elif table == "table1":
      lead_cells = [g.label, str(n)]
    else:
      lead_cells = [g.label, run_dataset(g.runs[0]), str(n)]
    cells, text = {}, {}
    for k in kinds:
      cells[k], text[k] = {}, {}
      for m in metrics[k]:
        vals = [numbers[r.name][k][m]["value"] for r in g.runs if m in numbers[r.name][k]]
        stat = summarize(vals)
        stat["paper"] = _paper_value(g.row, table, k, m)
        cells[k][m] = stat
        text[k][m] = format_cell(stat, stat["paper"], n)
    rows.append({"id": g.key, "label": g.label, "x": g.x, "lead": lead_cells, "runs": [r.name for r in g.runs],
                 "dirs": [r.dir for r in g.runs], "seeds": [_get(r.config, "seed") for r in g.runs],
                 "cells": cells, "text": text})
  title = TABLE_TITLES.get(table) or f"{FIGURES[table].title} (the paper gives no numbers)"
  return {"name": table, "title": title, "caption": _caption(table, groups, numbers, metrics),
          "lead": lead, "kinds": list(kinds), "metrics": metrics, "rows": rows}


def _caption(table: str, groups, numbers, metrics) -> str:
  runs = [r for g in groups for r in g.runs]
  eps = sorted({float(_get(r.config, "eval.eps") or 8 / 255) * 255 for r in runs})
  notes = [f"Test budget eps = {', '.join(f'{e:g}' for e in eps)}/255; accuracy in %.",
           f"Cells: mean ± {STD_NOTE}"
           + ("; the paper's value in parentheses (the paper averages 3 runs and omits its standard deviations)."
              if table in TABLES else "."),
           "[n=k]: only k of the row's seeds have this number."]
  fallback = sorted({r.name for r in runs for k in numbers[r.name] for m in ("natural", "pgd20")
                     if numbers[r.name][k].get(m, {}).get("source") == "metrics.jsonl"})
  if fallback:
    notes.append("Natural / PGD-20 from the per-epoch evaluation in metrics.jsonl (best = record at best_epoch, "
                 f"last = final record; no AA) for: {', '.join(fallback)}; the rest from eval.json.")
  ema = sorted(r.name for r in runs if metrics_prefix(r) or _get(r.config, "eval.best_weights") == "ema")
  if ema:
    notes.append(f"EMA weights (eval.best_weights = 'ema') for: {', '.join(ema)}.")
  num_test = sorted({v.get("num_test") for r in runs for k in numbers[r.name] for m in (*METRICS, "rd")
                     for v in [numbers[r.name][k].get(m, {})] if v.get("num_test")})
  if num_test:
    notes.append(f"eval.json numbers on {', '.join(map(str, num_test))} test points.")
  if any("rd" in ms for ms in metrics.values()):
    attacks = sorted({r.eval_meta.get("sweep_attack", "pgd").upper() for r in runs if r.eval_meta.get("sweep_attack")})
    notes.append("RD (Sec. 3.1): (1/n) sum_i (A_0 - A_i)/eps_i, in % of accuracy lost per 1/255 of test budget, "
                 f"from the eval.json sweep ({'/'.join(attacks) or 'PGD'}).")
  return " ".join(notes)


# --------------------------------------------------------------------------------------------
# Markdown and LaTeX
# --------------------------------------------------------------------------------------------


def _md_escape(s: str) -> str:
  return s.replace("|", "\\|")


def format_markdown(tables: Sequence[dict]) -> str:
  """One Markdown table per report table, columns ``<Best|Last> <Natural|PGD-20|AA|RD>``."""
  out = ["# SAAT report", ""]
  for t in tables:
    head = list(t["lead"]) + [f"{k.capitalize()} {METRIC_NAMES[m]}" for k in t["kinds"] for m in t["metrics"][k]]
    out += [f"## {t['title']}", "", t["caption"], "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * len(t["lead"]) + ["--:"] * (len(head) - len(t["lead"]))) + "|"]
    for r in t["rows"]:
      cells = list(r["lead"]) + [r["text"][k][m] for k in t["kinds"] for m in t["metrics"][k]]
      out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    out.append("")
  return "\n".join(out)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--"}
_LATEX_TOKENS = re.compile(r"(SA-?TRADES|SAAT)_(up|down)|eps_max|\beps\b|\brho\b|±")


def latex_text(s: str) -> str:
  """Plain text to LaTeX: SAAT_up -> SAAT$_{\\mathrm{up}}$, eps_max -> $\\epsilon_{\\max}$, rho -> $\\rho$."""
  def esc(t):
    return "".join(_LATEX_SPECIAL.get(c, c) for c in t)

  out, pos = [], 0
  for m in _LATEX_TOKENS.finditer(s):
    out.append(esc(s[pos:m.start()]))
    tok = m.group(0)
    if m.group(1):
      out.append(f"{m.group(1)}$_{{\\mathrm{{{m.group(2)}}}}}$")
    else:
      out.append({"eps_max": r"$\epsilon_{\max}$", "eps": r"$\epsilon$", "rho": r"$\rho$", "±": r"$\pm$"}[tok])
    pos = m.end()
  out.append(esc(s[pos:]))
  return "".join(out)


def format_latex(tables: Sequence[dict]) -> str:
  """booktabs tables with Best / Last column groups."""
  out = ["% Written by python -m saat_jax.report; needs \\usepackage{booktabs}.", ""]
  for t in tables:
    nlead = len(t["lead"])
    groups = [(k, len(t["metrics"][k])) for k in t["kinds"]]
    spec = "l" * nlead + "".join("c" * n for _, n in groups)
    head1, rules, col = [""] * nlead, [], nlead + 1
    for k, n in groups:
      head1.append(f"\\multicolumn{{{n}}}{{c}}{{{k.capitalize()}}}")
      rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
      col += n
    head2 = [latex_text(c) for c in t["lead"]] + [METRIC_NAMES[m] for k in t["kinds"] for m in t["metrics"][k]]
    out += ["\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{3pt}",
            f"\\caption{{{latex_text(t['title'])}. {latex_text(t['caption'])}}}",
            f"\\label{{tab:report-{t['name']}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
            " & ".join(head1) + " \\\\", "".join(rules), " & ".join(head2) + " \\\\", "\\midrule"]
    for r in t["rows"]:
      cells = [latex_text(c) for c in r["lead"]] + [latex_text(r["text"][k][m]) for k in t["kinds"]
                                                      for m in t["metrics"][k]]
      out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
  return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
       "xtick.labelsize": 10, "ytick.labelsize": 10}
DPI = 120


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _integer_x(ax) -> None:
  from matplotlib.ticker import MaxNLocator

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _x_axis_for(ax, x) -> None:
  """Ticks at the swept values; a symlog axis when they span 0..128 as Fig. 3(b)'s eps_max."""
  x = sorted(set(float(v) for v in x))
  if x[-1] >= 64:
    ax.set_xscale("symlog", linthresh=16)
  ax.set_xticks(x)
  ax.set_xticklabels([f"{v:g}" for v in x], fontsize=9 if len(x) > 8 else 10)


def _save(fig, path: str) -> None:
  fig.set_layout_engine("constrained")  # room for titles, labels and outside legends
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  _pyplot().close(fig)


def _series(records: Sequence[dict], key: str, scale: float = 1.0) -> Optional[np.ndarray]:
  """Per-epoch values of ``key`` (NaN where a record lacks it); ``None`` if no record has it."""
  if not any(key in r for r in records):
    return None
  return np.asarray([scale * float(r[key]) if r.get(key) is not None else np.nan for r in records])


def _plot_series(ax, x, y, **kw):
  """A curve that stays visible when some epochs were not evaluated (``eval.every > 1``): the
  evaluated epochs are joined, skipping the gaps."""
  ok = ~np.isnan(y)
  ax.plot(np.asarray(x)[ok], y[ok], marker="." if not ok.all() else None, **kw)


def _run_title(run: Run) -> str:
  row = run_row_id(run)
  what = ROWS[row].label if row in ROWS else run_key(run)
  return f"{run.name}: {what}, seed {_get(run.config, 'seed')}"


def plot_curves(run: Run, nums: dict, path: str) -> dict:
  """Learning curves as Fig. 1(c)/3(c): train and test, natural and PGD-20 accuracy per epoch, with
  the best and last checkpoints marked."""
  plt = _pyplot()
  ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
  data = {"epoch": ep.tolist()}
  pre = metrics_prefix(run)
  tag = " (EMA weights)" if pre else ""
  lines = [(f"test natural{tag}", f"{pre}test_natural_accuracy", "C0", "-"),
           (f"test PGD-20{tag}", f"{pre}test_pgd_accuracy", "C3", "-")]
  if _series(run.metrics, f"{pre}trainsub_natural_accuracy") is not None:
    lines += [(f"train natural (subset){tag}", f"{pre}trainsub_natural_accuracy", "C0", "--"),
              (f"train PGD-20 (subset){tag}", f"{pre}trainsub_pgd_accuracy", "C3", "--")]
  else:
    lines += [("adversarial training batch accuracy", "train_accuracy", "C2", "--")]
  with plt.rc_context(_RC):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, key, color, ls in lines:
      y = _series(run.metrics, key, 100)
      if y is None:
        continue
      data[key] = y.tolist()
      _plot_series(ax, ep, y, color=color, ls=ls, lw=1.6, label=label)
    for kind, ls in (("best", ":"), ("last", "-.")):
      e = nums[kind]["epoch"]
      txt = ", ".join(f"{METRIC_NAMES[m]} {nums[kind][m]['value']:.1f}" for m in METRICS if m in nums[kind])
      ax.axvline(e, color="k", ls=ls, lw=1.2, label=f"{kind} (epoch {e}): {txt}")
      data[f"{kind}_epoch"] = e
    ax.set_xlabel("epoch")
    _integer_x(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_run_title(run))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, framealpha=0.9)
    _save(fig, path)
  return data


def plot_budget(run: Run, path: str) -> dict:
  """SA-PGD's per-example budget per epoch (median, q25-q75, q10-q90, mean; /255), and the fraction
  of examples reaching ``loss >= rho`` and the mean number of PGD steps."""
  plt = _pyplot()
  ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
  q = {k: _series(run.metrics, f"attack_eps_{k}") for k in ("q10", "q25", "q50", "q75", "q90", "mean")}
  sat = _series(run.metrics, "attack_frac_satisfied", 100)
  steps = _series(run.metrics, "attack_steps_mean")
  data = {"epoch": ep.tolist(), **{f"eps_{k}": v.tolist() for k, v in q.items() if v is not None}}
  with plt.rc_context(_RC):
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if q["q10"] is not None and q["q90"] is not None:
      ax.fill_between(ep, q["q10"], q["q90"], color="C0", alpha=0.15, lw=0, label="q10-q90")
    if q["q25"] is not None and q["q75"] is not None:
      ax.fill_between(ep, q["q25"], q["q75"], color="C0", alpha=0.35, lw=0, label="q25-q75")
    if q["q50"] is not None:
      ax.plot(ep, q["q50"], color="C0", lw=1.8, label="median")
    if q["mean"] is not None:
      ax.plot(ep, q["mean"], color="k", ls="--", lw=1.3, label="mean")
    eps_max = run_eps_max_255(run)
    top = max([np.nanmax(v) for v in q.values() if v is not None and np.isfinite(v).any()], default=0.0)
    if eps_max is not None and eps_max <= 1.5 * top + 1:
      ax.axhline(eps_max, color="gray", ls=":", lw=1.2, label=f"eps_max = {eps_max:g}/255")
    elif eps_max is not None:  # e.g. 128/255 of Fig. 3(a): a line there would flatten the budgets
      ax.plot([], [], " ", label=f"eps_max = {eps_max:g}/255 (off scale)")
    ax.set_ylabel("SA-PGD budget eps (/255)")
    rho = run_rho(run)
    ax.set_title(f"{run.name}: per-example training budget" + (f" (rho = {rho:g})" if rho is not None else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", ncol=2, framealpha=0.9)
    handles = []
    if sat is not None:
      handles += ax2.plot(ep, sat, color="C2", lw=1.6, label="loss >= rho reached (%)")
      data["frac_satisfied_pct"] = sat.tolist()
    ax2.set_ylabel("satisfied (%)")
    ax2.set_xlabel("epoch")
    _integer_x(ax2)
    ax2.grid(alpha=0.3)
    if steps is not None:
      ax3 = ax2.twinx()
      handles += ax3.plot(ep, steps, color="C1", ls="--", lw=1.6, label="mean PGD steps")
      ax3.set_ylabel("mean PGD steps")
      data["steps_mean"] = steps.tolist()
    if handles:
      ax2.legend(handles=handles, loc="best", framealpha=0.9)
    _save(fig, path)
  return data


def _colors(n: int):
  plt = _pyplot()
  if n <= 10:
    return [f"C{i}" for i in range(n)]
  return [plt.get_cmap("viridis")(i / max(1, n - 1)) for i in range(n)]


def _legend(ax, n: int) -> None:
  if n > 8:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, framealpha=0.9)
  else:
    ax.legend(loc="best", framealpha=0.9)


def gen_gap_data(runs: Sequence[Run]) -> Optional[dict]:
  """Robust generalisation gap (train-subset PGD-20 - test PGD-20, in points) per rho (Fig. 3(d)):
  SA-PGD runs with ``trainsub_pgd_accuracy``, in series of equal method/model/eps_max; ``None``
  unless some series has two values of rho."""
  series: dict[str, dict[float, list[Run]]] = {}
  for r in runs:
    if run_rho(r) is None or _series(r.metrics, f"{metrics_prefix(r)}trainsub_pgd_accuracy") is None:
      continue
    key = f"{'AWP-' if run_awp(r) else ''}{run_method(r)}, {network_name(run_model(r))}, eps_max={run_eps_max_255(r):g}"
    series.setdefault(key, {}).setdefault(run_rho(r), []).append(r)
  series = {k: v for k, v in series.items() if len(v) > 1}
  if not series:
    return None
  out = {}
  for key, by_rho in series.items():
    out[key] = {}
    for rho in sorted(by_rho):
      gaps = [_series(r.metrics, f"{metrics_prefix(r)}trainsub_pgd_accuracy", 100)
              - _series(r.metrics, f"{metrics_prefix(r)}test_pgd_accuracy", 100) for r in by_rho[rho]]
      n = min(len(g) for g in gaps)
      curve = np.nanmean(np.stack([g[:n] for g in gaps]), axis=0)
      last = summarize([g[-1] for g in gaps if not np.isnan(g[-1])])
      out[key][f"{rho:g}"] = {"rho": rho, "runs": [r.name for r in by_rho[rho]], "epoch": list(range(1, n + 1)),
                              "gap_mean": curve.tolist(), "last": last}
  return out


def plot_gen_gap(data: dict, path: str) -> None:
  plt = _pyplot()
  with plt.rc_context(_RC):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    n_lines = sum(len(v) for v in data.values())
    colors = iter(_colors(n_lines))
    for si, (key, by_rho) in enumerate(data.items()):
      xs, ms, ss = [], [], []
      for d in by_rho.values():
        label = f"rho = {d['rho']:g}" if len(data) == 1 else f"{key}, rho = {d['rho']:g}"
        ax.plot(d["epoch"], d["gap_mean"], color=next(colors), lw=1.5, label=label)
        if d["last"]["n"]:
          xs.append(d["rho"])
          ms.append(d["last"]["mean"])
          ss.append(d["last"]["std"] or 0.0)
      ax2.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=f"C{si % 10}", label=key)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("epoch")
    _integer_x(ax)
    ax.set_ylabel("train PGD-20 - test PGD-20 (points of %)")
    ax.set_title("Robust generalisation gap during training")
    ax.grid(alpha=0.3)
    _legend(ax, n_lines)
    ax2.set_xlabel("rho (minimum adversarial loss)")
    _x_axis_for(ax2, [d["rho"] for v in data.values() for d in v.values()])
    ax2.set_ylabel("gap at the last epoch (points of %)")
    ax2.set_title("Robust generalisation gap (Fig. 3(d))")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best", framealpha=0.9)
    _save(fig, path)


def _group_label(table: str, g: Group) -> str:
  return g.label if g.row is not None else g.key


def _all_groups(grouped: dict[str, list[Group]]) -> list[tuple[str, Group]]:
  """Every distinct (row or key) group once, a paper row's first table winning."""
  seen, out = set(), []
  for table, gs in grouped.items():
    for g in gs:
      if g.key not in seen:
        seen.add(g.key)
        out.append((table, g))
  return out


def rd_capacity_data(grouped, numbers) -> Optional[dict]:
  """RD against the width x of WRN-34-x (Fig. 2(b), 3(e)); ``None`` without two widths with RD."""
  series: dict[str, dict] = {}
  for table, g in _all_groups(grouped):
    r0 = g.runs[0]
    w = wrn_width(run_model(r0))
    if w is None:
      continue
    for kind in KINDS:
      rds = [numbers[r.name][kind]["rd"]["value"] for r in g.runs if "rd" in numbers[r.name][kind]]
      if not rds:
        continue
      hp = run_key(r0).rsplit(",", 1)[0]
      key = f"{hp}, WRN-{w[0]}-x"
      series.setdefault(key, {}).setdefault(kind, {})[w[1]] = {"width": w[1], **summarize(rds),
                                                               "runs": [r.name for r in g.runs]}
  widths = {x for s in series.values() for k in s.values() for x in k}
  if len(widths) < 2:
    return None
  return series


def plot_rd_capacity(data: dict, path: str) -> None:
  plt = _pyplot()
  with plt.rc_context(_RC):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (key, by_kind) in enumerate(data.items()):
      for kind, ls in (("best", "-"), ("last", "--")):
        if kind not in by_kind:
          continue
        pts = sorted(by_kind[kind].values(), key=lambda d: d["width"])
        ax.errorbar([d["width"] for d in pts], [d["mean"] for d in pts], yerr=[d["std"] or 0.0 for d in pts],
                    color=f"C{i % 10}", ls=ls, marker="o", capsize=3, label=f"{key} ({kind})")
    ax.set_xlabel("WRN-34-x width x")
    _x_axis_for(ax, [w for s in data.values() for k in s.values() for w in k])
    ax.set_ylabel("RD (% accuracy lost per 1/255)")
    ax.set_title("Robustness disparity against model capacity (Fig. 2(b), 3(e))")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", framealpha=0.9)
    _save(fig, path)


def acc_vs_eps_data(items: Sequence[tuple[str, Group]], numbers) -> Optional[dict]:
  """Accuracy against test budget from eval.json sweeps (mean over seeds where budgets agree)."""
  out = {}
  for table, g in items:
    for kind in KINDS:
      sweeps = [(r.name, numbers[r.name][kind]["sweep"]) for r in g.runs if "sweep" in numbers[r.name][kind]]
      if not sweeps:
        continue
      label = _group_label(table, g)
      eps_sets = {tuple(s["eps_255"]) for _, s in sweeps}
      entries = ([(label, [s for _, s in sweeps], [n for n, _ in sweeps])] if len(eps_sets) == 1
                 else [(f"{label} [{n}]", [s], [n]) for n, s in sweeps])
      for lab, ss, names in entries:
        acc = np.asarray([s["accuracy"] for s in ss])
        rds = [numbers[n][kind]["rd"]["value"] for n in names if "rd" in numbers[n][kind]]
        out.setdefault(kind, {})[lab] = {
            "eps_255": ss[0]["eps_255"], "mean": acc.mean(0).tolist(),
            "std": (acc.std(0, ddof=1).tolist() if len(ss) > 1 else None), "runs": names,
            "rd": float(np.mean(rds)) if rds else None, "x": g.x}
  return out or None


def plot_acc_vs_eps(data: dict, path: str, title: str) -> None:
  plt = _pyplot()
  kinds = [k for k in KINDS if k in data]
  many = max(len(data[k]) for k in kinds) > 8  # legends outside, so panels one above the other
  shape, size = ((len(kinds), 1), (8, 4.5 * len(kinds))) if many else ((1, len(kinds)), (6.5 * len(kinds), 4.5))
  with plt.rc_context(_RC):
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds):
      entries = data[kind]
      for color, (label, d) in zip(_colors(len(entries)), entries.items()):
        lab = f"{label} (RD {d['rd']:.2f})" if d["rd"] is not None else label
        ax.plot(d["eps_255"], d["mean"], marker="o", ms=3.5, color=color, lw=1.5, label=lab)
        if d["std"] is not None:
          m, s = np.asarray(d["mean"]), np.asarray(d["std"])
          ax.fill_between(d["eps_255"], m - s, m + s, color=color, alpha=0.15, lw=0)
      ax.set_xlabel("test budget eps (/255)")
      ax.set_ylabel("accuracy (%)")
      ax.set_title(f"{title}: {kind} checkpoint")
      ax.grid(alpha=0.3)
      _legend(ax, len(entries))
      if any(d["rd"] is not None for d in entries.values()):
        ax.get_legend().set_title("RD in % per 1/255", prop={"size": 9})
    _save(fig, path)


def sweep_data(table: dict) -> Optional[dict]:
  """Natural / PGD-20 / AA / RD of a figure table against its swept hyper-parameter."""
  rows = [r for r in table["rows"] if r["x"] is not None]
  if len({r["x"] for r in rows}) < 2:
    return None
  out = {"x": [r["x"] for r in rows], "labels": [r["label"] for r in rows]}
  for kind in table["kinds"]:
    for m in table["metrics"][kind]:
      cells = [r["cells"][kind][m] for r in rows]
      if any(c["n"] for c in cells):
        out[f"{kind}_{m}"] = {"mean": [c["mean"] for c in cells], "std": [c["std"] for c in cells]}
  return out


def _errorbar(ax, x, d: dict, **kw) -> None:
  """Mean ± std over seeds per x (``None``: no run has the value, drawn as a gap / no bar)."""
  mean = np.asarray([np.nan if v is None else v for v in d["mean"]], float)
  std = np.asarray([0.0 if v is None else v for v in d["std"]], float)
  ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=3, **kw)


def plot_sweep(table: dict, data: dict, path: str) -> None:
  plt = _pyplot()
  fig_def = FIGURES[table["name"]]
  has_rd = any(k.endswith("_rd") for k in data)
  with plt.rc_context(_RC):
    fig, axes = plt.subplots(1, 2 if has_rd else 1, figsize=(12 if has_rd else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.asarray(data["x"])
    for i, m in enumerate(("natural", "pgd20", "aa")):
      for kind, ls in (("best", "-"), ("last", "--")):
        d = data.get(f"{kind}_{m}")
        if d is None:
          continue
        _errorbar(ax, x, d, color=f"C{i}", ls=ls, label=f"{METRIC_NAMES[m]} ({kind})")
    ax.set_xlabel(fig_def.x_name)
    _x_axis_for(ax, x)
    ax.set_ylabel("accuracy at the test budget (%)")
    ax.set_title(fig_def.title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, framealpha=0.9)
    if has_rd:
      ax2 = axes[0][1]
      for kind, ls in (("best", "-"), ("last", "--")):
        d = data.get(f"{kind}_rd")
        if d is None:
          continue
        _errorbar(ax2, x, d, color="k", ls=ls, label=f"RD ({kind})")
      ax2.set_xlabel(fig_def.x_name)
      _x_axis_for(ax2, x)
      ax2.set_ylabel("RD (% accuracy lost per 1/255)")
      ax2.set_title("Robustness disparity (Sec. 3.1)")
      ax2.grid(alpha=0.3)
      ax2.legend(loc="best", framealpha=0.9)
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr)


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

  dirs = find_run_dirs(run_dirs)
  runs = [load_run(d, warn) for d in dirs]
  skipped = [r for r in runs if not r.finished]
  for r in skipped:
    warn(f"skipping unfinished run {_describe_unfinished(r)}")
  runs = [r for r in runs if r.finished]
  if not runs:
    raise ReportError("no finished run in " + ", ".join(_describe_unfinished(r) for r in skipped)
                      + "; train them to the end (launch.py resumes from the last checkpoint)")
  for r, name in zip(runs, _unique_names([r.dir for r in runs])):
    r.name = name
  grouped = group_runs(runs, warn)
  numbers = {r.name: checkpoint_numbers(r) for r in runs}
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
    if run_method(r) not in SAAT_METHODS:
      continue
    if _series(r.metrics, "attack_eps_q50") is None and _series(r.metrics, "attack_eps_mean") is None:
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
  acc = acc_vs_eps_data(_all_groups(grouped), numbers)
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
      "runs": {r.name: {"dir": r.dir, "row": run_row_id(r), "seed": _get(r.config, "seed"),
                        "dataset": run_dataset(r), "method": run_method(r), "model": run_model(r),
                        "rho": run_rho(r), "eps_max_255": run_eps_max_255(r), "num_epochs": r.num_epochs,
                        "eval_files": r.eval_files, "checkpoints": numbers[r.name]} for r in runs},
      "skipped_runs": [{"dir": r.dir, "reason": f"unfinished: {len(r.metrics)} of {r.num_epochs} epochs"}
                       for r in skipped],
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
