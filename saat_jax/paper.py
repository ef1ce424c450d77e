"""The paper's experiments as data: every row of Tables 1-3 and every run of the figure sweeps.

This module is the single source of truth for "which experiments does the paper run, with which
hyper-parameters, and what did it report". Training configs (``configs/paper.py``) are built from a
:class:`Row`; ``python -m saat_jax.report`` prints the paper's numbers beside ours.

Ids (keys of :data:`ROWS`):

- Table 1 (CIFAR-10, PreAct ResNet-18; Sec. 4.3): ``at``, ``saat_down`` (eps_max 8, rho 1.5),
  ``saat_up_e{9..20}_r1.5``, ``saat_up_e14_r{1.3..2.0}``, ``awp_at``, ``awp_saat_down``,
  ``awp_saat_up_e{9..12}_r1.5``, ``awp_saat_up_e9_r{1.6..1.9}``. The paper prints
  SAAT_up (eps_max=14, rho=1.5) twice (end of the eps_max sweep, inside the rho sweep) with the same
  numbers; it is one row here, so Table 1 has 31 distinct rows.
- Tables 2 and 3 (appendix; best and last checkpoint): the CIFAR-10 PreAct ResNet-18 AT rows are
  Table 1 rows (``at``, ``saat_up_e14_r1.7``, ``awp_at``, ``awp_saat_up_e9_r1.7``, whose numbers
  match); the others are ``cifar100_*``, ``trades``, ``sa_trades_up``, ``awp_trades``,
  ``awp_sa_trades_up`` and ``wrn34_10_*``.
- Figure sweeps (no numbers in the paper's text, ``paper == {}``): ``fig1b_at_e{N}`` (AT with
  training eps N/255, Fig. 1(b)), ``fig3a_r{rho:.1f}`` (SAAT, eps_max 128/255, Fig. 3(a)),
  ``fig3b_e{N}`` (SAAT, rho 1.5, Fig. 3(b)), ``fig2_wrn34_{x}_at`` (AT 8/255 on WRN-34-x, Fig. 2),
  ``fig3e_wrn34_{x}_saat`` (SAAT rho 1.5, eps_max 128/255 on WRN-34-x, Fig. 3(e)); see
  :data:`FIGURES`.

Budgets are in units of 1/255 (``eps_max_255=14`` means 14/255), accuracies in percent.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping, Optional

Triple = tuple[float, float, float]  # (Natural, PGD-20, AA) in %

TABLE_NAMES = ("table1", "table2", "table3")
CHECKPOINTS = ("best", "last")
METRICS = ("natural", "pgd20", "aa")


@dataclasses.dataclass(frozen=True)
class Row:
  """One experiment of the paper.

  ``paper`` maps a table name ('table1', 'table2', 'table3') to ``{'best': (natural, pgd20, aa) or
  None, 'last': ... or None}`` in percent, as printed (Table 2 has only best, Table 3 only last).
  ``eps_max_255``/``rho`` are SA-PGD's maximum budget and minimum adversarial loss (SAAT and
  SA-TRADES rows); ``train_eps_255`` is the fixed training budget of AT/TRADES rows.
  """
  id: str
  label: str
  dataset: str  # 'cifar10' | 'cifar100'
  model: str  # 'preact_resnet18' | 'wrn34_<x>'
  method: str  # 'at' | 'saat' | 'trades' | 'sa_trades'
  awp: bool = False
  eps_max_255: Optional[float] = None
  rho: Optional[float] = None
  train_eps_255: Optional[float] = None
  paper: Mapping[str, Mapping[str, Optional[Triple]]] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class Figure:
  """A sweep of a figure: ``rows`` are ``(x value, row id)`` in the order of the x axis."""
  id: str
  title: str
  x_name: str
  rows: tuple[tuple[float, str], ...]


# --------------------------------------------------------------------------------------------
# Table 1: CIFAR-10, PreAct ResNet-18, eps = 8/255. id: ((best N, PGD-20, AA), (last N, PGD-20, AA))
# --------------------------------------------------------------------------------------------

_TABLE1: dict[str, tuple[Triple, Triple]] = {
    "at": ((82.02, 52.59, 48.23), (83.89, 45.28, 42.88)),
    "saat_down": ((82.97, 52.87, 45.54), (85.31, 47.06, 42.77)),
    "saat_up_e9_r1.5": ((81.04, 53.00, 47.72), (82.82, 46.49, 43.66)),
    "saat_up_e10_r1.5": ((80.81, 53.63, 47.83), (82.14, 48.14, 44.67)),
    "saat_up_e11_r1.5": ((77.99, 54.38, 47.90), (80.55, 48.86, 44.85)),
    "saat_up_e12_r1.5": ((77.50, 54.78, 48.04), (79.44, 50.03, 45.42)),
    "saat_up_e13_r1.5": ((77.40, 55.21, 48.26), (78.48, 51.68, 45.55)),
    "saat_up_e14_r1.5": ((76.80, 55.59, 48.61), (77.44, 52.80, 46.46)),  # printed again in the rho sweep
    "saat_up_e15_r1.5": ((76.62, 56.18, 48.45), (76.36, 53.62, 46.12)),
    "saat_up_e16_r1.5": ((75.54, 56.22, 48.12), (75.52, 54.17, 46.07)),
    "saat_up_e17_r1.5": ((74.21, 56.35, 47.95), (74.49, 54.33, 45.73)),
    "saat_up_e18_r1.5": ((73.89, 56.49, 47.64), (73.55, 54.79, 45.66)),
    "saat_up_e19_r1.5": ((73.68, 56.12, 46.63), (72.67, 54.72, 45.46)),
    "saat_up_e20_r1.5": ((71.89, 56.11, 45.96), (72.15, 54.62, 44.94)),
    "saat_up_e14_r1.3": ((78.40, 54.87, 48.08), (78.49, 51.68, 45.77)),
    "saat_up_e14_r1.4": ((77.45, 55.04, 48.23), (78.20, 52.40, 45.79)),
    "saat_up_e14_r1.6": ((76.48, 56.08, 48.76), (77.16, 53.11, 46.57)),
    "saat_up_e14_r1.7": ((76.37, 56.31, 48.86), (76.38, 53.86, 47.17)),
    "saat_up_e14_r1.8": ((75.51, 56.18, 48.85), (76.11, 53.42, 46.73)),
    "saat_up_e14_r1.9": ((75.10, 55.58, 48.59), (75.46, 53.20, 46.53)),
    "saat_up_e14_r2.0": ((74.63, 55.62, 48.36), (75.06, 53.12, 46.29)),
    "awp_at": ((81.47, 55.54, 49.96), (80.20, 54.88, 49.28)),
    "awp_saat_down": ((83.74, 56.97, 48.38), (82.85, 55.16, 46.99)),
    "awp_saat_up_e9_r1.5": ((79.55, 55.95, 50.32), (78.08, 54.93, 49.36)),
    "awp_saat_up_e10_r1.5": ((78.14, 56.20, 49.98), (76.66, 55.12, 48.89)),
    "awp_saat_up_e11_r1.5": ((77.17, 56.43, 49.87), (74.98, 55.26, 48.74)),
    "awp_saat_up_e12_r1.5": ((76.00, 56.76, 49.43), (73.49, 55.33, 48.22)),
    "awp_saat_up_e9_r1.6": ((79.52, 56.00, 50.35), (78.06, 54.97, 49.12)),
    "awp_saat_up_e9_r1.7": ((79.49, 56.25, 50.67), (77.91, 55.22, 49.29)),
    "awp_saat_up_e9_r1.8": ((79.32, 56.05, 50.26), (77.88, 54.98, 49.18)),
    "awp_saat_up_e9_r1.9": ((78.96, 55.97, 50.20), (77.81, 54.69, 48.92)),
}

# --------------------------------------------------------------------------------------------
# Tables 2 (best) and 3 (last), in the paper's order. id: (Table 2 best, Table 3 last)
# --------------------------------------------------------------------------------------------

_TABLES23: dict[str, tuple[Triple, Triple]] = {
    "at": ((82.02, 52.59, 48.23), (83.89, 45.28, 42.88)),
    "saat_up_e14_r1.7": ((76.37, 56.31, 48.86), (76.38, 53.86, 47.17)),
    "awp_at": ((81.47, 55.54, 49.96), (80.20, 54.88, 49.28)),
    "awp_saat_up_e9_r1.7": ((79.49, 56.25, 50.67), (77.91, 55.22, 49.29)),
    "cifar100_at": ((55.95, 28.84, 24.71), (56.75, 21.12, 19.35)),
    "cifar100_saat_up": ((53.20, 29.29, 25.25), (54.52, 22.32, 20.12)),
    "cifar100_awp_at": ((56.64, 32.02, 26.43), (57.18, 31.64, 26.45)),
    "cifar100_awp_saat_up": ((54.36, 32.09, 26.98), (55.08, 31.72, 27.04)),
    "trades": ((81.09, 52.70, 48.91), (82.40, 49.98, 47.02)),
    "sa_trades_up": ((81.76, 53.44, 50.04), (81.30, 51.13, 47.99)),
    "awp_trades": ((81.64, 55.52, 51.38), (81.87, 55.41, 51.27)),
    "awp_sa_trades_up": ((80.76, 55.98, 51.72), (80.64, 55.62, 51.60)),
    "wrn34_10_at": ((85.47, 54.87, 51.70), (86.16, 46.94, 45.68)),
    "wrn34_10_saat_up": ((79.94, 58.52, 52.36), (80.19, 55.47, 49.98)),
    "wrn34_10_awp_at": ((86.00, 58.78, 54.06), (87.08, 57.96, 53.41)),
    "wrn34_10_awp_saat_up": ((83.55, 59.20, 54.64), (84.05, 58.76, 54.16)),
}

# The paper does not state eps_max / rho of the Table 2/3 SAAT_up and SA-TRADES_up rows outside
# CIFAR-10 PreAct ResNet-18; we assume its CIFAR-10 PreAct ResNet-18 choices (the best rows of
# Table 1): SAAT_up / SA-TRADES_up eps_max 14, rho 1.7; AWP-SAAT_up / AWP-SA-TRADES_up eps_max 9,
# rho 1.7. The labels stay as the paper prints them.
_UP = dict(eps_max_255=14.0, rho=1.7)
_AWP_UP = dict(eps_max_255=9.0, rho=1.7)

# id: (label, dataset, model, method, awp, hyper-parameters)
_TABLES23_ONLY = {
    "cifar100_at": ("AT", "cifar100", "preact_resnet18", "at", False, dict(train_eps_255=8.0)),
    "cifar100_saat_up": ("SAAT_up", "cifar100", "preact_resnet18", "saat", False, _UP),
    "cifar100_awp_at": ("AWP-AT", "cifar100", "preact_resnet18", "at", True, dict(train_eps_255=8.0)),
    "cifar100_awp_saat_up": ("AWP-SAAT_up", "cifar100", "preact_resnet18", "saat", True, _AWP_UP),
    "trades": ("TRADES", "cifar10", "preact_resnet18", "trades", False, dict(train_eps_255=8.0)),
    "sa_trades_up": ("SATRADES_up", "cifar10", "preact_resnet18", "sa_trades", False, _UP),
    "awp_trades": ("AWP-TRADES", "cifar10", "preact_resnet18", "trades", True, dict(train_eps_255=8.0)),
    "awp_sa_trades_up": ("AWP-SATRADES_up", "cifar10", "preact_resnet18", "sa_trades", True, _AWP_UP),
    "wrn34_10_at": ("AT", "cifar10", "wrn34_10", "at", False, dict(train_eps_255=8.0)),
    "wrn34_10_saat_up": ("SAAT_up", "cifar10", "wrn34_10", "saat", False, _UP),
    "wrn34_10_awp_at": ("AWP-AT", "cifar10", "wrn34_10", "at", True, dict(train_eps_255=8.0)),
    "wrn34_10_awp_saat_up": ("AWP-SAAT_up", "cifar10", "wrn34_10", "saat", True, _AWP_UP),
}


def _fmt(v: float) -> str:
  """14.0 -> '14', 1.5 -> '1.5' (as the paper prints budgets and losses)."""
  return f"{v:g}"


def _table1_row(row_id: str, best: Triple, last: Triple) -> Row:
  """A Table 1 row from its id (``[awp_]at``, ``[awp_]saat_down``, ``[awp_]saat_up_e{E}_r{R}``)."""
  awp = row_id.startswith("awp_")
  base = row_id[4:] if awp else row_id
  prefix = "AWP-" if awp else ""
  if base == "at":
    label, hp = f"{prefix}AT", dict(method="at", train_eps_255=8.0)
  elif base == "saat_down":
    label, hp = f"{prefix}SAAT_down (eps_max=8, rho=1.5)", dict(method="saat", eps_max_255=8.0, rho=1.5)
  else:
    e, r = base[len("saat_up_e"):].split("_r")
    label = f"{prefix}SAAT_up (eps_max={e}, rho={r})"
    hp = dict(method="saat", eps_max_255=float(e), rho=float(r))
  return Row(id=row_id, label=label, dataset="cifar10", model="preact_resnet18", awp=awp,
             paper={"table1": {"best": best, "last": last}}, **hp)


def _with_tables23(row: Row, best: Triple, last: Triple) -> Row:
  paper = dict(row.paper, table2={"best": best, "last": None}, table3={"best": None, "last": last})
  return dataclasses.replace(row, paper=paper)


def _figure_rows() -> tuple[dict[str, Row], dict[str, Figure]]:
  """The sweeps of Figures 1(b), 2, 3(a), 3(b) and 3(e) (CIFAR-10; PreAct ResNet-18 unless WRN)."""
  rows: dict[str, Row] = {}
  figures: dict[str, Figure] = {}

  def add(fig_id, title, x_name, items):
    for x, row in items:
      rows[row.id] = row
    figures[fig_id] = Figure(fig_id, title, x_name, tuple((float(x), row.id) for x, row in items))

  pr18 = dict(dataset="cifar10", model="preact_resnet18")
  add("fig1b", "Fig. 1(b): AT with different training budgets", "training eps (/255)",
      [(n, Row(f"fig1b_at_e{n}", f"AT (eps={n})", method="at", train_eps_255=float(n), **pr18))
       for n in (2, 4, 6, 8, 10, 12, 14, 16)])
  rhos = [round(0.2 * i, 1) for i in range(12)]  # 0.0, 0.2, ..., 2.2
  add("fig3a", "Fig. 3(a): SAAT with varied rho (eps_max=128)", "rho",
      [(r, Row(f"fig3a_r{r:.1f}", f"SAAT (eps_max=128, rho={r:.1f})", method="saat", eps_max_255=128.0,
               rho=r, **pr18)) for r in rhos])
  add("fig3b", "Fig. 3(b): SAAT with varied eps_max (rho=1.5)", "eps_max (/255)",
      [(n, Row(f"fig3b_e{n}", f"SAAT (eps_max={n}, rho=1.5)", method="saat", eps_max_255=float(n), rho=1.5,
               **pr18)) for n in (0, 2, 4, 6, 8, 10, 12, 14, 16, 24, 32, 64, 128)])
  widths = (1, 3, 5, 7, 10)
  add("fig2", "Fig. 2: AT (eps=8) on WRN-34-x", "WRN-34-x width",
      [(x, Row(f"fig2_wrn34_{x}_at", f"AT (eps=8), WRN-34-{x}", dataset="cifar10", model=f"wrn34_{x}",
               method="at", train_eps_255=8.0)) for x in widths])
  add("fig3e", "Fig. 3(e): SAAT (eps_max=128, rho=1.5) on WRN-34-x", "WRN-34-x width",
      [(x, Row(f"fig3e_wrn34_{x}_saat", f"SAAT (eps_max=128, rho=1.5), WRN-34-{x}", dataset="cifar10",
               model=f"wrn34_{x}", method="saat", eps_max_255=128.0, rho=1.5)) for x in widths])
  return rows, figures


def _build() -> tuple[dict[str, Row], dict[str, Figure], dict[str, list[str]]]:
  rows = {i: _table1_row(i, best, last) for i, (best, last) in _TABLE1.items()}
  for i, (best, last) in _TABLES23.items():
    if i not in rows:
      label, dataset, model, method, awp, hp = _TABLES23_ONLY[i]
      rows[i] = Row(i, label, dataset, model, method, awp, **hp)
    rows[i] = _with_tables23(rows[i], best, last)
  fig_rows, figures = _figure_rows()
  rows.update(fig_rows)
  tables = {"table1": list(_TABLE1), "table2": list(_TABLES23), "table3": list(_TABLES23)}
  return rows, figures, tables


ROWS, FIGURES, TABLES = _build()


def get_row(name: str) -> Row:
  """The :class:`Row` called ``name``; an unknown name raises ``ValueError`` with close matches."""
  if name in ROWS:
    return ROWS[name]
  close = difflib.get_close_matches(str(name), list(ROWS), n=5, cutoff=0.6)
  hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
  raise ValueError(f"unknown paper row {name!r}; {hint}The row ids are the keys of saat_jax.paper.ROWS "
                   "(e.g. 'at', 'saat_up_e14_r1.7', 'cifar100_saat_up', 'fig3a_r1.4'); the id scheme is "
                   "listed in the docstring of saat_jax/paper.py.")


def tables_of(row_id: str) -> list[str]:
  """The paper tables (in :data:`TABLE_NAMES` order) that print row ``row_id``."""
  return [t for t in TABLE_NAMES if row_id in TABLES[t]]


def figure_of(row_id: str) -> Optional[tuple[str, float]]:
  """``(figure id, x value)`` of a figure-sweep row, or ``None``."""
  for fig in FIGURES.values():
    for x, rid in fig.rows:
      if rid == row_id:
        return fig.id, x
  return None
