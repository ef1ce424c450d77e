"""Reading run directories: ``config.json``, ``metrics.jsonl`` and the ``eval*.json`` of
``python -m saat_jax.evaluate``, checked, into a :class:`Run`; and what a run is (its paper row,
method, hyper-parameters) and the numbers of its ``best`` and ``last`` checkpoints."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from saat_jax import metric_writer  # JAX-free: the one reader of metrics.jsonl
from saat_jax.evaluators.registry import column_display  # JAX-free: the evaluator types' column names
from saat_jax.paper import METRICS  # the paper's Table-1 columns: natural, pgd20, aa

KINDS = ("best", "last")
# Their headers (and RD's), as the evaluator types that write them name them (saat_jax.evaluators).
METRIC_NAMES = {k: column_display(k) for k in (*METRICS, "rd")}
REQUIRED_RECORD_KEYS = ("epoch", "test_natural_accuracy", "test_pgd_accuracy", "best_epoch")
# What an eval.json was measured with (saat_jax.evaluate.SETTINGS), and the defaults of files written
# before a setting was recorded.
EVAL_SETTINGS = ("eps_255", "alpha_255", "weights", "num_test", "seed", "aa_version", "sweep_attack", "dtype",
                 "pgd_steps", "pgd_restarts")
EVAL_SETTING_DEFAULTS = {"weights": "raw", "aa_version": "standard", "sweep_attack": "pgd", "pgd_steps": 20,
                         "pgd_restarts": 1}
OTHER_PGD = re.compile(r"pgd\d+")  # PGD-k columns of saat_jax.evaluate --eval.steps=k (pgd20 is PGD-20's)
JPEG_FORMAT = "image-folder-jpeg"  # metrics.jsonl's data_format of the JPEG-q75 re-encoded CIFAR copy


class ReportError(ValueError):
  """Bad input to the report: a missing or damaged file, no finished run, mixed data sets."""


@dataclasses.dataclass
class Run:
  """One run directory: its config, per-epoch records and merged evaluations."""
  dir: str
  config: dict
  metrics: list
  eval: dict  # {'best'|'last': {key: {'value', 'file', 'num_test', 'epoch'}}}
  eval_files: list
  eval_meta: dict  # {'sweep_attack', 'eps_255'} of the evaluations used
  name: str = ""  # unique and file-safe, from the folder: curves_<name>.png
  label: str = ""  # its name in figures (saat_jax.report.figures.run_labels)

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


def record_check(r: dict, where: str, records: list) -> Optional[str]:
  """What the report needs of a ``metrics.jsonl`` record beyond being one (``where`` is ``"<path>
  line N"``; ``records`` the ones before it): the keys it reads, integer epochs, accuracies as
  fractions, epochs increasing. None when the record passes."""
  # epochs skipped by eval.every > 1 carry no test metrics ("evaluated": false)
  required = REQUIRED_RECORD_KEYS if r.get("evaluated", True) else ("epoch", "best_epoch")
  missing = [k for k in required if k not in r]
  if missing:
    return f"{where} lacks {', '.join(missing)}; is it a metrics.jsonl of launch.py?"
  for k in ("epoch", "best_epoch"):
    if not isinstance(r[k], int) or isinstance(r[k], bool):
      return f"{where}: {k} = {r[k]!r} is not an integer"
  for k, v in r.items():
    if k.endswith("_accuracy") and not _is_fraction(v):
      return f"{where}: {k} = {v!r} is not a fraction in [0, 1]"
  if records and r["epoch"] <= records[-1]["epoch"]:
    return (f"{where}: epoch {r['epoch']} does not follow epoch {records[-1]['epoch']}; the file is damaged "
            "(resume the run to rewrite it)")
  return None


def read_metrics(path: str) -> list[dict]:
  """The records of ``metrics.jsonl``, checked: one JSON object a line (the reader training resumes
  with, :func:`saat_jax.metric_writer.read_metrics`, read strictly), the keys the report needs,
  accuracies as fractions and epochs increasing (:func:`record_check`). Errors name the file and the line."""
  if not os.path.isfile(path):
    raise ReportError(f"{path} is missing; a run directory needs the metrics.jsonl written by launch.py")
  try:
    return metric_writer.read_metrics(path, strict=True, check=record_check)[0]
  except metric_writer.MetricsFileError as e:
    raise ReportError(str(e)) from None


def config_get(config: dict, dotted: str, default=None):
  """``config['a']['b']`` for ``'a.b'``; ``default`` when a level is missing."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def _check_config(config: dict, path: str) -> None:
  for key in ("seed", "num_epochs", "method", "data.name", "model.name"):
    if config_get(config, key) is None:
      raise ReportError(f"{path} lacks {key}; is it the config.json written by launch.py?")
  if not isinstance(config["num_epochs"], int) or config["num_epochs"] < 1:
    raise ReportError(f"{path}: num_epochs = {config['num_epochs']!r} is not a positive integer")


def declared_columns(path: str, ev: dict) -> dict:
  """An eval.json's ``columns`` (``{key: header}``, written since evaluators by config): the columns of
  every evaluator type, also of one the reading process has not registered. Older files: ``{}``."""
  cols = ev.get("columns", {})
  if not isinstance(cols, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in cols.items()):
    raise ReportError(f"{path} is damaged: 'columns' must map each key to its header; rerun python -m saat_jax.evaluate")
  return {k: v for k, v in cols.items() if k not in ("sweep", "rd", "checks")}


def column_keys(entry: dict, declared: dict) -> list[str]:
  """The accuracy columns of one checkpoint's entry: the paper's, PGD-k, then the other declared ones."""
  pgd = sorted((k for k in entry if OTHER_PGD.fullmatch(k) and k not in METRICS), key=lambda k: int(k[3:]))
  other = sorted(k for k in declared if k in entry and k not in METRICS and not OTHER_PGD.fullmatch(k))
  return [*(k for k in METRICS if k in entry), *pgd, *other]


def _check_eval_entry(path: str, kind: str, entry, declared: dict) -> None:
  if not isinstance(entry, dict):
    raise ReportError(f"{path} is damaged: checkpoints.{kind} is not an object")
  for k in column_keys(entry, declared):
    if not _is_fraction(entry[k]):
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
                weights: str = "raw", epochs: Optional[dict] = None):
  """Merge ``eval*.json`` files in the given order (oldest first), later values winning per
  checkpoint and key. Natural/PGD-20/AA measured at a test eps other than ``ref_eps_255`` (the
  run's ``eval.eps``) are left out with a warning; sweeps (with their own budgets) are kept. A file
  of other weights (``"weights": "ema"`` when the run reports ``raw``, or the reverse) is left out.
  ``epochs`` (``{kind: 1-based epoch}``, the run's checkpoints now): a value measured on that
  epoch is not overridden by a later file's value of another epoch. Each value keeps the settings
  of its file (``EVAL_SETTINGS``), to repeat them when it must be measured again."""
  merged: dict = {}
  meta: dict = {}
  epochs = epochs or {}
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
    settings = {k: ev.get(k, EVAL_SETTING_DEFAULTS.get(k)) for k in EVAL_SETTINGS}
    declared = declared_columns(path, ev)
    meta.setdefault("columns", {}).update(declared)
    for kind, entry in cks.items():
      _check_eval_entry(path, kind, entry, declared)
      if kind not in KINDS:
        continue
      for key in (*column_keys(entry, declared), "sweep", "rd"):
        if key not in entry:
          continue
        if key not in ("sweep", "rd") and other_eps:
          warn(f"{path}: {kind} {metric_name(key)} is at eps {eps:g}/255, not the run's {ref_eps_255:g}/255; "
               "left out")
          continue
        prev = merged.get(kind, {}).get(key)
        now = epochs.get(kind)
        if (now is not None and prev is not None and prev["epoch"] == now and entry.get("epoch") is not None
            and entry["epoch"] != now):
          continue  # an older checkpoint's value does not replace the current one's
        merged.setdefault(kind, {})[key] = {"value": entry[key], "file": os.path.basename(path),
                                            "num_test": entry.get("num_test"), "epoch": entry.get("epoch"),
                                            "settings": settings}
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
  eps = config_get(config, "eval.eps")
  ref = None if eps is None else float(eps) * 255
  paths = _eval_paths(run_dir)
  now = {"best": metrics[-1]["best_epoch"] + 1, "last": metrics[-1]["epoch"] + 1} if metrics else None
  ev, meta = merge_evals(paths, ref, warn, weights=str(config_get(config, "eval.best_weights") or "raw"),
                         epochs=now)
  return Run(dir=run_dir, config=config, metrics=metrics, eval=ev, eval_files=[os.path.basename(p) for p in paths],
             eval_meta=meta)


