"""The report's figures (Fig. 1(a)-(c), 2(b), 3(a)-(e)) and the public plotting helpers that
``python -m saat_jax.plot`` draws with (:func:`pyplot`, :func:`metric_series`, :func:`plot_series`,
:func:`save_figure`, ...)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from saat_jax.paper import FIGURES, ROWS
from saat_jax.report.runs import (KINDS, METRIC_NAMES, METRICS, Run, config_get, metrics_prefix, run_awp,
                                  run_eps_max_255, run_key, run_method, run_model, run_rho, run_row_id, wrn_width)
from saat_jax.report.tables import Group, network_name, summarize

RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
      "xtick.labelsize": 10, "ytick.labelsize": 10}
DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
SWEEP_PGD_NOTE = "PGD: step 2/255, 2.5 steps per 1/255 of budget (PGD-20 at 8/255), as the released SAAT code"


def pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def integer_x(ax) -> None:
  from matplotlib.ticker import MaxNLocator

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def x_axis_for(ax, x) -> None:
  """Ticks at the swept values; a symlog axis when they span 0..128 as Fig. 3(b)'s eps_max."""
  x = sorted(set(float(v) for v in x))
  if x[-1] >= 64:
    ax.set_xscale("symlog", linthresh=16)
  ax.set_xticks(x)
  ax.set_xticklabels([f"{v:g}" for v in x], fontsize=9 if len(x) > 8 else 10)


def save_figure(fig, path: str) -> None:
  fig.set_layout_engine("constrained")  # room for titles, labels and outside legends
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  pyplot().close(fig)


def metric_series(records: Sequence[dict], key: str, scale: float = 1.0) -> Optional[np.ndarray]:
  """Per-epoch values of ``key`` (NaN where a record lacks it); ``None`` if no record has it."""
  if not any(key in r for r in records):
    return None
  return np.asarray([scale * float(r[key]) if r.get(key) is not None else np.nan for r in records])


