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

KINDS = ("best", "last")
METRICS = ("natural", "pgd20", "aa")
METRIC_NAMES = {"natural": "Natural", "pgd20": "PGD-20", "aa": "AA", "rd": "RD"}
SAAT_METHODS = ("saat", "sa_trades")  # methods whose adversary is SA-PGD (Algorithm 1)
REQUIRED_RECORD_KEYS = ("epoch", "test_natural_accuracy", "test_pgd_accuracy", "best_epoch")


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
  eps = config_get(config, "eval.eps")
  ref = None if eps is None else float(eps) * 255
  paths = _eval_paths(run_dir)
  ev, meta = merge_evals(paths, ref, warn, weights=str(config_get(config, "eval.best_weights") or "raw"))
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


def run_model(run: Run) -> str:
  return str(config_get(run.config, "model.name"))


def run_awp(run: Run) -> bool:
  awp = config_get(run.config, "awp")
  if isinstance(awp, dict):
    return bool(awp.get("enabled", (awp.get("gamma") or 0) > 0))
  return bool(awp) or run_method(run).startswith("awp")


def run_rho(run: Run) -> Optional[float]:
  v = config_get(run.config, "saat.rho")
  return float(v) if run_method(run) in SAAT_METHODS and v is not None else None


def run_eps_max_255(run: Run) -> Optional[float]:
  v = config_get(run.config, "saat.eps_max")
  return float(v) * 255 if run_method(run) in SAAT_METHODS and v is not None else None


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
  prefix = "AWP-" if run_awp(run) and not method.startswith("awp") else ""
  if method in SAAT_METHODS and run_rho(run) is not None and run_eps_max_255(run) is not None:
    hp = f" (eps_max={run_eps_max_255(run):g}, rho={run_rho(run):g})"
  elif method in ("trades", "at") and config_get(run.config, f"{method}.eps") is not None:
    hp = f" (eps={float(config_get(run.config, f'{method}.eps')) * 255:.3g})"
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