RUN_FILES = ("config.json", "metrics.jsonl")


def _is_run(d: str) -> bool:
  return any(os.path.isfile(os.path.join(d, f)) for f in RUN_FILES)


def find_run_dirs(paths: Sequence[str], skipped: Optional[list] = None) -> list[str]:
  """Run directories among and below ``paths``: a directory holding config.json or metrics.jsonl is a
  run, and runs nest (``runs/digits`` and ``runs/digits/<method>``, as the README lays them out), so
  every directory below a path is looked at, except checkpoint folders.

  A path that holds no run -- a run's own file or its ``checkpoints`` folder (``runs/digits/*``
  expands to them), a folder without config.json in it or below it -- is skipped and appended to
  ``skipped`` as ``{'path', 'reason'}``; so is a folder below a path with a metrics.jsonl but no
  config.json. A path that does not exist, or paths holding no run at all, are a ReportError."""
  skipped = [] if skipped is None else skipped
  found: list[str] = []
  for p in paths:
    if not os.path.exists(p):
      raise ReportError(f"{p} does not exist; pass run directories (the --workdir of launch.py) or folders "
                        "holding them")
    parent = os.path.dirname(os.path.normpath(p))
    if not os.path.isdir(p):
      of_run = _is_run(parent or ".")
      skipped.append({"path": p, "reason": f"a file{f' of the run {parent}' if of_run else ''}, not a run directory",
                      **({"of_run": parent} if of_run else {})})
      continue
    if os.path.basename(os.path.normpath(p)) == "checkpoints" and _is_run(parent or "."):
      skipped.append({"path": p, "reason": f"the checkpoint folder of the run {parent}, not a run directory"})
      continue
    below = []
    for root, dirs, files in os.walk(p):
      dirs[:] = sorted(d for d in dirs if d != "checkpoints")
      if "config.json" in files or (root == p and "metrics.jsonl" in files):
        below.append(root)
      elif "metrics.jsonl" in files:
        skipped.append({"path": root, "reason": "has a metrics.jsonl but no config.json (rerun launch.py with "
                                                "this --workdir to rewrite it)"})
    if not below:
      skipped.append({"path": p, "reason": "no config.json in it or below it (a run directory is the --workdir of "
                                           "launch.py, with config.json and metrics.jsonl)"})
    found.extend(below)
  if not found:
    if len(skipped) == 1:
      raise ReportError(f"{skipped[0]['path']} holds no run: {skipped[0]['reason']}")
    raise ReportError("no run directory among the paths given: "
                      + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped))
  unique, seen = [], set()
  for d in found:
    key = os.path.realpath(d)
    if key not in seen:
      seen.add(key)
      unique.append(d)
  return unique


