"""SA-PGD's budget telemetry on a 100-class loss scale: rho 1.7 against CIFAR-10, and rho 3.4 (issue 20).

What it measures, and why. SAAT_up (configs/paper.py) attacks every training example with PGD-10 at
8/255, then grows its L-inf budget in stages 10, 12, 14/255 (K = 3 steps each); an example stops as
soon as its cross-entropy reaches rho = 1.7. The paper keeps rho = 1.7 on CIFAR-100, but rho is an
absolute cross-entropy: a uniform guess costs log 100 = 4.61 there against log 10 = 2.30 on
CIFAR-10, so more CIFAR-100 examples may stop at the warm start's 8/255, and SAAT_up may then train
like plain PGD-AT. This script shows, epoch by epoch, where the budgets of a short run go
(``attack_eps_mean`` and quantiles in /255, ``attack_frac_satisfied``, ``attack_steps_mean``: the
telemetry every run writes to ``<workdir>/metrics.jsonl``).

There is no CIFAR-100 on the machine this was written for, so the 100-class problem is built from
real CIFAR-10 images: each image is image A's rows 0, 2, 4, ... (16x32) stacked above image B's
(16x32), labelled 10 * y_A + y_B. It has 100 classes, a uniform guess costs log 100, and its loss is
roughly the sum of two CIFAR-10 losses; pairs are drawn by a seeded permutation (``--pair_seed``).
It is written in the official ``cifar-100-python`` layout (pickled dicts ``train``, ``test``,
``meta``), which the product's own reader loads with ``--config.data.name=cifar100
--config.data.data_dir=<folder>``.

Three short SAAT_up trainings then run through the product's entry point (``python launch.py``,
as subprocesses, each pinned to one core, ``--core``) with the same settings but the data and rho:
a small CNN, the first ``--num_train`` examples, batch ``--batch_size``, no augmentation (so that
a few epochs fit; ``--augment`` turns it on), constant learning rates, a cheap evaluation at the
last epoch of each phase. First ``--warmup_epochs`` epochs of natural training (``method=natural``,
``--warmup_lr``), then ``--epochs`` SAAT_up epochs (``--lr``) resumed in the same work dir with
``allow_config_change=True`` (the product records the change in ``configs.jsonl``). The warm-up is
there because SAAT_up from scratch keeps this small CNN at the uniform guess (loss log K) for
longer than a CPU budget allows, and then every example stops at 8/255 on either loss scale.
SA-PGD keeps the paper row's settings (PGD-10 warm start at 8/255, stages to 14/255, K = 3):

  cifar10_rho1.7   configs/paper.py:saat_up_e14_r1.7 on CIFAR-10 (10 classes)
  pairs100_rho1.7  configs/paper.py:cifar100_saat_up on the 100-class pairs, the paper's rho
  pairs100_rho3.4  the same with --config.saat.rho=3.4 (1.7 * log 100 / log 10 = 3.4)

The pairs' runs use CIFAR-10's normalisation (``model.normalization=cifar10``): their pixels are
CIFAR-10's, and so all three runs feed the network the same input scale. The record (``--out``)
holds, per run and epoch, the training loss and accuracy, the telemetry and the bounds on the
fraction of examples attacked beyond 8/255 that the telemetry implies (the per-example budgets
are 8, 10, 12 or 14/255, so the mean and the quantiles bound that fraction; metrics.jsonl records
no exact count); plus the command lines, versions, CPU model, date and wall times.

Limits: a proxy built from CIFAR-10 pairs, a small CNN and a few epochs on a CPU; real CIFAR-100
with PreAct ResNet-18 for 200 epochs is not measured by it.

  python benchmarks/cifar100_budget_telemetry.py --cifar10 ../shared/data/cifar10-jpeg.tar.gz --fresh \
      --out benchmarks/results/cifar100_budget_telemetry_cpu.json

(about 21 minutes on one core of a 2-core AMD EPYC; benchmarks/README.md has the result.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import benchinfo  # noqa: E402

# (name, paper row, data set, rho): the three runs.
RUNS = (("cifar10_rho1.7", "saat_up_e14_r1.7", "cifar10", 1.7),
        ("pairs100_rho1.7", "cifar100_saat_up", "cifar100", 1.7),
        ("pairs100_rho3.4", "cifar100_saat_up", "cifar100", 3.4))
# The per-epoch fields copied from metrics.jsonl (saat_jax/train.py's epoch_summary and evaluation).
FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "attack_eps_mean", "attack_frac_satisfied",
          "attack_steps_mean", "attack_frac_unperturbed", "attack_eps_q10", "attack_eps_q25", "attack_eps_q50",
          "attack_eps_q75", "attack_eps_q90", "train_time_s", "eval_time_s", "test_natural_accuracy",
          "test_pgd_accuracy")
QUANTILES = (10, 25, 50, 75, 90)
START_EPS, EPS_MAX, TAU = 8.0, 14.0, 2.0  # /255: the paper row's warm start, largest budget, stage step
PAIRS_FORMAT = 1  # bump when the construction of the pairs changes (rebuilds a kept copy)


# --------------------------------------------------------------------------------------------------
# The 100-class pairs of CIFAR-10 images, in the cifar-100-python layout.


def make_pairs(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
  """Image i's even rows (16x32) above image perm[i]'s even rows; label 10 * y_i + y_perm[i]."""
  if images.shape[1:] != (32, 32, 3):
    raise ValueError(f"expected 32x32x3 CIFAR-10 images, got {images.shape[1:]}: pass a CIFAR-10 source as --cifar10")
  perm = rng.permutation(len(labels))
  top, bottom = images[:, 0::2], images[perm, 0::2]
  pairs = np.ascontiguousarray(np.concatenate([top, bottom], axis=1))
  return pairs, (10 * labels.astype(np.int64) + labels[perm]).astype(np.int64), perm


def write_cifar100_python(folder: str, train, test, class_names) -> str:
  """Writes ``<folder>/cifar-100-python/{train,test,meta}`` as the official archive holds them:
  pickled dicts with ``data`` (N, 3072) uint8 in channel-major (R, G, B planes) row order,
  ``fine_labels`` and ``coarse_labels`` lists; ``meta`` with the label names. The coarse label here
  is the top image's CIFAR-10 class (10 coarse classes, not the official 20)."""
  root = os.path.join(folder, "cifar-100-python")
  os.makedirs(root, exist_ok=True)
  fine_names = [f"{a}_over_{b}" for a in class_names for b in class_names]
  for split, (images, labels) in (("train", train), ("test", test)):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {"filenames": [f"pair_{split}_{i:05d}.png" for i in range(len(labels))],
             "batch_label": f"{split} pairs of CIFAR-10 images (10 * top + bottom)",
             "fine_labels": [int(v) for v in labels], "coarse_labels": [int(v) // 10 for v in labels],
             "data": np.ascontiguousarray(data, dtype=np.uint8)}
    tmp = os.path.join(root, f".{split}.tmp")
    with open(tmp, "wb") as f:
      pickle.dump(batch, f, protocol=2)
    os.replace(tmp, os.path.join(root, split))
  with open(os.path.join(root, "meta"), "wb") as f:
    pickle.dump({"fine_label_names": fine_names, "coarse_label_names": list(class_names)}, f, protocol=2)
  return root


def build_pairs(cifar10: str, folder: str, seed: int, cache_dir: str) -> dict:
  """The pairs data set in ``folder`` (kept when a copy built from the same source and seed is
  there); returns its description."""
  manifest = os.path.join(folder, "pairs.json")
  want = {"format": PAIRS_FORMAT, "source": os.path.abspath(cifar10), "seed": seed,
          "source_size": os.path.getsize(cifar10) if os.path.isfile(cifar10) else None}
  if os.path.exists(manifest):
    with open(manifest) as f:
      have = json.load(f)
    if {k: have.get(k) for k in want} == want:
      print(f"pairs: kept {folder} (built from {cifar10} with seed {seed})", flush=True)
      return have
  from saat_jax.data import DataError, load_dataset

  t0 = time.time()
  try:
    c10 = load_dataset("cifar10", cifar10, cache_dir=cache_dir, source="local")
  except DataError as e:
    sys.exit(f"error: cannot read --cifar10 {cifar10!r} as CIFAR-10: {e}")
  rng = np.random.default_rng(seed)
  train_x, train_y, train_perm = make_pairs(c10.train_images, c10.train_labels, rng)
  test_x, test_y, _ = make_pairs(c10.test_images, c10.test_labels, rng)
  if os.path.exists(folder):
    shutil.rmtree(folder)
  write_cifar100_python(folder, (train_x, train_y), (test_x, test_y), c10.class_names)
  counts = np.bincount(train_y, minlength=100)
  have = dict(want, num_train=int(len(train_y)), num_test=int(len(test_y)),
              cifar10_data_format=c10.data_format, class_count_min=int(counts.min()),
              class_count_max=int(counts.max()), fixed_points=int((train_perm == np.arange(len(train_perm))).sum()),
              build_s=round(time.time() - t0, 1))
  with open(manifest, "w") as f:
    json.dump(have, f, indent=2)
  print(f"pairs: wrote {folder}/cifar-100-python ({len(train_y)} train, {len(test_y)} test, "
        f"{have['build_s']} s)", flush=True)
  return have


# --------------------------------------------------------------------------------------------------
# The runs.


def run_commands(row: str, data_dir: str, rho: float, workdir: str, args) -> list[tuple]:
  """``[(phase, command)]`` of one run: with ``--warmup_epochs`` W > 0, W epochs of natural training
  (``method=natural``), then SAAT_up resumed in the same work dir to W + ``--epochs`` epochs (a
  method and lr change, which the product allows on resume with ``allow_config_change=True`` and
  records in ``configs.jsonl``); with W = 0, SAAT_up from scratch. Everything else is the same in
  both phases and in all three runs, but the data and rho."""
  total = args.warmup_epochs + args.epochs
  common = ["--config", f"configs/paper.py:{row}", "--workdir", workdir,
            f"--config.data.data_dir={data_dir}", f"--config.data.cache_dir={args.cache_dir}",
            f"--config.data.num_train={args.num_train}", f"--config.data.augment={args.augment}",
            f"--config.batch_size={args.batch_size}", "--config.model.name=small_cnn",
            "--config.model.normalization=cifar10", "--config.optim.lr_milestones=()",
            f"--config.seed={args.seed}", f"--config.saat.rho={rho}",
            f"--config.eval.num_test={args.num_test}", f"--config.eval.steps={args.eval_steps}",
            f"--config.eval.batch_size={args.num_test}", f"--config.eval.train_subset={args.num_test}",
            f"--config.eval.every={total}", "--config.progress=False"]
  launch = [sys.executable, "launch.py"]
  out = []
  if args.warmup_epochs:
    out.append(("natural_warmup", launch + common + [
        "--config.method=natural", f"--config.optim.lr={args.warmup_lr}",
        f"--config.num_epochs={args.warmup_epochs}"]))
  saat = [f"--config.optim.lr={args.lr}", f"--config.num_epochs={total}"]
  if args.warmup_epochs:
    saat.append("--config.allow_config_change=True")
  out.append(("saat_up", launch + common + saat))
  return out


# The runs' environment: one CPU device, one thread (with --core, one core).
CHILD_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false",
             "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
             "TF_CPP_MIN_LOG_LEVEL": "2"}


