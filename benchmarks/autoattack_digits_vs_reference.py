"""AutoAttack in JAX vs the reference ``pyautoattack`` 0.2.0 on a model this project trained on digits.

Issue 3 (b): the comparison on an adversarially trained model (the pretrained ResNet-18 of the
wheel, ``autoattack_vs_reference.py``, is not robust). The model is the small CNN of
``configs/saat_digits.py`` trained by ``saat_jax`` (SAAT, or ``--method at`` for PGD-AT); its
checkpoint (``--checkpoint best`` by default) is restored from the work dir, trained first when the
work dir has none. The same network is rebuilt in PyTorch from the restored parameters (BatchNorm
in eval mode on the running statistics; the flatten in NHWC order as in Flax), the logits of both
are checked to agree to 1e-4, and both AutoAttack drivers run the ``standard`` version on all 400
digits test points at each ``--eps`` (in /255; the config's evaluation budget 32/255 by default).

  python benchmarks/autoattack_digits_vs_reference.py --workdir runs/digits_aa_bench \
      --eps 16 32 --out benchmarks/results/autoattack_digits_vs_reference_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from autoattack_vs_reference import STANDARD, print_row, run_jax, run_reference  # noqa: E402


def load_config(method: str, epochs: int):
  spec = importlib.util.spec_from_file_location("_saat_digits_cfg", os.path.join(ROOT, "configs", "saat_digits.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.method = method
  if epochs:
    config.num_epochs = epochs
  return config


def trained_run(workdir: str, method: str, epochs: int):
  from saat_jax import checkpointing, train

  if not os.path.isdir(checkpointing.checkpoint_dir(workdir, "last")):
    print(f"training {method} on digits into {workdir} ...", flush=True)
    train.train_and_evaluate(load_config(method, epochs), workdir)


def torch_small_cnn(variables):
  """The restored Flax SmallCNN (``use_bn=True``, no input normalisation) as a PyTorch module."""
  import torch
  import torch.nn as nn

  params, stats = variables["params"], variables["batch_stats"]
  if any(k not in params for k in ("conv1", "conv2", "bn1", "bn2", "fc1", "fc2")):
    sys.exit(f"not a small_cnn with BatchNorm: params {sorted(params)}")

  def t(a):
    return torch.from_numpy(np.array(a, np.float32))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      c1, c2 = params["conv1"]["kernel"], params["conv2"]["kernel"]   # HWIO
      self.conv1 = nn.Conv2d(c1.shape[2], c1.shape[3], 3, 1, 1, bias=False)
      self.conv2 = nn.Conv2d(c2.shape[2], c2.shape[3], 3, 2, 1, bias=False)
      self.bn1, self.bn2 = nn.BatchNorm2d(c1.shape[3], eps=1e-5), nn.BatchNorm2d(c2.shape[3], eps=1e-5)
      f1, f2 = params["fc1"]["kernel"], params["fc2"]["kernel"]       # (in, out)
      self.fc1, self.fc2 = nn.Linear(*f1.shape), nn.Linear(*f2.shape)
      with torch.no_grad():
        for conv, name in ((self.conv1, "conv1"), (self.conv2, "conv2")):
          conv.weight.copy_(t(params[name]["kernel"]).permute(3, 2, 0, 1))  # -> OIHW
        for bn, name in ((self.bn1, "bn1"), (self.bn2, "bn2")):
          bn.weight.copy_(t(params[name]["scale"]))
          bn.bias.copy_(t(params[name]["bias"]))
          bn.running_mean.copy_(t(stats[name]["mean"]))
          bn.running_var.copy_(t(stats[name]["var"]))
        for fc, name in ((self.fc1, "fc1"), (self.fc2, "fc2")):
          fc.weight.copy_(t(params[name]["kernel"]).T)
          fc.bias.copy_(t(params[name]["bias"]))

    def forward(self, x):  # NCHW in [0, 1]
      h = torch.relu(self.bn1(self.conv1(x)))
      h = torch.relu(self.bn2(self.conv2(h)))
      h = h.permute(0, 2, 3, 1).flatten(1)  # Flax flattens H, W, C
      return self.fc2(torch.relu(self.fc1(h)))

  return Net().eval()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "digits_aa_bench"))
  p.add_argument("--method", default="saat", choices=["saat", "at"], help="used only when training")
  p.add_argument("--epochs", type=int, default=0, help="override the config's epochs when training")
  p.add_argument("--checkpoint", default="best", choices=["best", "last"])
  p.add_argument("--eps", type=float, nargs="+", default=None, help="budgets in /255 (default: the run's eval eps)")
  p.add_argument("--batch-size", type=int, default=500)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--torch-threads", type=int, default=os.cpu_count())
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "autoattack_digits_vs_reference.json"))
  args = p.parse_args(argv)

  import jax
  import torch

  from saat_jax.run_state import restore_for_eval
  from saat_jax.data import load_dataset, to_float

  trained_run(args.workdir, args.method, args.epochs)
  model, variables, meta, cfg = restore_for_eval(args.workdir, args.checkpoint)
  data = load_dataset("digits", None)
  x = np.asarray(to_float(data.test_images), np.float32)
  y = np.asarray(data.test_labels, np.int32)

  def logits_fn(xa):
    return model.apply(variables, xa, train=False)

  torch.set_num_threads(args.torch_threads)
  net = torch_small_cnn(jax.device_get(variables))
  with torch.no_grad():
    ref_logits = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  max_diff = float(np.abs(ref_logits - np.asarray(jax.jit(logits_fn)(x))).max())
  if max_diff > 1e-4:
    sys.exit(f"the PyTorch copy's logits differ from the Flax model's by {max_diff:.2e} (> 1e-4)")

  eps_list = args.eps or [round(float(cfg.eval.eps) * 255, 6)]
  out = dict(model=f"small_cnn on digits, {cfg.method}, checkpoint {args.checkpoint} (epoch {meta['epoch'] + 1})",
             workdir=os.path.relpath(args.workdir, ROOT), n=int(len(y)), norm="Linf", version="standard",
             attacks=STANDARD, batch_size=args.batch_size, seed=args.seed, logits_max_abs_diff=max_diff,
             machine=dict(platform=platform.platform(), cpus=os.cpu_count(), jax_backend=jax.default_backend(),
                          jax=jax.__version__, torch=torch.__version__, torch_threads=args.torch_threads),
             command=" ".join(["python"] + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]), runs=[])
  for e255 in eps_list:
    row = dict(eps=e255, eps_units="/255")
    kw = dict(eps=e255 / 255, norm="Linf", attacks=STANDARD, batch_size=args.batch_size, seed=args.seed)
    row["reference"], ref_robust = run_reference(net, x, y, **kw)
    row["jax"], jax_robust = run_jax(logits_fn, x, y, **kw)
    row["agreement"] = float(np.mean(ref_robust == jax_robust))
    row["time_ratio_jax_over_reference"] = row["jax"]["wall_s"] / row["reference"]["wall_s"]
    row["max_abs_diff_pp"] = {a: 100 * abs(row["jax"]["robust_accuracy"][a] - row["reference"]["robust_accuracy"][a])
                              for a in ["clean"] + STANDARD}
    out["runs"].append(row)
    print_row(row, STANDARD)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:  # after every budget, so a long run keeps what it measured
      json.dump(out, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