def unique_names(dirs: Sequence[str]) -> list[str]:
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
  return str(config_get(run.config, "data.name"))


def run_method(run: Run) -> str:
  return str(config_get(run.config, "method"))


def method_info(method: str):
  """The :class:`saat_jax.methods.MethodDef` registered as ``method`` (``uses_sa_pgd``, ``family``,
  its config section), or None for a method this process does not know."""
  from saat_jax.methods import METHODS  # the registry: built-in methods and any registered since

  return METHODS.get(method)


def uses_sa_pgd(method: str) -> bool:
  """Whether ``method``'s adversary is SA-PGD (Algorithm 1): its runs have a rho, an eps_max and a
  budget plot."""
  d = method_info(method)
  return bool(d and d.uses_sa_pgd)


def method_family(method: str) -> str:
  """Tables 2-3's outer-loss column of ``method``: ``AT`` or ``TRADES`` (``AT`` for an unknown one)."""
  d = method_info(method)
  return d.family if d else "AT"


def run_model(run: Run) -> str:
  return str(config_get(run.config, "model.name"))


def run_awp(run: Run) -> bool:
  awp = config_get(run.config, "awp")
  if isinstance(awp, dict):
    return bool(awp.get("enabled", (awp.get("gamma") or 0) > 0))
  return bool(awp) or run_method(run).startswith("awp")


def run_rho(run: Run) -> Optional[float]:
  v = config_get(run.config, "saat.rho")
  return float(v) if uses_sa_pgd(run_method(run)) and v is not None else None


def run_eps_max_255(run: Run) -> Optional[float]:
  v = config_get(run.config, "saat.eps_max")
  return float(v) * 255 if uses_sa_pgd(run_method(run)) and v is not None else None


def metrics_prefix(run: Run) -> str:
  """``'ema_'`` when the run picks ``best`` by its EMA weights (``eval.best_weights = 'ema'``) and
  metrics.jsonl has ``ema_test_*``; the report then shows those weights throughout."""
  ema = config_get(run.config, "eval.best_weights") == "ema"
  return "ema_" if ema and any("ema_test_pgd_accuracy" in r for r in run.metrics) else ""


def run_row_id(run: Run) -> Optional[str]:
  row = config_get(run.config, "experiment.row")
  return str(row) if row else None