def child_env() -> dict:
  env = dict(os.environ)
  env.update(CHILD_ENV)
  return env


def pin(cmd: list[str], core) -> list[str]:
  if core is None or core < 0:
    return cmd
  if shutil.which("taskset") is None:
    print("note: taskset not found; the runs are not pinned to a core", flush=True)
    return cmd
  return ["taskset", "-c", str(core)] + cmd


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def beyond_start_bounds(rec: dict) -> dict:
  """Bounds on the fraction f of examples whose budget went beyond the warm start's 8/255.

  Each example ends at 8, 10, 12 or 14/255 (SAAT_up), and metrics.jsonl holds their mean and five
  quantiles (numpy's linear interpolation), not the counts. An example not satisfied was exhausted
  at 14/255, so f >= u = 1 - frac_satisfied; an example beyond 8/255 adds 2 to 6 to the mean (6 for
  those u), so (mean - 8) / 6 <= f <= u + (mean - 8 - 6u) / 2; a quantile q_p = 8 means that at
  least the fraction p stayed at 8/255 (f <= 1 - p), one above 8 that fewer did (f >= 1 - p; both
  up to 1/N, N the examples of an epoch, dropped here as N is thousands)."""
  excess = rec["attack_eps_mean"] - START_EPS
  unsat = 1.0 - rec["attack_frac_satisfied"]
  lo = max(0.0, excess / (EPS_MAX - START_EPS), unsat)
  hi = min(1.0, unsat + (excess - (EPS_MAX - START_EPS) * unsat) / TAU)
  for p in QUANTILES:
    q = rec[f"attack_eps_q{p}"]
    if abs(q - START_EPS) < 1e-3:
      hi = min(hi, 1.0 - p / 100)
    elif q > START_EPS + 1e-3:
      lo = max(lo, 1.0 - p / 100)
  return {"frac_beyond_8_lo": round(lo, 4), "frac_beyond_8_hi": round(max(lo, hi), 4)}