def plot_series(ax, x, y, **kw):
  """A curve that stays visible when some epochs were not evaluated (``eval.every > 1``): the
  evaluated epochs are joined, skipping the gaps. A ``marker`` is drawn at about 12 points."""
  ok = ~np.isnan(y)
  kw.setdefault("marker", "." if not ok.all() else None)
  if kw["marker"] not in (None, "."):
    kw.setdefault("markevery", max(1, int(ok.sum()) // 12))
  return ax.plot(np.asarray(x)[ok], y[ok], **kw)


def series_styles(n: int, linestyles: bool = True) -> list[dict]:
  """Styles telling ``n`` curves apart: the ten tab10 colours, each series its own marker; from the
  eleventh on the colours repeat with another marker and (``linestyles``) another line style."""
  out = []
  for i in range(n):
    style = {"color": f"C{i % 10}", "marker": MARKERS[(i + i // 10) % len(MARKERS)]}
    if linestyles:
      style["ls"] = LINESTYLES[(i // 10) % len(LINESTYLES)]
    out.append(style)
  return out


def run_label(run: Run) -> str:
  """A run's name in figures: ``config.experiment.label`` if set, else its paper row's label, else
  its method with hyper-parameters and network (:func:`run_key`)."""
  label = config_get(run.config, "experiment.label")
  if label:
    return str(label)
  row = run_row_id(run)
  return ROWS[row].label if row in ROWS else run_key(run)


def run_labels(runs: Sequence[Run]) -> list[str]:
  """:func:`run_label` of each run, made unique: seeds of one setting get ``seed N``, and the folder
  name (``run.name``) breaks the ties left."""
  base = [run_label(r) for r in runs]
  out = [f"{b}, seed {config_get(r.config, 'seed')}" if base.count(b) > 1 else b for b, r in zip(base, runs)]
  return [f"{o} [{r.name}]" if out.count(o) > 1 else o for o, r in zip(out, runs)]


def run_title(run: Run) -> str:
  """A run's figure title: its label (``run.label``, else :func:`run_label`) and seed."""
  label = run.label or run_label(run)
  seed = config_get(run.config, "seed")
  return label if f"seed {seed}" in label else f"{label}, seed {seed}"


def legend_below(fig, handles, ncol: int = 3) -> None:
  """One legend under the figure, outside every axes, so no curve crosses it."""
  fig.legend(handles=handles, loc="outside lower center", ncol=ncol, framealpha=0.9)


def plot_curves(run: Run, nums: dict, path: str) -> dict:
  """Learning curves as Fig. 1(c)/3(c): train and test, natural and PGD-20 accuracy per epoch, with
  the best and last checkpoints marked."""
  plt = pyplot()
  ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
  data = {"epoch": ep.tolist()}
  pre = metrics_prefix(run)
  tag = " (EMA weights)" if pre else ""
  lines = [(f"test natural{tag}", f"{pre}test_natural_accuracy", "C0", "-"),
           (f"test PGD-20{tag}", f"{pre}test_pgd_accuracy", "C3", "-")]
  if metric_series(run.metrics, f"{pre}trainsub_natural_accuracy") is not None:
    lines += [(f"train natural (subset){tag}", f"{pre}trainsub_natural_accuracy", "C0", "--"),
              (f"train PGD-20 (subset){tag}", f"{pre}trainsub_pgd_accuracy", "C3", "--")]
  else:
    lines += [("adversarial training batch accuracy", "train_accuracy", "C2", "--")]
  with plt.rc_context(RC):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, key, color, ls in lines:
      y = metric_series(run.metrics, key, 100)
      if y is None:
        continue
      data[key] = y.tolist()
      plot_series(ax, ep, y, color=color, ls=ls, lw=1.6, label=label)
    for kind, ls in (("best", ":"), ("last", "-.")):
      e = nums[kind]["epoch"]
      txt = ", ".join(f"{METRIC_NAMES[m]} {nums[kind][m]['value']:.1f}"
                      + (f"† (epoch {nums[kind][m]['measured_epoch']})" if "measured_epoch" in nums[kind][m] else "")
                      for m in METRICS if m in nums[kind])
      ax.axvline(e, color="k", ls=ls, lw=1.2, label=f"{kind} (epoch {e}): {txt}")
      data[f"{kind}_epoch"] = e
    ax.set_xlabel("epoch")
    integer_x(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(run_title(run))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, framealpha=0.9)
    save_figure(fig, path)
  return data


def plot_budget(run: Run, path: str) -> dict:
  """SA-PGD's per-example budget per epoch (median, q25-q75, q10-q90, mean; /255), and the fraction
  of examples reaching ``loss >= rho`` and the mean number of PGD steps."""
  plt = pyplot()
  ep = np.asarray([r["epoch"] + 1 for r in run.metrics])
  q = {k: metric_series(run.metrics, f"attack_eps_{k}") for k in ("q10", "q25", "q50", "q75", "q90", "mean")}
  sat = metric_series(run.metrics, "attack_frac_satisfied", 100)
  steps = metric_series(run.metrics, "attack_steps_mean")
  data = {"epoch": ep.tolist(), **{f"eps_{k}": v.tolist() for k, v in q.items() if v is not None}}
  with plt.rc_context(RC):
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
    ax.set_title(f"{run_title(run)}: per-example training budget" + (f" (rho = {rho:g})" if rho is not None else ""))
    ax.grid(alpha=0.3)
    handles = list(ax.get_legend_handles_labels()[0])
    if sat is not None:
      handles += ax2.plot(ep, sat, color="C2", lw=1.6, label="loss >= rho reached (%)")
      data["frac_satisfied_pct"] = sat.tolist()
    ax2.set_ylabel("satisfied (%)")
    ax2.set_xlabel("epoch")
    integer_x(ax2)
    ax2.grid(alpha=0.3)
    if steps is not None:
      ax3 = ax2.twinx()
      handles += ax3.plot(ep, steps, color="C1", ls="--", lw=1.6, label="mean PGD steps")
      ax3.set_ylabel("mean PGD steps")
      data["steps_mean"] = steps.tolist()
    if handles:
      legend_below(fig, handles, ncol=4)
    save_figure(fig, path)
  return data


def place_legend(ax, n: int) -> None:
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
    if run_rho(r) is None or metric_series(r.metrics, f"{metrics_prefix(r)}trainsub_pgd_accuracy") is None:
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
      gaps = [metric_series(r.metrics, f"{metrics_prefix(r)}trainsub_pgd_accuracy", 100)
              - metric_series(r.metrics, f"{metrics_prefix(r)}test_pgd_accuracy", 100) for r in by_rho[rho]]
      n = min(len(g) for g in gaps)
      curve = np.nanmean(np.stack([g[:n] for g in gaps]), axis=0)
      last = summarize([g[-1] for g in gaps if not np.isnan(g[-1])])
      out[key][f"{rho:g}"] = {"rho": rho, "runs": [r.name for r in by_rho[rho]], "epoch": list(range(1, n + 1)),
                              "gap_mean": curve.tolist(), "last": last}
  return out


def plot_gen_gap(data: dict, path: str) -> None:
  plt = pyplot()
  with plt.rc_context(RC):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    n_lines = sum(len(v) for v in data.values())
    styles = iter(series_styles(n_lines))
    for style2, (key, by_rho) in zip(series_styles(len(data)), data.items()):
      xs, ms, ss = [], [], []
      for d in by_rho.values():
        label = f"rho = {d['rho']:g}" if len(data) == 1 else f"{key}, rho = {d['rho']:g}"
        plot_series(ax, d["epoch"], np.asarray(d["gap_mean"], float), lw=1.5, ms=4, label=label, **next(styles))
        if d["last"]["n"]:
          xs.append(d["rho"])
          ms.append(d["last"]["mean"])
          ss.append(d["last"]["std"] or 0.0)
      ax2.errorbar(xs, ms, yerr=ss, capsize=3, label=key, **style2)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("epoch")
    integer_x(ax)
    ax.set_ylabel("train PGD-20 - test PGD-20 (points of %)")
    ax.set_title("Robust generalisation gap during training")
    ax.grid(alpha=0.3)
    place_legend(ax, n_lines)
    ax2.set_xlabel("rho (minimum adversarial loss)")
    x_axis_for(ax2, [d["rho"] for v in data.values() for d in v.values()])
    ax2.set_ylabel("gap at the last epoch (points of %)")
    ax2.set_title("Robust generalisation gap (Fig. 3(d))")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best", framealpha=0.9)
    save_figure(fig, path)


def group_label(table: str, g: Group) -> str:
  """A group's name in figures: its runs' ``config.experiment.label`` when they share one, else the
  paper row's label, else the method with hyper-parameters and network."""
  labels = {config_get(r.config, "experiment.label") or "" for r in g.runs}
  if len(labels) == 1 and "" not in labels:
    return labels.pop()
  return g.label if g.row is not None else run_key(g.runs[0])


def all_groups(grouped: dict[str, list[Group]]) -> list[tuple[str, Group]]:
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
  for table, g in all_groups(grouped):
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
  plt = pyplot()
  with plt.rc_context(RC):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for style, (key, by_kind) in zip(series_styles(len(data), linestyles=False), data.items()):
      for kind, ls in (("best", "-"), ("last", "--")):
        if kind not in by_kind:
          continue
        pts = sorted(by_kind[kind].values(), key=lambda d: d["width"])
        ax.errorbar([d["width"] for d in pts], [d["mean"] for d in pts], yerr=[d["std"] or 0.0 for d in pts],
                    ls=ls, capsize=3, label=f"{key} ({kind})", **style)
    ax.set_xlabel("WRN-34-x width x")
    x_axis_for(ax, [w for s in data.values() for k in s.values() for w in k])
    ax.set_ylabel("RD (% accuracy lost per 1/255)")
    ax.set_title("Robustness disparity against model capacity (Fig. 2(b), 3(e))")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", framealpha=0.9)
    save_figure(fig, path)


def acc_vs_eps_data(items: Sequence[tuple[str, Group]], numbers) -> Optional[dict]:
  """Accuracy against test budget from eval.json sweeps (mean over seeds where budgets agree)."""
  out = {}
  for table, g in items:
    for kind in KINDS:
      sweeps = [(r.name, numbers[r.name][kind]["sweep"]) for r in g.runs if "sweep" in numbers[r.name][kind]]
      if not sweeps:
        continue
      label = group_label(table, g)
      if label in out.get(kind, {}):  # two settings under one experiment.label
        label = f"{label} ({g.key})"
      attack = {r.name: r.eval_meta.get("sweep_attack", "pgd") for r in g.runs}
      eps_sets = {tuple(s["eps_255"]) for _, s in sweeps}
      entries = ([(label, [s for _, s in sweeps], [n for n, _ in sweeps])] if len(eps_sets) == 1
                 else [(f"{label} [{n}]", [s], [n]) for n, s in sweeps])
      for lab, ss, names in entries:
        acc = np.asarray([s["accuracy"] for s in ss])
        rds = [numbers[n][kind]["rd"]["value"] for n in names if "rd" in numbers[n][kind]]
        older = sorted({s["measured_epoch"] for s in ss if "measured_epoch" in s})
        out.setdefault(kind, {})[lab] = {
            "eps_255": ss[0]["eps_255"], "mean": acc.mean(0).tolist(),
            "std": (acc.std(0, ddof=1).tolist() if len(ss) > 1 else None), "runs": names,
            "rd": float(np.mean(rds)) if rds else None, "x": g.x,
            "attack": sorted({attack[n] for n in names}), **({"measured_epochs": older} if older else {})}
  return out or None


def plot_acc_vs_eps(data: dict, path: str, title: str) -> None:
  plt = pyplot()
  kinds = [k for k in KINDS if k in data]
  many = max(len(data[k]) for k in kinds) > 8  # legends outside, so panels one above the other
  shape, size = ((len(kinds), 1), (8, 4.5 * len(kinds))) if many else ((1, len(kinds)), (6.5 * len(kinds), 4.5))
  with plt.rc_context(RC):
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds):
      entries = data[kind]
      for style, (label, d) in zip(series_styles(len(entries)), entries.items()):
        lab = f"{label} (RD {d['rd']:.2f})" if d["rd"] is not None else label
        if d.get("measured_epochs"):
          lab += f" † older checkpoint (epoch {', '.join(map(str, d['measured_epochs']))})"
        ax.plot(d["eps_255"], d["mean"], ms=4, lw=1.5, label=lab, **style)
        if d["std"] is not None:
          m, s = np.asarray(d["mean"]), np.asarray(d["std"])
          ax.fill_between(d["eps_255"], m - s, m + s, color=style["color"], alpha=0.12, lw=0)
      attacks = {a for d in entries.values() for a in d.get("attack", ["pgd"])}
      ax.set_xlabel("test budget eps (/255)")
      ax.set_ylabel({frozenset({"pgd"}): "accuracy under PGD (%)", frozenset({"aa"}): "accuracy under AutoAttack (%)"}
                    .get(frozenset(attacks), "accuracy under PGD or AutoAttack (%)"))
      ax.set_title(f"{title}: {kind} checkpoint")
      ax.grid(alpha=0.3)
      place_legend(ax, len(entries))
      if any(d["rd"] is not None for d in entries.values()):
        ax.get_legend().set_title("RD in % per 1/255", prop={"size": 9})
    if any("pgd" in d.get("attack", ["pgd"]) for k in kinds for d in data[k].values()):
      fig.supxlabel(SWEEP_PGD_NOTE, fontsize=9)
    save_figure(fig, path)


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
  plt = pyplot()
  fig_def = FIGURES[table["name"]]
  has_rd = any(k.endswith("_rd") for k in data)
  with plt.rc_context(RC):
    fig, axes = plt.subplots(1, 2 if has_rd else 1, figsize=(12 if has_rd else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.asarray(data["x"])
    for i, m in enumerate(METRICS):
      for kind, ls in (("best", "-"), ("last", "--")):
        d = data.get(f"{kind}_{m}")
        if d is None:
          continue
        _errorbar(ax, x, d, color=f"C{i}", ls=ls, label=f"{METRIC_NAMES[m]} ({kind})")
    ax.set_xlabel(fig_def.x_name)
    x_axis_for(ax, x)
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
      x_axis_for(ax2, x)
      ax2.set_ylabel("RD (% accuracy lost per 1/255)")
      ax2.set_title("Robustness disparity (Sec. 3.1)")
      ax2.grid(alpha=0.3)
      ax2.legend(loc="best", framealpha=0.9)
    save_figure(fig, path)

