"""Evaluation of a run's checkpoints: ``python -m saat_jax.evaluate --workdir runs/x``.

The Natural / PGD-20 / AA columns of Table 1 and accuracy against the test budget with RD (Fig. 1a).
The numbers come from :mod:`saat_jax.evaluators` (the same evaluator as training's per-epoch
evaluation) on weights restored by :mod:`saat_jax.run_state`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import jax
import numpy as np

from saat_jax import parallel
from saat_jax.evaluators import (RobustnessEvaluator, accuracy_order_check, autoattack_accuracy,
                                 autoattack_evaluation, robustness_disparity, sweep_pgd_schedule)
from saat_jax.run_state import restore_for_eval, run_keys


# --------------------------------------------------------------------------------------------
# Evaluation of a run: `python -m saat_jax.evaluate --workdir runs/x`
# --------------------------------------------------------------------------------------------

ATTACKS = ("natural", "pgd20", "aa")


def eval_config():
  """The evaluation's settings, overridden on the command line as ``--eval.<key>=<value>`` in the
  style of ``launch.py``'s ``--config.<key>=<value>`` (budgets in /255, lists comma-separated)."""
  import ml_collections
  from ml_collections.config_dict import placeholder

  c = ml_collections.ConfigDict()
  c.checkpoints = "best,last"  # comma list of best,last
  c.attacks = ",".join(ATTACKS)
  c.eps = placeholder(float)  # test budget in /255; None: the run's eval.eps (8 for CIFAR)
  c.alpha = placeholder(float)  # PGD-20 step in /255; None: the run's eval.alpha (2 for CIFAR)
  c.num_test = 0  # the first N test points; 0: all of them
  c.batch_size = placeholder(int)  # None: the run's eval.batch_size
  c.aa_version = "standard"
  c.sweep = ""  # budgets in /255 for the RD sweep, e.g. 0,2,4,...,16; 'default': 0..16 by 2
  c.sweep_attack = "pgd"  # pgd or aa
  c.data_dir = placeholder(str)  # None: the run's data.data_dir
  c.seed = placeholder(int)  # None: the random starts of the run's own per-epoch evaluation
  c.weights = "raw"  # raw, or ema (runs with ema.decay > 0)
  c.dtype = placeholder(str)  # compute dtype, float32 or bfloat16; None: the run's model.dtype
  return c


USAGE = """python -m saat_jax.evaluate --workdir runs/x [--eval.<key>=<value> ...] [--out eval.json]

Natural / PGD-20 / AutoAttack accuracy of a run's checkpoints (Table 1) and accuracy against the
test budget with RD (Fig. 1a). Results are merged into <workdir>/eval.json: what an earlier
evaluation measured and this one does not is kept; an eval.json measured with other settings (eps,
alpha, weights, points, seed) is kept as eval-<time>.json. Settings (budgets in /255):
"""