def summarize(workdir: str, warmup_epochs: int) -> list[dict]:
  out = []
  for rec in read_metrics(workdir):
    row = {k: rec[k] for k in FIELDS if k in rec}
    row["epoch"] = rec["epoch"] + 1  # counted from 1, as the training log prints it
    row["phase"] = "natural_warmup" if rec["epoch"] < warmup_epochs else "saat_up"
    if row["phase"] == "saat_up":
      row.update(beyond_start_bounds(rec))
    out.append(row)
  return out


def print_table(runs: list[dict]) -> None:
  head = ("run", "epoch", "loss", "acc", "eps mean", "q50", "q75", "q90", "sat", "steps", "beyond 8/255")
  print(" | ".join(head))
  for run in runs:
    for e in run["epochs"]:
      if e["phase"] != "saat_up":
        continue
      print(" | ".join([run["name"], str(e["epoch"]), f"{e['train_loss']:.3f}", f"{e['train_accuracy']:.3f}",
                        f"{e['attack_eps_mean']:.2f}", f"{e['attack_eps_q50']:.0f}", f"{e['attack_eps_q75']:.0f}",
                        f"{e['attack_eps_q90']:.0f}", f"{e['attack_frac_satisfied']:.3f}",
                        f"{e['attack_steps_mean']:.2f}",
                        f"{e['frac_beyond_8_lo']:.3f}-{e['frac_beyond_8_hi']:.3f}"]))


