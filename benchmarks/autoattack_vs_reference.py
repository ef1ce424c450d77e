"""AutoAttack in JAX vs the reference ``pyautoattack`` 0.2.0, on the reference's pretrained ResNet-18.

Both implementations attack the same model and points:

* the model: ``examples/model_test.pt`` shipped in the ``pyautoattack`` wheel (a standard CIFAR-10
  ResNet-18, inputs in [0, 1], no normalisation), loaded into PyTorch with the wheel's own
  ``examples/resnet.py`` and into Flax with ``saat_jax.models.load_torch_checkpoint``;
* the points: the first ``--n`` test images of ``../shared/data/cifar10-jpeg.tar.gz`` (read with
  ``saat_jax.data.load_dataset``, whose test order is a fixed shuffle, so the first N mix
  the classes; decoded directly from the tar with Pillow if that module is missing).

For every ``--eps`` (in /255 units) it runs the reference's ``run_standard_evaluation`` and
:func:`saat_jax.autoattack.autoattack`, with the ``standard`` version's settings restricted to
``--attacks`` (all four by default), and records the robust accuracy after each attack, the wall
times and their ratio. The JAX time includes jit compilation (``--warm`` adds a second, compiled
run). The model is not robust: compare at small budgets (0.5/255 to 2/255).

``--checkpoint`` attacks another PyTorch ``state_dict`` instead (``--arch`` resnet18,
preact_resnet18 or wrn<depth>_<width>, e.g. a PreAct ResNet-18 trained with Rice et al.'s code,
``--normalization cifar10`` when its training normalised the inputs): the reference attacks
``saat_jax.testing.torch_reference``'s module and JAX the imported Flax model. A ``.npz`` of the
state_dict's arrays loads without torch, for a JAX-only run (``--skip-reference``) on a machine
that has no torch. Each run records images per second (points / wall time) as well.

  python benchmarks/autoattack_vs_reference.py --n 20 --eps 1 --attacks apgd-ce
  python benchmarks/autoattack_vs_reference.py --n 100 --eps 0.5 1 2 --out benchmarks/results/aa_ref.json
  python benchmarks/autoattack_vs_reference.py --merge ref.json jax.json --out both.json
  # AA standard at 8/255 on 1,000 points of a PreAct ResNet-18 (on a GPU: the issue-3 speed figure)
  python benchmarks/autoattack_vs_reference.py --checkpoint preact.pt --arch preact_resnet18 \
      --normalization cifar10 --n 1000 --eps 8 --batch-size 500 --warm --out aa_preact18_gpu.json
  # a long comparison in chunks of points, each run side by side, then joined:
  python benchmarks/autoattack_vs_reference.py --start 250 --n 250 --eps 1 --skip-jax --out ref_250.json
  python benchmarks/autoattack_vs_reference.py --merge ref_0.json jax_0.json ref_250.json jax_250.json --out all.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import sys
import tarfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from saat_jax.models import NORMALIZATIONS  # noqa: E402  (after the path insert)

STANDARD = ["apgd-ce", "apgd-t", "fab-t", "square"]
# What the default run attacks, as recorded in each result file's "model".
WHEEL_MODEL = dict(checkpoint="pyautoattack examples/model_test.pt", arch="resnet18", normalization="none")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def reference_dir() -> str:
  spec = importlib.util.find_spec("pyautoattack")
  if spec is None or not spec.submodule_search_locations:
    sys.exit("pyautoattack is not installed: pip install torch==2.13.0 && pip install pyautoattack==0.2.0")
  for root in spec.submodule_search_locations:
    if os.path.isfile(os.path.join(root, "examples", "model_test.pt")):
      return os.path.join(root, "examples")
  sys.exit("pyautoattack has no examples/model_test.pt; reinstall pyautoattack==0.2.0 from its wheel")


def load_torch_model(examples: str):
  """The wheel's ``model_test.pt`` in the wheel's own ``examples/resnet.py`` ResNet-18."""
  import torch

  spec = importlib.util.spec_from_file_location("_pyautoattack_resnet", os.path.join(examples, "resnet.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  net = mod.ResNet18()
  net.load_state_dict(torch.load(os.path.join(examples, "model_test.pt"), map_location="cpu",
                                 weights_only=True))
  return net.eval()


def load_jax_model(examples: str):
  from saat_jax.models import load_torch_checkpoint

  model, variables = load_torch_checkpoint(os.path.join(examples, "model_test.pt"), "resnet18")

  def logits_fn(x):
    return model.apply(variables, x, train=False)

  return logits_fn


def load_checkpoint_models(path: str, arch: str, normalization: str, *, want_torch: bool, want_jax: bool):
  """``(torch_net or None, logits_fn or None)`` for a user's checkpoint of ``arch``."""
  from saat_jax.models.torch_import import model_from_state_dict, read_state_dict

  try:
    sd = read_state_dict(path)
    model, variables = model_from_state_dict(sd, arch, normalization=normalization)
  except (OSError, ImportError, ValueError) as e:
    sys.exit(f"--checkpoint {path}: {e}")
  net = logits_fn = None
  if want_torch:
    import torch

    from saat_jax.testing.torch_reference import build_torch_model

    num_classes = model.num_classes
    net = build_torch_model(arch, num_classes, normalization=normalization,
                            sub_block1=any(k.startswith("sub_block1.") for k in sd))
    inner = getattr(net, "model", net)
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()}
    if "fc.weight" in tensors and "fc.bias" not in tensors:  # RobustBench's bias-free classifier
      tensors["fc.bias"] = torch.zeros(num_classes)
    missing, unexpected = inner.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # unused in eval mode
    if missing or unexpected:
      sys.exit(f"{path} does not fit the torch {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    net.eval()
  if want_jax:

    def logits_fn(x):
      return model.apply(variables, x, train=False)

  return net, logits_fn


def load_points(path: str, n: int, start: int = 0):
  """Test images ``start .. start + n - 1`` as float32 NHWC in [0, 1] and int32 labels."""
  try:
    from saat_jax.data import load_dataset
  except ImportError:
    load_dataset = None
  if load_dataset is not None:
    ds = load_dataset("cifar10", path)
    x, y = ds.test_images[start:start + n], ds.test_labels[start:start + n]
  else:  # decode the JPEGs ourselves: test/<class>/NNNN.jpg, interleaved over the classes
    from PIL import Image

    per_class = {c: [] for c in CLASSES}
    with tarfile.open(path) as tar:
      for m in tar:
        parts = m.name.strip("./").split("/")
        if m.isfile() and len(parts) == 3 and parts[0] == "test" and parts[1] in per_class:
          per_class[parts[1]].append((parts[2], tar.extractfile(m).read()))
    xs, ys = [], []
    for i in range(start, start + n):
      c = i % 10
      name, data = sorted(per_class[CLASSES[c]])[i // 10]
      xs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
      ys.append(c)
    x, y = np.stack(xs), np.asarray(ys)
  return (np.asarray(x, np.float32) / 255.0), np.asarray(y, np.int32)


def run_reference(net, x, y, *, eps, norm, attacks, batch_size, seed):
  import torch
  from pyautoattack import AutoAttack

  from saat_jax.testing.autoattack_reference import run_reference as run_logged

  device = next(net.parameters()).device
  adversary = AutoAttack(net, norm=norm, eps=eps, version="standard", seed=seed, device=device)
  adversary.attacks_to_run = list(attacks)  # the standard settings, restricted to these attacks
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  ref = run_logged(adversary, xt, torch.from_numpy(y.astype(np.int64)), batch_size=batch_size)
  accs = dict(clean=ref["clean"], **ref["robust_accuracy"])
  return dict(robust_accuracy=accs, attack_times_s=ref["attack_times_s"], wall_s=ref["wall_s"],
              images_per_s=len(y) / ref["wall_s"]), ref["robust"]


def run_jax(logits_fn, x, y, *, eps, norm, attacks, batch_size, seed):
  from saat_jax.autoattack import autoattack, core

  # version='custom' with the *standard* version's settings (the reference's standard run above is
  # restricted the same way; custom alone would use the constructor's 5 APGD restarts)
  orig = core.attack_settings
  core.attack_settings = lambda version, norm: orig("standard", norm)
  try:
    t0 = time.time()
    res = autoattack(logits_fn, x, y, eps=eps, norm=norm, version="custom", attacks_to_run=list(attacks),
                     seed=seed, batch_size=batch_size, progress=True)
    total = time.time() - t0
  finally:
    core.attack_settings = orig
  times = {k: v for k, v in res.times.items() if k != "clean"}
  return (dict(robust_accuracy=dict(res.robust_accuracy), attack_times_s=times, wall_s=total,
               images_per_s=len(y) / total), np.asarray(res.robust))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=100, help="number of test images (the first N)")
  p.add_argument("--start", type=int, default=0,
                 help="index of the first test image (a long comparison can run in chunks, then --merge)")
  p.add_argument("--eps", type=float, nargs="+", default=[1.0], help="budgets in /255 units")
  p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
  p.add_argument("--attacks", nargs="+", default=STANDARD, help=f"subset of {STANDARD}, in order")
  p.add_argument("--batch-size", type=int, default=250)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "autoattack_vs_reference.json"))
  p.add_argument("--skip-reference", action="store_true")
  p.add_argument("--skip-jax", action="store_true")
  p.add_argument("--warm", action="store_true", help="time a second JAX run as well (compiled)")
  p.add_argument("--torch-threads", type=int, default=os.cpu_count())
  p.add_argument("--torch-device", default=None, help="cuda or cpu (default: cuda when torch sees a GPU)")
  p.add_argument("--checkpoint", default=None,
                 help="a PyTorch state_dict (.pt/.pth, or .npz of its arrays) to attack instead of the wheel's "
                 "model_test.pt")
  p.add_argument("--arch", default="resnet18", help="with --checkpoint: resnet18, preact_resnet18, wrn34_10, ...")
  p.add_argument("--normalization", default="none", choices=sorted(NORMALIZATIONS),
                 help="with --checkpoint: input normalisation the model was trained with (applied inside it)")
  p.add_argument("--merge", nargs="+", metavar="JSON", help="only join these result files into --out")
  p.add_argument("--note", default=None, help="with --merge: how the runs were made (stored as 'note')")
  args = p.parse_args(argv)
  if args.merge:
    return merge(args.merge, args.out, note=args.note)
  attacks = [a for s in args.attacks for a in s.split(",") if a]
  bad = [a for a in attacks if a not in STANDARD]
  if bad:
    p.error(f"unknown attacks {bad}; choose from {STANDARD}")

  import jax

  if args.skip_reference and args.skip_jax:
    p.error("--skip-reference and --skip-jax together leave nothing to run")
  if not os.path.isfile(args.data):
    p.error(f"no CIFAR-10 archive at {args.data!r}; pass --data (see ../shared/data/README.md)")
  if args.checkpoint is None:
    examples = reference_dir()
    net = None if args.skip_reference else load_torch_model(examples)
    logits_fn = None if args.skip_jax else load_jax_model(examples)
    model_desc = WHEEL_MODEL
  else:
    if not args.skip_reference:
      reference_dir()  # pyautoattack must be installed for the reference run
    net, logits_fn = load_checkpoint_models(args.checkpoint, args.arch, args.normalization,
                                            want_torch=not args.skip_reference, want_jax=not args.skip_jax)
    model_desc = dict(checkpoint=os.path.basename(args.checkpoint), arch=args.arch,
                      normalization=args.normalization)
  x, y = load_points(args.data, args.n, args.start)
  out = dict(n=args.n, start=args.start, model=model_desc, norm=args.norm, attacks=attacks,
             batch_size=args.batch_size, seed=args.seed,
             machine=dict(platform=platform.platform(), cpus=os.cpu_count(), jax_backend=jax.default_backend(),
                          jax=jax.__version__, cpu_affinity=sorted(os.sched_getaffinity(0)),
                          xla_flags=os.environ.get("XLA_FLAGS", "")),
             command=" ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:]),
             runs=[])
  out["machine"]["jax_devices"] = [str(d) for d in jax.devices()]
  if net is not None:
    import torch
    torch.set_num_threads(args.torch_threads)
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)
    out["machine"].update(torch=torch.__version__, torch_threads=args.torch_threads, torch_device=device)
    if device.startswith("cuda"):
      out["machine"]["torch_gpu"] = torch.cuda.get_device_name()

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:  # after every attack run, so a long run keeps what it measured
      json.dump(out, f, indent=2)

  for e255 in args.eps:
    eps = e255 / 255 if args.norm == "Linf" else e255
    row = dict(eps=e255, eps_units="/255" if args.norm == "Linf" else "l2")
    out["runs"].append(row)
    kw = dict(eps=eps, norm=args.norm, attacks=attacks, batch_size=args.batch_size, seed=args.seed)
    if net is not None:
      row["reference"], ref_robust = run_reference(net, x, y, **kw)
      row["reference"]["robust"] = ref_robust.astype(int).tolist()  # per point, to merge separate runs
      save()
    if logits_fn is not None:
      row["jax"], jax_robust = run_jax(logits_fn, x, y, **kw)
      row["jax"]["robust"] = jax_robust.astype(int).tolist()
      if args.warm:
        row["jax_warm"], _ = run_jax(logits_fn, x, y, **kw)
    if net is not None and logits_fn is not None:
      row["agreement"] = float(np.mean(ref_robust == jax_robust))
      best = row.get("jax_warm", row["jax"])
      row["time_ratio_jax_over_reference"] = best["wall_s"] / row["reference"]["wall_s"]
    print_row(row, attacks)
    save()
  print(f"wrote {args.out}")


