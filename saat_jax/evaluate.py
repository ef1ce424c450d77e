"""Evaluation of a run's checkpoints: ``python -m saat_jax.evaluate --workdir runs/x``.

The Natural / PGD-20 / AA columns of Table 1 and accuracy against the test budget with RD (Fig. 1a).
The numbers come from :mod:`saat_jax.evaluators` (the same evaluator types as training's per-epoch
evaluation, ``config.evals``) on weights restored by :mod:`saat_jax.run_state`: the flags become
evaluator entries (:func:`cli_evals`): ``natural`` and ``pgd`` of ``--eval.attacks`` the columns of
a ``robustness`` entry, ``aa`` an ``autoattack`` one, ``--eval.sweep`` a ``sweep`` one; another
name in ``--eval.attacks`` is an entry of the run's ``config.evals`` (or a registered type), stored
under its own columns' keys. ``best`` and ``last`` at the same
epoch with the same weights are evaluated once. ``--eval.steps=k`` / ``--eval.restarts=r`` set the
PGD column's attack (PGD-20 with one random start by default); it is stored under ``pgd<k>``, so
only PGD-20 fills the report's PGD-20 column.

  python -m saat_jax.evaluate --workdir runs/digits --eval.num_test=100 --eval.attacks=natural,pgd
  python -m saat_jax.evaluate --workdir runs/digits --eval.steps=50 --eval.restarts=5 --out runs/digits/eval_pgd50.json
  python -m saat_jax.evaluate --help
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from typing import Optional

import jax
import numpy as np

from saat_jax import evaluators, parallel
from saat_jax.evaluators import RobustnessEvaluator, accuracy_order_check  # noqa: F401  (RobustnessEvaluator: the tests patch it here)
from saat_jax.run_state import restore_for_eval, run_keys


# --------------------------------------------------------------------------------------------
# Evaluation of a run: `python -m saat_jax.evaluate --workdir runs/x`
# --------------------------------------------------------------------------------------------

ATTACKS = ("natural", "pgd", "aa")  # pgd: PGD-<eval.steps>; pgd20 is accepted for it when steps = 20
PGD_KEY = re.compile(r"pgd(\d+)")
# The evaluator type (saat_jax.evaluators) each of ATTACKS is a column of; a name of --eval.attacks
# outside ATTACKS is an entry of the run's config.evals or a registered type of another kind.
ATTACK_TYPES = {"natural": "robustness", "pgd": "robustness", "aa": "autoattack"}
FLAG_TYPES = ("robustness", "autoattack", "sweep")  # the types the flags make; not named in --eval.attacks


def pgd_key(steps: int) -> str:
  """The column of PGD-``steps`` in eval.json: ``pgd20`` for the paper's PGD-20, ``pgd50`` for PGD-50."""
  return f"pgd{int(steps)}"


def column_name(key: str) -> str:
  """``'PGD-50'`` for ``'pgd50'``; Natural, AA, RD and the columns of other evaluators, as their
  types name them (:func:`saat_jax.evaluators.column_display`)."""
  return evaluators.column_display(key) or key


def other_attacks(run_evals=None) -> list[str]:
  """The names ``--eval.attacks`` takes besides :data:`ATTACKS`: the entries of the run's
  ``config.evals`` and the registered evaluator types, other than those the flags make
  (:data:`FLAG_TYPES`)."""
  run_evals = {} if run_evals is None else (run_evals.to_dict() if hasattr(run_evals, "to_dict") else dict(run_evals))
  names = [n for n, e in run_evals.items() if isinstance(e, dict) and e.get("type") not in FLAG_TYPES]
  return names + [t for t in evaluators.EVALUATORS if t not in FLAG_TYPES and t not in names]