def wrn_width(model: str) -> Optional[tuple[int, int]]:
  """``(depth, width)`` of a Wide ResNet name such as ``wrn34_10``; ``None`` for other models."""
  m = re.fullmatch(r"(?:wrn|wide_resnet)_?(\d+)_(\d+)", model.lower().replace("-", "_"))
  return (int(m.group(1)), int(m.group(2))) if m else None


def run_key(run: Run) -> str:
  """A label grouping seeds of one setting among runs not tied to a paper row."""
  method = run_method(run)
  info = method_info(method)
  prefix = "AWP-" if run_awp(run) and not method.startswith("awp") else ""
  section_eps = config_get(run.config, f"{info.section}.eps") if info and info.section else None
  if uses_sa_pgd(method) and run_rho(run) is not None and run_eps_max_255(run) is not None:
    hp = f" (eps_max={run_eps_max_255(run):g}, rho={run_rho(run):g})"
  elif section_eps is not None:  # a fixed-budget method (AT, TRADES, ...): its training budget
    hp = f" (eps={float(section_eps) * 255:.3g})"
  else:
    hp = ""
  return f"{prefix}{method}{hp}, {run_model(run)}"


def percent_rd(sweep: dict) -> Optional[float]:
  """RD of Sec. 3.1 from a sweep, in % of accuracy per 1/255; ``None`` without eps 0 and eps > 0."""
  from saat_jax.evaluators import robustness_disparity  # here: the report needs JAX only for this

  eps = np.asarray(sweep["eps_255"], np.float64)
  if not ((eps == 0).any() and (eps > 0).any()):
    return None
  return robustness_disparity(eps, 100 * np.asarray(sweep["accuracy"], np.float64))


def column_name(key: str, runs: Sequence[Run] = ()) -> str:
  """A column's header: as its eval.json declares it (the type that wrote it), else as a registered
  type names it, else the key."""
  for r in runs:
    name = r.eval_meta.get("columns", {}).get(key)
    if name:
      return name
  return metric_name(key)


def metric_name(key: str) -> str:
  """``'PGD-20'`` for ``'pgd20'``, ``'PGD-50'`` for ``'pgd50'``: an eval.json key's header as its
  evaluator type names it (:func:`saat_jax.evaluators.column_display`); other keys as they are."""
  return column_display(key) or key


def run_data_note(run: Run) -> Optional[str]:
  """``'data: JPEG re-encoded, not the official CIFAR-10'`` for a run whose metrics.jsonl records say
  it trained on the JPEG-q75 copy (``"data_format": "image-folder-jpeg"``); ``None`` otherwise
  (records without ``data_format`` too)."""
  if not any(r.get("data_format") == JPEG_FORMAT for r in run.metrics):
    return None
  name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(run_dataset(run), run_dataset(run))
  return f"data: JPEG re-encoded, not the official {name}"


def run_data_format(run: Run) -> Optional[str]:
  """The ``data_format`` of the run's last record that has one (``None`` for older runs)."""
  return next((r["data_format"] for r in reversed(run.metrics) if r.get("data_format")), None)


