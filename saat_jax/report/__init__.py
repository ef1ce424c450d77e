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

The package: :mod:`saat_jax.report.runs` (reading and checking run directories),
:mod:`saat_jax.report.tables` (grouping, cells, Markdown and LaTeX), :mod:`saat_jax.report.figures`
(the figures and the plotting helpers ``python -m saat_jax.plot`` shares) and
:mod:`saat_jax.report.cli` (:func:`report_runs` and the command line).
"""

from saat_jax.report.cli import main, report_runs
from saat_jax.report.figures import (DPI, RC, acc_vs_eps_data, all_groups, gen_gap_data, group_label, integer_x,
                                     legend_below, metric_series, place_legend, plot_acc_vs_eps, plot_budget,
                                     plot_curves, plot_gen_gap, plot_rd_capacity, plot_series, plot_sweep, pyplot,
                                     rd_capacity_data, run_label, run_labels, run_title, save_figure, series_styles,
                                     sweep_data, x_axis_for)
from saat_jax.report.runs import (KINDS, METRIC_NAMES, METRICS, REQUIRED_RECORD_KEYS, ReportError, Run,
                                  checkpoint_numbers, column_keys, column_name, config_get, declared_columns,
                                  find_run_dirs, load_run, merge_evals,
                                  method_family, method_info, metrics_prefix, percent_rd, read_metrics, run_awp, run_dataset, run_eps_max_255,
                                  run_key, run_method, run_model, run_rho, run_row_id, unique_names, uses_sa_pgd,
                                  wrn_width)
from saat_jax.report.tables import (DASH, STD_NOTE, TABLE_TITLES, Group, build_table, format_cell, format_latex,
                                    format_markdown, group_runs, latex_text, network_name, summarize)

__all__ = [
    "DASH", "DPI", "KINDS", "METRICS", "METRIC_NAMES", "RC", "REQUIRED_RECORD_KEYS", "STD_NOTE",
    "TABLE_TITLES", "Group", "ReportError", "Run", "acc_vs_eps_data", "all_groups", "build_table",
    "checkpoint_numbers", "column_keys", "column_name", "config_get", "declared_columns", "find_run_dirs", "format_cell", "format_latex", "format_markdown",
    "gen_gap_data", "group_label", "group_runs", "integer_x", "latex_text", "legend_below", "load_run", "main",
    "merge_evals", "method_family", "method_info", "metric_series", "metrics_prefix", "network_name", "percent_rd",
    "place_legend",
    "plot_acc_vs_eps", "plot_budget", "plot_curves", "plot_gen_gap", "plot_rd_capacity", "plot_series",
    "plot_sweep", "pyplot", "rd_capacity_data", "read_metrics", "report_runs", "run_awp", "run_dataset",
    "run_eps_max_255", "run_key", "run_label", "run_labels", "run_method", "run_model", "run_rho", "run_row_id",
    "run_title", "save_figure", "series_styles", "summarize", "sweep_data", "unique_names", "uses_sa_pgd", "wrn_width",
    "x_axis_for",
]