def merge(paths, out_path, note=None):
  """Joins results of separate runs: the reference and JAX run side by side (``--skip-jax`` /
  ``--skip-reference``), and chunks of the points (``--start``/``--n``) run one after another.

  Rows are matched by budget. Within a chunk, a budget's reference and JAX results may come from
  different files (same points, seed and attacks are checked). Chunks must tile ``start .. start +
  n`` without gaps; their per-point verdicts are concatenated, accuracies weighted by size, and
  times added (each chunk's JAX time includes its own compilation). Agreement is recomputed.
  """
  merged, chunks = None, {}
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    part.setdefault("start", 0)
    part.setdefault("model", WHEEL_MODEL)  # files written before --checkpoint existed
    if merged is None:
      merged = {k: v for k, v in part.items() if k not in ("runs", "command", "start", "n")}
      merged["merged_from"] = []
    for key in ("model", "norm", "attacks", "seed"):
      if part[key] != merged[key]:
        sys.exit(f"cannot merge {path}: its {key} is {part[key]!r}, not {merged[key]!r}")
    merged["merged_from"].append(dict(file=os.path.basename(path), start=part["start"], n=part["n"],
                                      command=part.get("command"), machine=part.get("machine")))
    merged["machine"].update({k: v for k, v in part["machine"].items() if k not in merged["machine"]})
    rows = chunks.setdefault((part["start"], part["n"]), {})
    for row in part["runs"]:
      slot = rows.setdefault(row["eps"], dict(eps=row["eps"], eps_units=row["eps_units"]))
      for impl in ("reference", "jax", "jax_warm"):
        if impl in row:
          slot[impl] = row[impl]

  spans = sorted(chunks)
  for (s0, n0), (s1, _) in zip(spans, spans[1:]):
    if s0 + n0 != s1:
      sys.exit(f"cannot merge: the chunks {spans} do not tile a range of points (gap or overlap at {s0 + n0})")
  merged["start"], merged["n"] = spans[0][0], sum(n for _, n in spans)
  if len(spans) > 1:
    merged["chunks"] = [dict(start=s, n=n) for s, n in spans]
  budgets = sorted(set().union(*(rows.keys() for rows in chunks.values())))
  merged["runs"] = []
  for eps in budgets:
    row = None
    for span in spans:
      part = chunks[span].get(eps)
      if part is None:
        sys.exit(f"cannot merge: the chunk starting at {span[0]} has no run at eps {eps}")
      row = part if row is None else _join_chunks(row, part, span[1])
    merged["runs"].append(row)
  for row in merged["runs"]:
    if "reference" in row and "jax" in row:
      ref, jx = np.asarray(row["reference"]["robust"]), np.asarray(row["jax"]["robust"])
      row["agreement"] = float(np.mean(ref == jx))
      row["time_ratio_jax_over_reference"] = row["jax"]["wall_s"] / row["reference"]["wall_s"]
    print_row(row, merged["attacks"])
  if note:
    merged["note"] = note
  with open(out_path, "w") as f:
    json.dump(merged, f, indent=2)
  print(f"wrote {out_path}")