def run_phase(name: str, phase: str, cmd: list[str], log_path: str, timeout: float) -> tuple[int, float]:
  t0 = time.time()
  with open(log_path, "a") as log:
    log.write(f"\n== {phase}: {' '.join(shlex.quote(c) for c in cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.terminate()  # SIGTERM: the run saves its position; the same command resumes it
      rc = proc.wait(timeout=120)
      print(f"{name} ({phase}): stopped after --run_timeout {timeout:.0f} s (exit {rc}); run the same command "
            f"to resume it", flush=True)
  return rc, time.time() - t0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--cifar10", required=True,
                  help="a CIFAR-10 source the product reads as data.data_dir: a folder or tar archive with "
                       "cifar-10-batches-py, cifar-10-batches-bin or an image-folder tree (e.g. "
                       "../shared/data/cifar10-jpeg.tar.gz)")
  ap.add_argument("--out", default=None, help="where to write the JSON record (none: only print the table)")
  ap.add_argument("--workdir", default="runs/cifar100_budget_telemetry",
                  help="scratch folder for the pairs data set, the data cache and the three runs' work dirs; "
                       "a run found finished there is not trained again (see --fresh)")
  ap.add_argument("--fresh", action="store_true", help="delete the runs' work dirs first")
  ap.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="which runs, comma-separated")
  ap.add_argument("--epochs", type=int, default=5, help="SAAT_up epochs of each run (after the warm-up)")
  ap.add_argument("--warmup_epochs", "--warmup-epochs", dest="warmup_epochs", type=int, default=10,
                  help="natural-training epochs before SAAT_up (0: SAAT_up from scratch, where a small CNN "
                       "stays near the uniform guess for longer than a CPU budget allows)")
  ap.add_argument("--num_train", "--num-train", dest="num_train", type=int, default=2048,
                  help="training examples of each run (the first N of the training set)")
  ap.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=64)
  ap.add_argument("--lr", type=float, default=0.01, help="SGD's learning rate in the SAAT_up epochs, constant")
  ap.add_argument("--warmup_lr", "--warmup-lr", dest="warmup_lr", type=float, default=0.05,
                  help="SGD's learning rate in the natural warm-up, constant")
  ap.add_argument("--augment", action="store_true",
                  help="random crops and flips (data.augment); off by default, so that a few epochs fit more")
  ap.add_argument("--seed", type=int, default=0, help="the runs' config.seed")
  ap.add_argument("--pair_seed", "--pair-seed", dest="pair_seed", type=int, default=0,
                  help="seed of the permutation that pairs the CIFAR-10 images")
  ap.add_argument("--num_test", "--num-test", dest="num_test", type=int, default=200,
                  help="test points (and trainsub points) evaluated at the last epoch of each phase")
  ap.add_argument("--eval_steps", "--eval-steps", dest="eval_steps", type=int, default=5,
                  help="PGD steps of that evaluation (its accuracy is not the point here)")
  ap.add_argument("--core", type=int, default=1,
                  help="pin each run to this CPU core with taskset (-1: no pinning)")
  ap.add_argument("--run_timeout", "--run-timeout", dest="run_timeout", type=float, default=3600,
                  help="seconds after which one phase of a run is stopped (SIGTERM: it saves its position, "
                       "and the same command resumes it)")
  args = ap.parse_args(argv)
  if args.epochs < 1 or args.warmup_epochs < 0 or args.num_train < args.batch_size:
    ap.error(f"need --epochs >= 1, --warmup_epochs >= 0 and --num_train >= --batch_size ({args.batch_size}); "
             f"got {args.epochs}, {args.warmup_epochs}, {args.num_train}")
  if not os.path.exists(args.cifar10):
    ap.error(f"--cifar10 {args.cifar10!r} does not exist: pass a CIFAR-10 archive or folder, e.g. "
             f"../shared/data/cifar10-jpeg.tar.gz")
  names = [n.strip() for n in args.runs.split(",") if n.strip()]
  unknown = sorted(set(names) - {r[0] for r in RUNS})
  if unknown:
    ap.error(f"unknown --runs {', '.join(unknown)}; choose from {', '.join(r[0] for r in RUNS)}")
  args.cifar10 = os.path.abspath(args.cifar10)
  work = os.path.abspath(args.workdir)
  args.cache_dir = os.path.join(work, "cache")
  os.makedirs(work, exist_ok=True)

  t_all = time.time()
  record = benchinfo.new_record(
      "cifar100_budget_telemetry", cifar10=args.cifar10,
      settings={k: v for k, v in vars(args).items() if k not in ("out",)}, run_env=CHILD_ENV,
      uniform_guess_loss={"cifar10": round(math.log(10), 4), "cifar100": round(math.log(100), 4)})
  pairs_dir = os.path.join(work, "pairs100")
  if any(r[2] == "cifar100" for r in RUNS if r[0] in names):
    record["pairs"] = build_pairs(args.cifar10, pairs_dir, args.pair_seed, args.cache_dir)

  runs = []
  for name, row, data_name, rho in RUNS:
    if name not in names:
      continue
    workdir = os.path.join(work, name)
    if args.fresh and os.path.exists(workdir):
      shutil.rmtree(workdir)
    data_dir = args.cifar10 if data_name == "cifar10" else pairs_dir
    log_path = os.path.join(work, f"{name}.log")
    run = {"name": name, "row": row, "data": data_name, "rho": rho, "workdir": workdir, "log": log_path,
           "phases": []}
    for phase, cmd in run_commands(row, data_dir, rho, workdir, args):
      cmd = pin(cmd, args.core)
      shown = " ".join(shlex.quote(c) for c in cmd).replace(shlex.quote(sys.executable), "python")
      done = len(read_metrics(workdir))
      if phase == "natural_warmup" and done >= args.warmup_epochs:
        print(f"{name} ({phase}): {done} epochs already in {workdir}; skipped", flush=True)
        run["phases"].append({"phase": phase, "command": shown, "skipped": True})
        continue
      print(f"\n== {name} ({phase}): {shown}", flush=True)
      rc, wall = run_phase(name, phase, cmd, log_path, args.run_timeout)
      run["phases"].append({"phase": phase, "command": shown, "returncode": rc, "wall_s": round(wall, 1)})
      if rc != 0:
        with open(log_path) as f:
          tail = f.read()[-3000:]
        print(f"{name} ({phase}): exit {rc}; the end of {log_path}:\n{tail}", flush=True)
        break
      print(f"{name} ({phase}): done in {wall:.0f} s", flush=True)
    run["returncode"] = max(abs(p.get("returncode", 0)) for p in run["phases"])
    run["wall_s"] = round(sum(p.get("wall_s", 0.0) for p in run["phases"]), 1)
    run["epochs"] = summarize(workdir, args.warmup_epochs)
    run["train_time_s_total"] = round(sum(e.get("train_time_s", 0.0) for e in run["epochs"]), 1)
    runs.append(run)
  record["runs"] = runs
  record["wall_s"] = round(time.time() - t_all, 1)
  print()
  print_table([r for r in runs if r["epochs"]])
  benchinfo.finish(record, args.out)
  return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
  sys.exit(main())