def checkpoint_numbers(run: Run) -> dict:
  """``{kind: {'epoch', 'natural'|'pgd20'|'aa'|'rd': {'value' (%), 'source'}, 'sweep'}}``.

  ``epoch`` is the run's checkpoint now (best: the final ``best_epoch``, last: the final record of
  metrics.jsonl). eval.json values win; otherwise Natural/PGD-20 come from metrics.jsonl (best: the
  record at the final ``best_epoch``, last: the final record) and AA is absent. An eval.json value
  measured on another (older) epoch of that checkpoint -- a run trained on after its evaluation --
  is shown only where metrics.jsonl has no number of the current epoch (AA, RD, the sweep), and then
  carries ``measured_epoch``; each such value is listed under ``older`` (see :func:`stale_numbers`).
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
    epoch = rec["epoch"] + 1
    nums: dict = {"epoch": epoch}
    older = []

    def stale(key, shown):  # an eval value of another epoch than the checkpoint's now: listed in older
      e = ev[key]
      if e.get("epoch") is None or int(e["epoch"]) == epoch:
        return {}
      older.append({"key": key, "file": e["file"], "measured_epoch": int(e["epoch"]), "shown": shown})
      return {"measured_epoch": int(e["epoch"])}

    extra = [k for k in column_keys(ev, run.eval_meta.get("columns", {})) if k not in METRICS]
    for key, mkey in (("natural", f"{pre}test_natural_accuracy"), ("pgd20", f"{pre}test_pgd_accuracy"), ("aa", None),
                      *((k, None) for k in extra)):
      e = ev.get(key)
      current = mkey is not None and rec.get(mkey) is not None
      if e is not None and (not current or e.get("epoch") is None or int(e["epoch"]) == epoch):
        nums[key] = {"value": 100 * float(e["value"]), "source": e["file"], "num_test": e["num_test"],
                     **stale(key, "marked")}
      elif current:
        nums[key] = {"value": 100 * float(rec[mkey]), "source": "metrics.jsonl", "num_test": None}
        if e is not None:
          stale(key, "metrics.jsonl")
    if "sweep" in ev:
      sweep = ev["sweep"]["value"]
      mark = stale("sweep", "marked")
      nums["sweep"] = {"eps_255": [float(e) for e in sweep["eps_255"]],
                       "accuracy": [100 * float(a) for a in sweep["accuracy"]], "source": ev["sweep"]["file"], **mark}
      rd = percent_rd(sweep)
      if rd is not None:
        nums["rd"] = {"value": rd, "source": ev["sweep"]["file"], "num_test": ev["sweep"]["num_test"], **mark}
    elif "rd" in ev:
      nums["rd"] = {"value": 100 * float(ev["rd"]["value"]), "source": ev["rd"]["file"], "num_test": None,
                    **stale("rd", "marked")}
    if older:
      nums["older"] = older
    out[kind] = nums
  return out


def evaluate_command(run: Run, kinds: Sequence[str], older: Sequence[dict]) -> str:
  """The ``python -m saat_jax.evaluate`` command that measures again, on the run's current
  checkpoints ``kinds``, the values ``older`` (entries of ``checkpoint_numbers(run)[kind]['older']``)
  with the settings they were measured with, so that the new numbers merge into the same eval.json."""
  import shlex

  keys = {o["key"] for o in older}
  settings = next((run.eval[k][o["key"]].get("settings") or {} for k in kinds for o in older
                   if o["key"] in run.eval.get(k, {})), {})
  args = ["python -m saat_jax.evaluate", f"--workdir {shlex.quote(run.dir)}", f"--eval.checkpoints={','.join(kinds)}"]
  attacks = [a for a, has in (("natural", "natural" in keys), ("pgd", any(OTHER_PGD.fullmatch(k) for k in keys)),
                              ("aa", "aa" in keys)) if has]
  if len(attacks) < 3:
    args.append(f"--eval.attacks={','.join(attacks) or 'natural'}")
  sweep = next((run.eval[k]["sweep"]["value"] for k in kinds if "sweep" in run.eval.get(k, {})), None)
  if keys & {"sweep", "rd"} and sweep is not None:
    args.append("--eval.sweep=" + ",".join(f"{float(e):g}" for e in sweep["eps_255"]))
    if settings.get("sweep_attack") not in (None, "pgd"):
      args.append(f"--eval.sweep_attack={settings['sweep_attack']}")
  alpha = config_get(run.config, "eval.alpha")
  if settings.get("alpha_255") is not None and (alpha is None or abs(settings["alpha_255"] - alpha * 255) > 1e-6):
    args.append(f"--eval.alpha={settings['alpha_255']:g}")
  for key, flag, default in (("num_test", "num_test", None), ("seed", "seed", None),
                             ("aa_version", "aa_version", "standard"), ("weights", "weights", "raw"),
                             ("dtype", "dtype", None), ("pgd_steps", "steps", 20), ("pgd_restarts", "restarts", 1)):
    if settings.get(key) not in (None, default):
      args.append(f"--eval.{flag}={settings[key]}")
  return " ".join(args)


def stale_numbers(run: Run, nums: dict) -> list[dict]:
  """Per checkpoint whose eval*.json values were measured on an older epoch than the run's checkpoint
  now: ``{'kind', 'epoch', 'measured_epochs', 'marked', 'replaced', 'files', 'command'}`` (``marked``:
  shown with their older epoch; ``replaced``: shown from metrics.jsonl's record of the current epoch)."""
  out = []
  for kind in KINDS:
    older = nums.get(kind, {}).get("older")
    if not older:
      continue
    out.append({"kind": kind, "epoch": nums[kind]["epoch"],
                "measured_epochs": sorted({o["measured_epoch"] for o in older}),
                "marked": [o["key"] for o in older if o["shown"] == "marked"],
                "replaced": [o["key"] for o in older if o["shown"] == "metrics.jsonl"],
                "files": sorted({o["file"] for o in older}), "command": evaluate_command(run, [kind], older)})
  return out