def _fail(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def _parse_list(s, what: str, cast=float):
  try:
    return [cast(v) for v in str(s).split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--eval.{what} must be a comma-separated list, got {s!r}") from None


def _check_settings(ev) -> tuple[list, list, list]:
  """(checkpoints, attacks, sweep) of the settings, or ValueError saying which flag is wrong."""
  from saat_jax import checkpointing

  kinds = _parse_list(ev.checkpoints, "checkpoints", str)
  attacks = _parse_list(ev.attacks, "attacks", str)
  for a in attacks:
    if a not in ATTACKS:
      raise ValueError(f"--eval.attacks: unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
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
    print(USAGE + "\n".join(f"  --eval.{k}={v}" for k, v in eval_config().items()))
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
    kinds, attacks, sweep = _check_settings(ev)
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
                          seed=ev.seed, progress=True, weights=ev.weights, dtype=ev.dtype)
  except (checkpointing.CheckpointError, DataError, ValueError) as e:
    return _fail(str(e))
  out = fv.out or os.path.join(workdir, "eval.json")
  report, kept = merge_into(out, report)
  print(format_table(report))
  if sweep:
    png = os.path.splitext(out)[0] + "_sweep.png"
    plot_sweep(report, png)
    print(f"sweep plot: {png}")
  if kept:
    print(f"the earlier {out} was measured with other settings; kept as {kept}")
  print(f"written: {out}")
  return 0


# What makes two evaluations comparable: the numbers of both may share one eval.json.
SETTINGS = ("eps_255", "alpha_255", "weights", "num_test", "seed", "aa_version", "sweep_attack", "dtype")


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
    if old is None or any(old.get(k) != report.get(k) for k in SETTINGS):
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
    report = {**report, "checkpoints": merged}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)
  return report, kept


def evaluate_run(workdir, *, kinds=("best", "last"), attacks=("natural", "pgd20", "aa"), eps=None, alpha=None,
                 num_test=0, batch_size=None, aa_version="standard", sweep=(), sweep_attack="pgd",
                 data_dir=None, seed=0, progress=False, weights="raw", dtype=None) -> dict:
  """Evaluate checkpoints of a run; returns a JSON-able report (see ``format_table``).

  ``eps``/``alpha`` default to the run's own ``eval.eps``/``eval.alpha``, and PGD starts from the
  same random points as the per-epoch evaluation of training, so PGD-20 here repeats those numbers.
  """
  from tqdm.auto import tqdm

  from saat_jax.data import load_dataset

  report = {"workdir": workdir, "checkpoints": {}, "sweep_attack": sweep_attack, "weights": weights,
            "aa_version": aa_version, "seed": seed, "dtype": dtype}
  data = None
  for kind in kinds:
    model, variables, meta, cfg = restore_for_eval(workdir, kind, weights, dtype)
    if data is None:
      eps = float(cfg.eval.eps) if eps is None else eps
      alpha = float(cfg.eval.alpha) if alpha is None else alpha
      batch_size = int(cfg.eval.batch_size) if batch_size is None else batch_size
      report["eps_255"], report["alpha_255"] = eps * 255, alpha * 255
      key = jax.random.fold_in(run_keys(int(cfg.seed))[2], 0) if seed is None else jax.random.key(seed)
      data = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, source=cfg.data.source,
                          cache_dir=cfg.data.get("cache_dir"), download_url=cfg.data.get("download_url"),
                          download_md5=cfg.data.get("download_md5"))
      n = num_test or len(data.test_labels)
      images, labels = data.test_images[:n], data.test_labels[:n]
      report["num_test"] = int(len(labels))
    logits_fn = jax.jit(lambda x, v=variables, m=model: m.apply(v, x, train=False))
    row = {"epoch": meta["epoch"] + 1, "num_test": int(len(labels))}
    todo = [a for a in attacks]
    bar = tqdm(total=len(todo) + len(sweep), desc=f"{kind}", disable=not progress, leave=False)
    if "natural" in todo or "pgd20" in todo:
      acc = RobustnessEvaluator(model.apply, eps=eps, alpha=alpha, steps=20, batch_size=batch_size).run(
          variables, images, labels, key)
      for attack, name in (("natural", "natural_accuracy"), ("pgd20", "pgd_accuracy")):
        if attack in todo:
          row[attack] = acc[name]
          bar.update(1)
    if "aa" in todo:
      aa = autoattack_evaluation(logits_fn, images, labels, eps=eps, version=aa_version, seed=seed or 0,
                                 batch_size=batch_size)
      row["aa"], row["checks"] = aa["accuracy"], aa["checks"]
      bar.update(1)
    row.setdefault("checks", []).append(accuracy_order_check(row, num_points=len(labels)))
    if sweep:
      accs = []
      for e255 in sweep:
        if sweep_attack == "aa":
          acc = autoattack_accuracy(logits_fn, images, labels, eps=e255 / 255, version=aa_version,
                                    seed=seed or 0, batch_size=batch_size)
        else:
          sweep_alpha, steps = sweep_pgd_schedule(e255)
          acc = RobustnessEvaluator(model.apply, eps=e255 / 255, alpha=sweep_alpha, steps=steps,
                                    batch_size=batch_size).run(variables, images, labels, key)["pgd_accuracy"]
        accs.append(acc)
        bar.update(1)
      row["sweep"] = {"eps_255": list(sweep), "accuracy": accs}
      if 0 in sweep and any(e > 0 for e in sweep):
        row["rd"] = robustness_disparity(sweep, accs)
    bar.close()
    report["checkpoints"][kind] = row
  return report


def format_table(report: dict) -> str:
  """Table 1's layout: one row per checkpoint, accuracies in percent."""
  cols = [c for c in ("natural", "pgd20", "aa", "rd") if any(c in r for r in report["checkpoints"].values())]
  names = {"natural": "Natural", "pgd20": "PGD-20", "aa": "AA", "rd": "RD"}
  head = f"{'checkpoint':<12}{'epoch':>6}" + "".join(f"{names[c]:>10}" for c in cols)
  units = "accuracies in %" + (", RD in % of accuracy lost per 1/255 of budget (Sec. 3.1)" if "rd" in cols else "")
  lines = [f"eps = {report['eps_255']:.3g}/255; {units}", head, "-" * len(head)]
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
  for kind, r in report["checkpoints"].items():
    if "sweep" not in r:
      continue
    label = f"{kind} (RD {100 * r['rd']:.2f} %/(1/255))" if "rd" in r else kind
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
