"""The report's tables: runs grouped into the paper's Tables 1-3, figure sweeps and ``runs``;
cells ``mean ± std (paper)`` over seeds; Markdown and LaTeX."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from saat_jax import paper
from saat_jax.paper import FIGURES, TABLES
from saat_jax.report.runs import (KINDS, METRICS, ReportError, Run, column_keys, column_name,
                                  config_get, method_family, metrics_prefix, run_data_note, run_dataset, run_key, run_row_id, wrn_width)

STD_NOTE = "sample standard deviation over seeds (ddof=1; no ± with a single seed)"
DASH = "–"
OLDER_MARK = "†"  # a number measured on an older checkpoint than the run's current one
DATA_MARK = "‡"  # a row trained on re-encoded (JPEG) data


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
    if row is None:  # seeds of one setting: the same config's own name (e.g. "digits saat_up") and method
      key = run_key(run)
      label = config_get(run.config, "experiment.label")
      key = f"{label}: {key}" if label else key
      add("runs", key, key, None, run)
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
      seeds = [config_get(r.config, "seed") for r in g.runs]
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
  ``[n=k]`` when only k of the row's ``n_seeds`` seeds have the number; ``†`` after the number when
  some of it was measured on an older checkpoint (``stat['older']``)."""
  if stat is None or not stat["n"]:
    s = DASH
  else:
    s = f"{stat['mean']:.2f}"
    if stat["std"] is not None:
      s += f" {pm} {stat['std']:.2f}"
    if stat.get("older"):
      s += OLDER_MARK
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
  runs = [r for g in groups for r in g.runs]
  has_rd = {k: any("rd" in numbers[r.name][k] for r in runs) for k in kinds}
  # the paper's columns, then any other a run has (PGD-k, an evaluator type's, in column_keys' order)
  others = {k: list(dict.fromkeys(m for r in runs for m in column_keys(numbers[r.name][k], r.eval_meta.get("columns", {}))
                                  if m not in METRICS)) for k in kinds}
  metrics = {k: [*METRICS, *others[k], *(["rd"] if has_rd[k] else [])] for k in kinds}
  names = {m: column_name(m, runs) for ms in metrics.values() for m in ms}
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
                    method_family(r.method), g.label, str(n)]
    elif table in FIGURES:
      lead_cells = [f"{g.x:g}", g.label, str(n)]
    elif table == "table1":
      lead_cells = [g.label, str(n)]
    else:
      lead_cells = [g.label, run_dataset(g.runs[0]), str(n)]
    data_notes = {r.name: note for r in g.runs for note in [run_data_note(r)] if note}
    if data_notes:  # the mark goes beside the row's name
      i = lead.index("Run" if "Run" in lead else "Method")
      lead_cells[i] += f" {DATA_MARK}"
    cells, text = {}, {}
    for k in kinds:
      cells[k], text[k] = {}, {}
      for m in metrics[k]:
        vals = [numbers[r.name][k][m]["value"] for r in g.runs if m in numbers[r.name][k]]
        stat = summarize(vals)
        stat["paper"] = _paper_value(g.row, table, k, m)
        older = [{"run": r.name, "epoch": numbers[r.name][k]["epoch"],
                  "measured_epoch": numbers[r.name][k][m]["measured_epoch"], "file": numbers[r.name][k][m]["source"]}
                 for r in g.runs if "measured_epoch" in numbers[r.name][k].get(m, {})]
        if older:
          stat["older"] = older
        cells[k][m] = stat
        text[k][m] = format_cell(stat, stat["paper"], n)
    row = {"id": g.key, "label": g.label, "x": g.x, "lead": lead_cells, "runs": [r.name for r in g.runs],
           "dirs": [r.dir for r in g.runs], "seeds": [config_get(r.config, "seed") for r in g.runs],
           "cells": cells, "text": text}
    if data_notes:
      row["data_note"] = "; ".join(sorted(set(data_notes.values())))
      row["data_note_runs"] = sorted(data_notes)
    rows.append(row)
  title = TABLE_TITLES.get(table) or f"{FIGURES[table].title} (the paper gives no numbers)"
  out = {"name": table, "title": title, "caption": _caption(table, groups, numbers, metrics),
         "lead": lead, "kinds": list(kinds), "metrics": metrics, "names": names, "rows": rows}
  notes = _notes(rows, names)
  if notes:
    out["notes"] = notes
  return out


def _notes(rows, names: dict) -> list[str]:
  """The footnotes below a table: rows on re-encoded data (‡), numbers of older checkpoints (†)."""
  notes = []
  jpeg = [r for r in rows if r.get("data_note")]
  for note in sorted({r["data_note"] for r in jpeg}):
    rows_of = [f"{r['label']} ({', '.join(r['data_note_runs'])})" for r in jpeg if r["data_note"] == note]
    notes.append(f"{DATA_MARK} {note}: {'; '.join(rows_of)}.")
  older = {}
  for r in rows:
    for kind, cells in r["cells"].items():
      for m, c in cells.items():
        for o in c.get("older", []):
          older.setdefault((o["run"], kind, o["epoch"], o["measured_epoch"], o["file"]), []).append(names[m])
  if older:
    parts = [f"{run} {kind} {', '.join(ms)} ({file} of epoch {measured}; the checkpoint is now epoch {now})"
             for (run, kind, now, measured, file), ms in older.items()]
    notes.append(f"{OLDER_MARK} measured on an older checkpoint than the run's current one (the run trained on "
                 f"after its evaluation): {'; '.join(parts)}. The command that measures them again is in the "
                 "report's warnings and in report.json (runs.<run>.older_evaluations).")
  return notes


def _caption(table: str, groups, numbers, metrics) -> str:
  runs = [r for g in groups for r in g.runs]
  eps = sorted({float(config_get(r.config, "eval.eps") or 8 / 255) * 255 for r in runs})
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
  ema = sorted(r.name for r in runs if metrics_prefix(r) or config_get(r.config, "eval.best_weights") == "ema")
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
    head = list(t["lead"]) + [f"{k.capitalize()} {t['names'][m]}" for k in t["kinds"] for m in t["metrics"][k]]
    out += [f"## {t['title']}", "", t["caption"], "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * len(t["lead"]) + ["--:"] * (len(head) - len(t["lead"]))) + "|"]
    for r in t["rows"]:
      cells = list(r["lead"]) + [r["text"][k][m] for k in t["kinds"] for m in t["metrics"][k]]
      out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    out.append("")
    if t.get("notes"):
      out += [*t["notes"], ""]
  return "\n".join(out)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--",
                  OLDER_MARK: r"$^\dagger$", DATA_MARK: r"$^\ddagger$"}
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
    head2 = [latex_text(c) for c in t["lead"]] + [latex_text(t["names"][m]) for k in t["kinds"] for m in t["metrics"][k]]
    out += ["\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{3pt}",
            f"\\caption{{{latex_text(t['title'])}. {latex_text(t['caption'])}}}",
            f"\\label{{tab:report-{t['name']}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
            " & ".join(head1) + " \\\\", "".join(rules), " & ".join(head2) + " \\\\", "\\midrule"]
    for r in t["rows"]:
      cells = [latex_text(c) for c in r["lead"]] + [latex_text(r["text"][k][m]) for k in t["kinds"]
                                                      for m in t["metrics"][k]]
      out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if t.get("notes"):
      out += ["\\par\\smallskip\\footnotesize " + " ".join(latex_text(n) for n in t["notes"])]
    out += ["\\end{table}", ""]
  return "\n".join(out)

