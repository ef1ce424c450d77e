"""Export a run's checkpoint as a PyTorch ``state_dict`` of the reference architecture.

  python -m saat_jax.export --workdir runs/saat --checkpoint best --out saat_best.pt
  python -m saat_jax.export --workdir runs/saat --weights ema --out saat_ema.npz   # without torch

The file holds the bare network (Rice et al.'s PreAct ResNet-18, or TRADES / RobustBench's
WRN-34-x keys); the run's input normalisation is printed, to wrap it with (see
:mod:`saat_jax.models.torch_export`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m saat_jax.export", description=__doc__.split("\n")[1])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--checkpoint", default="best", choices=("best", "last"))
  ap.add_argument("--weights", default="raw", choices=("raw", "ema"))
  ap.add_argument("--out", required=True, help="a .pt (needs torch) or .npz path")
  args = ap.parse_args(argv)

  import jax

  from saat_jax import checkpointing
  from saat_jax.models import NORMALIZATIONS
  from saat_jax.models.torch_export import export_state_dict, save_state_dict
  from saat_jax.run_state import restore_for_eval

  try:
    _, variables, meta, _ = restore_for_eval(args.workdir, args.checkpoint, args.weights)
    spec = meta["model"]
    sd = export_state_dict(jax.device_get(variables), spec["name"])
    path = save_state_dict(sd, args.out)
  except (checkpointing.CheckpointError, ValueError, ImportError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  mean, std = NORMALIZATIONS[spec["normalization"]]
  norm = "none (inputs in [0, 1])" if mean is None else f"{spec['normalization']}: mean {mean}, std {std}"
  print(f"written {path}: {spec['name']}, {spec['num_classes']} classes, {len(sd)} tensors, "
        f"epoch {meta['epoch'] + 1} ({args.checkpoint}, {args.weights} weights); normalisation {norm}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