def _join_chunks(row, part, n_part):
  """``row`` (points so far) followed by ``part`` (the next ``n_part`` points), for one budget."""
  out = dict(eps=row["eps"], eps_units=row["eps_units"])
  for impl in ("reference", "jax", "jax_warm"):
    if impl not in row and impl not in part:
      continue
    if (impl in row) != (impl in part):
      sys.exit(f"cannot merge: {impl} is missing from some chunks at eps {row['eps']}")
    a, b = row[impl], part[impl]
    n_a = len(a["robust"])
    if len(b["robust"]) != n_part:
      sys.exit(f"cannot merge: a chunk of {n_part} points holds {len(b['robust'])} verdicts")
    n = n_a + n_part
    out[impl] = dict(
        robust_accuracy={k: (a["robust_accuracy"][k] * n_a + b["robust_accuracy"][k] * n_part) / n
                         for k in a["robust_accuracy"]},
        attack_times_s={k: a["attack_times_s"].get(k, 0.0) + b["attack_times_s"].get(k, 0.0)
                        for k in dict.fromkeys([*a["attack_times_s"], *b["attack_times_s"]])},  # in order
        wall_s=a["wall_s"] + b["wall_s"],
        images_per_s=n / (a["wall_s"] + b["wall_s"]),
        robust=list(a["robust"]) + list(b["robust"]))
  return out


def print_row(row, attacks):
  head = (f"{'eps':>6} {'impl':<10}" + "".join(f"{a:>10}" for a in ["clean"] + attacks)
          + f"{'wall s':>10}{'images/s':>10}")
  print(head)
  print("-" * len(head))
  for impl in ("reference", "jax", "jax_warm"):
    if impl in row:
      r = row[impl]
      cells = "".join(f"{100 * r['robust_accuracy'].get(a, float('nan')):>9.1f}%" for a in ["clean"] + attacks)
      per_s = r.get("images_per_s", len(r.get("robust", ())) / r["wall_s"])  # older files lack it
      print(f"{row['eps']:>6g} {impl:<10}{cells}{r['wall_s']:>10.1f}{per_s:>10.3g}")
  if "agreement" in row:
    print(f"per-point agreement {100 * row['agreement']:.1f}%, time jax/reference "
          f"{row['time_ratio_jax_over_reference']:.2f}")


if __name__ == "__main__":
  main()