def cli_evals(attacks, *, steps: int, sweep=(), sweep_attack: str = "pgd", run_evals=None) -> list:
  """The evaluator entries of the flags, as ``config.evals`` writes them: ``[(name, entry, keep)]``,
  ``keep`` the eval.json columns of that entry to store (``None``: all it yields). ``natural`` and
  ``pgd`` are the columns of one ``robustness`` entry, ``aa`` of an ``autoattack`` one, ``sweep`` a
  ``sweep`` entry; another name is the run's ``config.evals`` entry of that name, else an entry of the
  registered type of that name. Their settings come from the flags (``settings`` of
  :func:`evaluate_run`) unless the run's entry sets its own. In table order (the types' rank)."""
  run_evals = {} if run_evals is None else (run_evals.to_dict() if hasattr(run_evals, "to_dict") else dict(run_evals))
  allowed = other_attacks(run_evals)
  out: dict = {}
  for a in attacks:
    if a in ATTACK_TYPES:
      name, entry, keep = ATTACK_TYPES[a], {"type": ATTACK_TYPES[a]}, {"natural": "natural", "aa": "aa"}.get(a, pgd_key(steps))
      out.setdefault(name, (entry, set()))[1].add(keep)
    elif a in allowed:
      out[a] = (run_evals.get(a, {"type": a}), None)
    else:
      raise ValueError(f"--eval.attacks: unknown attack {a!r}; choose from {', '.join([*ATTACKS, *allowed])}")
  if sweep:
    out["sweep"] = ({"type": "sweep", "budgets": list(sweep), "attack": sweep_attack}, None)
  rank = lambda item: evaluators.registry.get_type(item[1][0]["type"]).rank
  return [(name, entry, keep) for name, (entry, keep) in sorted(out.items(), key=rank)]


def eval_config():
  """The evaluation's settings, overridden on the command line as ``--eval.<key>=<value>`` in the
  style of ``launch.py``'s ``--config.<key>=<value>`` (budgets in /255, lists comma-separated);
  :data:`SETTING_HELP` says what each means."""
  import ml_collections
  from ml_collections.config_dict import placeholder

  c = ml_collections.ConfigDict()
  c.checkpoints = "best,last"
  c.attacks = ",".join(ATTACKS)
  c.eps = placeholder(float)
  c.alpha = placeholder(float)
  c.steps = 20
  c.restarts = 1
  c.num_test = 0
  c.batch_size = placeholder(int)
  c.aa_version = "standard"
  c.sweep = ""
  c.sweep_attack = "pgd"
  c.data_dir = placeholder(str)
  c.seed = placeholder(int)
  c.weights = "raw"
  c.dtype = placeholder(str)
  return c


SETTING_HELP = {
    "checkpoints": "which checkpoints, a comma list of best,last (one at the same epoch with the same weights "
                   "as the other is evaluated once)",
    "attacks": "columns, a comma list of natural, pgd (PGD-<steps>; pgd20 also works with steps=20), aa "
               "(AutoAttack), or the name of an entry of the run's config.evals or of a registered evaluator type "
               "(saat_jax.evaluators.register_evaluator)",
    "eps": "test budget in /255; default: the run's eval.eps (8 for CIFAR, 32 for digits)",
    "alpha": "PGD step size in /255; default: the run's eval.alpha (2 for CIFAR)",
    "steps": "PGD steps: 20 is the paper's PGD-20 (column pgd20); another k is stored and shown as PGD-k (pgd<k>)",
    "restarts": "PGD random starts per point, the worst one counting (1: the paper's single random start)",
    "num_test": "the first N test points; 0: all of them",
    "batch_size": "points per batch; default: the run's eval.batch_size",
    "aa_version": "AutoAttack version: standard, plus or rand",
    "sweep": "budgets in /255 of the accuracy-against-eps sweep and its RD (Fig. 1(a)), e.g. 0,2,4,...,16; "
             "'default': 0 to 16 by 2; empty: no sweep. Its PGD follows the released code (alpha 2/255, "
             "2.5 steps per 1/255), whatever --eval.steps",
    "sweep_attack": "the sweep's attack: pgd or aa",
    "data_dir": "data location; default: the run's data.data_dir",
    "seed": "seed of the random starts; default: those of the run's own per-epoch evaluation (so PGD-20 "
            "repeats its numbers)",
    "weights": "raw, or ema (runs trained with ema.decay > 0)",
    "dtype": "compute dtype, float32 or bfloat16; default: the run's model.dtype",
}


USAGE = """python -m saat_jax.evaluate --workdir runs/x [--eval.<key>=<value> ...] [--out eval.json]

Natural / PGD-20 / AutoAttack accuracy of a run's checkpoints (Table 1) and accuracy against the
test budget with RD (Fig. 1a). Results are merged into <workdir>/eval.json: what an earlier
evaluation measured and this one does not is kept; an eval.json measured with other settings (eps,
alpha, PGD steps or restarts, weights, points, seed) is kept as eval-<time>.json. Settings
(--eval.<key>=<default>: meaning; budgets in /255, '?' for a default taken from the run):
"""


def usage_text() -> str:
  """``--help``: the usage and every setting with its default and meaning."""
  import textwrap

  rows = [(f"--eval.{k}={'?' if v is None else v}", SETTING_HELP[k]) for k, v in eval_config().items()]
  rows += [("--workdir DIR", "the run (launch.py --workdir); required"),
           ("--out PATH", "the JSON written (default <workdir>/eval.json)")]
  lines = []
  for flag, what in rows:
    if len(flag) > 26:
      lines.append(f"  {flag}")
    lead = f"  {flag:<26} " if len(flag) <= 26 else " " * 29
    lines.append(textwrap.fill(what, width=100, initial_indent=lead, subsequent_indent=" " * 29))
  return USAGE + "\n".join(lines)


def _fail(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def _parse_list(s, what: str, cast=float):
  try:
    return [cast(v) for v in str(s).split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--eval.{what} must be a comma-separated list, got {s!r}") from None


def normalize_attacks(attacks, steps: int = 20, extra=()) -> list[str]:
  """``attacks`` as :data:`ATTACKS` names (``pgd<k>`` is ``pgd`` when ``k == steps``, ``pgd20``
  with the default steps) or names of ``extra`` (:func:`other_attacks`; ``None``: any other name,
  checked by :func:`cli_evals`); ValueError for another ``k`` or an unknown attack."""
  out = []
  for a in attacks:
    m = PGD_KEY.fullmatch(a)
    if m and int(m.group(1)) != steps:
      raise ValueError(f"--eval.attacks: {a} asks for PGD-{m.group(1)} but --eval.steps={steps}; write pgd "
                       f"(the PGD of --eval.steps) or set --eval.steps={m.group(1)}")
    a = "pgd" if m else a
    if a not in ATTACKS and extra is not None and a not in extra:
      raise ValueError(f"--eval.attacks: unknown attack {a!r}; choose from {', '.join([*ATTACKS, *extra])}")
    if a not in out:
      out.append(a)
  return out


def run_evals(workdir: str) -> dict:
  """The ``evals`` of the run's ``config.json`` (``{}`` without one): the names ``--eval.attacks``
  may use besides :data:`ATTACKS`."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      evals = json.load(f).get("evals")
  except (OSError, ValueError, AttributeError):
    return {}
  return evals if isinstance(evals, dict) else {}


def _check_settings(ev, extra=()) -> tuple[list, list, list]:
  """(checkpoints, attacks, sweep) of the settings, or ValueError saying which flag is wrong;
  ``extra``: the attack names besides :data:`ATTACKS` (:func:`other_attacks`)."""
  from saat_jax import checkpointing

  kinds = _parse_list(ev.checkpoints, "checkpoints", str)
  if not ev.steps >= 1:
    raise ValueError(f"--eval.steps must be >= 1 (the PGD steps; 20 for the paper's PGD-20), got {ev.steps}")
  if not ev.restarts >= 1:
    raise ValueError(f"--eval.restarts must be >= 1 (random starts per point), got {ev.restarts}")
  attacks = normalize_attacks(_parse_list(ev.attacks, "attacks", str), ev.steps, extra)
  for k in kinds:
    if k not in checkpointing.KINDS:
      raise ValueError(f"--eval.checkpoints: unknown checkpoint {k!r}; choose from {', '.join(checkpointing.KINDS)}")
  if ev.eps is not None and not ev.eps >= 0:
    raise ValueError(f"--eval.eps must be >= 0 (in /255), got {ev.eps}")
  if ev.alpha is not None and not ev.alpha > 0:
    raise ValueError(f"--eval.alpha must be > 0 (in /255), got {ev.alpha}")
  if ev.num_test < 0:
    raise ValueError(f"--eval.num_test must be >= 0 (the first N test points; 0: all of them), got {ev.num_test}")
  if ev.batch_size is not None:
    n_dev = jax.device_count()
    if ev.batch_size < 1:
      raise ValueError(f"--eval.batch_size must be >= 1, got {ev.batch_size} (default: the run's eval.batch_size)")
    if ev.batch_size % n_dev:
      raise ValueError(f"--eval.batch_size={ev.batch_size} is not divisible by the {n_dev} devices; "
                       f"{parallel.nearest_multiples_hint(ev.batch_size, n_dev)}")
  sweep = [0, 2, 4, 6, 8, 10, 12, 14, 16] if ev.sweep == "default" else _parse_list(ev.sweep, "sweep")
  if any(not e >= 0 for e in sweep):
    raise ValueError(f"--eval.sweep budgets must be >= 0, got {sweep}")
  if ev.sweep_attack not in ("pgd", "aa"):
    raise ValueError(f"--eval.sweep_attack must be pgd or aa, got {ev.sweep_attack!r}")
  if ev.weights not in ("raw", "ema"):
    raise ValueError(f"--eval.weights must be raw or ema, got {ev.weights!r}")
  return kinds, attacks, sweep


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags

  from saat_jax import checkpointing
  from saat_jax.data import DataError

  argv = sys.argv[1:] if argv is None else list(argv)
  fv = flags.FlagValues()  # a fresh set per call: main() can run many times in one process
  flags.DEFINE_string("workdir", None, "The run's work dir (launch.py --workdir).", flag_values=fv)
  flags.DEFINE_string("out", None, "JSON path (default <workdir>/eval.json).", flag_values=fv)
  if {"-h", "--help", "-help", "--helpfull"} & set(argv):
    print(usage_text())
    return 0
  try:
    config_flags.DEFINE_config_dict("eval", eval_config(), "Evaluation settings.", flag_values=fv,
                                    sys_argv=["saat_jax.evaluate", *argv])  # the overrides it accepts
    fv(["saat_jax.evaluate", *argv])
  except (AttributeError, KeyError):  # ml_collections: an --eval.<key> that is not a setting
    import difflib
    known = list(eval_config())
    bad = [a.split("=")[0][len("--eval."):] for a in argv if a.startswith("--eval.")]
    bad = [k for k in bad if k not in known]
    close = difflib.get_close_matches(bad[0], known, n=1) if bad else []
    return _fail(f"unknown setting --eval.{bad[0] if bad else '?'}"
                 + (f" (did you mean --eval.{close[0]}?)" if close else "") + f"; settings: {', '.join(known)}")
  except (flags.Error, ValueError, TypeError) as e:
    return _fail(f"{e}\nusage: {USAGE.splitlines()[0]}")
  if not fv.workdir:
    return _fail(f"--workdir is required\nusage: {USAGE.splitlines()[0]}")
  workdir, ev = fv.workdir, fv["eval"].value
  try:
    kinds, attacks, sweep = _check_settings(ev, other_attacks(run_evals(workdir)))
  except ValueError as e:
    return _fail(str(e))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return _fail(f"no checkpoint in {workdir} (expected {workdir}/checkpoints/{{best,last}}); "
                 "train first with launch.py --workdir")
  try:
    report = evaluate_run(workdir, kinds=kinds, attacks=attacks,
                          eps=None if ev.eps is None else ev.eps / 255,
                          alpha=None if ev.alpha is None else ev.alpha / 255,
                          num_test=ev.num_test, batch_size=ev.batch_size, aa_version=ev.aa_version,
                          sweep=sweep, sweep_attack=ev.sweep_attack, data_dir=ev.data_dir,
                          seed=ev.seed, progress=True, weights=ev.weights, dtype=ev.dtype,
                          steps=ev.steps, restarts=ev.restarts)
  except (checkpointing.CheckpointError, DataError, ValueError) as e:
    return _fail(str(e))
  out = fv.out or os.path.join(workdir, "eval.json")
  measured = report
  report, kept = merge_into(out, report)
  print(format_table(report))
  for kind, row in measured["checkpoints"].items():
    if row.get("same_as"):
      print(f"{kind}: the same checkpoint as {row['same_as']} (epoch {row['epoch']}, identical weights); "
            f"evaluated once, its numbers copied")
  if sweep:
    png = os.path.splitext(out)[0] + "_sweep.png"
    plot_sweep(report, png)
    print(f"sweep plot: {png}")
  if kept:
    print(f"the earlier {out} was measured with other settings; kept as {kept}")
  print(f"written: {out}")
  return 0


# What makes two evaluations comparable: the numbers of both may share one eval.json. A setting an
# older eval.json does not record had the value of SETTING_DEFAULTS.
SETTINGS = ("eps_255", "alpha_255", "weights", "num_test", "seed", "aa_version", "sweep_attack", "dtype",
            "pgd_steps", "pgd_restarts")
SETTING_DEFAULTS = {"pgd_steps": 20, "pgd_restarts": 1}


def merge_into(path: str, report: dict) -> tuple[dict, Optional[str]]:
  """Write ``report`` to ``path`` without losing an earlier evaluation there.

  With the same settings (``SETTINGS``) the earlier file's numbers that this report did not measure
  are kept (per checkpoint and column; a checkpoint's numbers are kept only for the same epoch). With
  other settings, or a file that is not an evaluation, the earlier file is renamed
  ``<name>-<time>.json`` beside it. Returns the report as written and the renamed path (or None).
  """
  import datetime

  old, kept = None, None
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
      if not isinstance(old, dict) or not isinstance(old.get("checkpoints"), dict):
        raise ValueError("not an evaluation")
    except ValueError:
      old = None
    if old is None or any(old.get(k, SETTING_DEFAULTS.get(k)) != report.get(k, SETTING_DEFAULTS.get(k))
                          for k in SETTINGS):
      stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y%m%d-%H%M%S")
      root, ext = os.path.splitext(path)
      kept = f"{root}-{stamp}{ext}"
      n = 1
      while os.path.exists(kept):
        n += 1
        kept = f"{root}-{stamp}-{n}{ext}"
      os.replace(path, kept)
      old = None
  if old is not None:
    merged = {kind: dict(row) for kind, row in old["checkpoints"].items()}
    for kind, row in report["checkpoints"].items():
      prev = merged.get(kind)
      if prev and prev.get("epoch") == row.get("epoch"):
        if "sweep" in row:
          prev.pop("rd", None)  # the RD of an earlier sweep belongs to that sweep
        checks = row.get("checks", []) + [c for c in prev.get("checks", [])  # AA's checks stay with AA
                                          if c.get("check") not in {n.get("check") for n in row.get("checks", [])}]
        merged[kind] = {**prev, **row, **({"checks": checks} if checks else {})}
      else:
        merged[kind] = dict(row)
    columns = {**(old.get("columns") if isinstance(old.get("columns"), dict) else {}), **report.get("columns", {})}
    report = {**report, "checkpoints": merged, **({"columns": columns} if columns else {})}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)
  return report, kept


def _same_weights(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


def evaluate_run(workdir, *, kinds=("best", "last"), attacks=("natural", "pgd20", "aa"), eps=None, alpha=None,
                 num_test=0, batch_size=None, aa_version="standard", sweep=(), sweep_attack="pgd",
                 data_dir=None, seed=0, progress=False, weights="raw", dtype=None, steps=20, restarts=1) -> dict:
  """Evaluate checkpoints of a run; returns a JSON-able report (see ``format_table``).

  ``eps``/``alpha`` default to the run's own ``eval.eps``/``eval.alpha``, and PGD starts from the
  same random points as the per-epoch evaluation of training, so PGD-20 here repeats those numbers.
  The PGD column is PGD-``steps`` with ``restarts`` random starts, stored under ``pgd<steps>``
  (``attacks`` names it ``pgd``, or ``pgd<steps>``). A checkpoint at the epoch of one already
  evaluated, with identical weights (``best`` when the last epoch was the best), is not evaluated
  again: its row is a copy, with ``same_as`` naming the other.

  The columns are measured by the evaluators of :mod:`saat_jax.evaluators` that :func:`cli_evals`
  makes of ``attacks`` and ``sweep`` (the types training's ``config.evals`` names), each storing its
  values under its columns' keys; a name of ``attacks`` outside :data:`ATTACKS` is an entry of the
  run's ``config.evals`` or a registered type, stored under its own columns' keys.
  """
  from tqdm.auto import tqdm

  from saat_jax.data import load_dataset

  attacks = normalize_attacks(attacks, steps, extra=None)
  key_pgd = pgd_key(steps)
  report = {"workdir": workdir, "checkpoints": {}, "sweep_attack": sweep_attack, "weights": weights,
            "aa_version": aa_version, "seed": seed, "dtype": dtype, "pgd_steps": int(steps),
            "pgd_restarts": int(restarts)}
  data = None
  done = []  # (kind, epoch, variables) evaluated so far
  for kind in kinds:
    model, variables, meta, cfg = restore_for_eval(workdir, kind, weights, dtype)
    twin = next((k for k, e, v in done if e == meta["epoch"] and _same_weights(v, variables)), None)
    if twin is not None:
      report["checkpoints"][kind] = {**copy.deepcopy(report["checkpoints"][twin]), "same_as": twin}
      continue
    done.append((kind, meta["epoch"], variables))
    if data is None:
      eps = float(cfg.eval.eps) if eps is None else eps
      alpha = float(cfg.eval.alpha) if alpha is None else alpha
      batch_size = int(cfg.eval.batch_size) if batch_size is None else batch_size
      entries = cli_evals(attacks, steps=steps, sweep=sweep, sweep_attack=sweep_attack, run_evals=cfg.get("evals"))
      # the flags' settings, which an entry of the run's config.evals may set otherwise
      settings = {"eps": eps, "alpha": alpha, "steps": int(steps), "restarts": int(restarts), "batch_size": batch_size,
                  "version": aa_version, "seed": seed or 0}
      problems = evaluators.config_problems({n: e for n, e, _ in entries}, settings)
      if problems:
        raise ValueError("the evaluation's evaluators: " + "; ".join(problems))
      report["eps_255"], report["alpha_255"] = eps * 255, alpha * 255
      key = jax.random.fold_in(run_keys(int(cfg.seed))[2], 0) if seed is None else jax.random.key(seed)
      data = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, source=cfg.data.source,
                          cache_dir=cfg.data.get("cache_dir"), download_url=cfg.data.get("download_url"),
                          download_md5=cfg.data.get("download_md5"))
      n = num_test or len(data.test_labels)
      images, labels = data.test_images[:n], data.test_labels[:n]
      report["num_test"] = int(len(labels))
    evs = evaluators.build_evaluators({n: e for n, e, _ in entries}, settings, apply_fn=model.apply)
    keep = {n: k for n, _, k in entries}
    row = {"epoch": meta["epoch"] + 1, "num_test": int(len(labels))}
    bar = tqdm(total=len(evs), desc=f"{kind}", disable=not progress, leave=False)
    for name, evaluator in evs:
      cols = {c.name: c.key for c in evaluator.columns}
      for out, value in evaluator.run(variables, images, labels, key):
        col = cols.get(out, out)
        if out in cols and keep[name] is not None and col not in keep[name]:
          continue  # natural without pgd: the column not asked for
        if col == "checks":  # AutoAttack's self-checks (and the order check below) share one list
          row.setdefault("checks", []).extend(value)
        else:
          row[col] = value
      bar.update(1)
    row.setdefault("checks", []).append(accuracy_order_check(row, num_points=len(labels), pgd_key=key_pgd))
    row = {**{k: v for k, v in row.items() if k not in ("sweep", "rd")},  # the sweep after the columns
           **{k: row[k] for k in ("sweep", "rd") if k in row}}
    bar.close()
    # each column's header, so that the report names (and shows) the columns of a type it has not registered
    report.setdefault("columns", {}).update({c.key: c.display for _, e in evs for c in e.columns if c.key in row})
    report["checkpoints"][kind] = row
  return report


def format_table(report: dict) -> str:
  """Table 1's layout: one row per checkpoint, accuracies in percent; the columns are the eval.json
  keys the registered evaluator types name (:func:`saat_jax.evaluators.column_order`)."""
  rows = report["checkpoints"].values()
  pgds = sorted({k for r in rows for k in r if PGD_KEY.fullmatch(k)}, key=lambda k: int(k[3:]))
  # the evaluators' columns in their order: Natural, PGD-k, AA, those of other types, RD
  cols = evaluators.column_order(k for r in rows for k in r)
  head = f"{'checkpoint':<12}{'epoch':>6}" + "".join(f"{column_name(c):>10}" for c in cols)
  units = "accuracies in %" + (", RD in % of accuracy lost per 1/255 of budget (Sec. 3.1)" if "rd" in cols else "")
  restarts = report.get("pgd_restarts", 1)
  pgd = f"; PGD with {restarts} random starts" if restarts > 1 and pgds else ""
  lines = [f"eps = {report['eps_255']:.3g}/255; {units}{pgd}", head, "-" * len(head)]
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
  twins = {r["same_as"]: kind for kind, r in report["checkpoints"].items() if r.get("same_as")}
  for kind, r in report["checkpoints"].items():
    if "sweep" not in r or r.get("same_as"):
      continue  # a copy of another checkpoint's row is that curve
    name = f"{kind} = {twins[kind]}" if kind in twins else kind
    label = f"{name} (RD {100 * r['rd']:.2f} %/(1/255))" if "rd" in r else name
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
