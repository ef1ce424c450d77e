"""Export a run's checkpoint to PyTorch: the weights, and the spec of the module that loads them.

  python -m saat_jax.export --workdir runs/saat --checkpoint best --out saat_best.pt
  python -m saat_jax.export --workdir runs/saat --weights ema --out saat_ema.npz   # without torch

Every model the project trains exports (PreAct ResNet-18, ResNet-18, WRN-<depth>-<width>, the small
CNN). ``saat_best.pt`` is a plain ``state_dict`` of the reference architecture (Rice et al.'s PreAct
ResNet-18, the AutoAttack examples' ResNet-18, TRADES / RobustBench's WRN keys; see
:mod:`saat_jax.models.torch_export`), and ``saat_best.pt.json`` beside it says which module it
belongs to: its ``model`` entry is the spec :func:`saat_jax.models.torch_nets.build` takes, the
run's model spec (name, num_classes, normalization, kwargs) with the image shape::

  net = build(json.load(open("saat_best.pt.json"))["model"]).eval()   # NCHW in [0, 1], as the Flax model
  net.load_state_dict(torch.load("saat_best.pt", weights_only=True), strict=True)

or, in one call, :func:`load_torch` (of the ``.pt``, the ``.npz`` or the run's work dir itself).

Why a ``.json`` beside the weights rather than the spec inside the ``.pt``: a plain ``state_dict``
is what PyTorch code, ``pyautoattack`` and RobustBench load (``net.load_state_dict(torch.load(f))``),
and any extra entry in it would fail ``strict=True``; the JSON is read without torch and without
unpickling anything, and also describes a ``.npz`` export. The file name is the weights' plus
``.json`` (:func:`spec_path`), so a ``.pt`` and a ``.npz`` of one run never share one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

FORMAT = "saat_jax export 1"


def spec_path(weights_path: str) -> str:
  """Where the spec of the weights at ``weights_path`` is: the same name plus ``.json``."""
  return os.fspath(weights_path) + ".json"


def _load_snippet(path: str) -> str:
  """The PyTorch code that loads the export at ``path`` (printed by the CLI, kept in the .json)."""
  name = os.path.basename(path)
  read = (f"{{k: torch.from_numpy(v) for k, v in np.load({name!r}).items()}}" if name.endswith(".npz")
          else f"torch.load({name!r}, weights_only=True)")
  return "\n".join([
      "import json" + (", numpy as np" if name.endswith(".npz") else "") + ", torch",
      "from saat_jax.models.torch_nets import build",
      f"net = build(json.load(open({os.path.basename(spec_path(path))!r}))['model']).eval()  # NCHW in [0, 1]",
      f"net.load_state_dict({read}, strict=True)"])


def _restore(workdir: str, checkpoint: str, weights: str):
  """``(host variables, export spec, meta)`` of a run's checkpoint; errors say "cannot export"."""
  import jax

  from saat_jax import checkpointing
  from saat_jax.run_state import image_shape, restore_for_eval

  try:
    _, variables, meta, _ = restore_for_eval(workdir, checkpoint, weights)
  except (checkpointing.CheckpointError, ValueError, FileNotFoundError) as e:
    raise ValueError(f"cannot export {workdir} ({checkpoint} checkpoint, {weights} weights): {e}") from e
  spec = dict(meta["model"])
  spec["kwargs"] = dict(spec.get("kwargs") or {})
  spec["image_shape"] = [int(v) for v in image_shape(meta)]
  return jax.device_get(variables), spec, meta


def _state_dict(variables, spec: dict) -> dict:
  from saat_jax.models.torch_export import export_state_dict

  return export_state_dict(variables, spec["name"], image_shape=tuple(spec["image_shape"]),
                           normalization=spec["normalization"], **spec["kwargs"])


def _load_strict(spec: dict, state_dict, normalize: bool = True):
  """The module :func:`~saat_jax.models.torch_nets.build` makes of ``spec``, ``state_dict`` loaded
  with ``strict=True``, in eval mode."""
  import numpy as np
  import torch

  from saat_jax.models.torch_nets import build

  net = build(spec, normalize=normalize)
  tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
  try:
    net.load_state_dict(tensors, strict=True)
  except RuntimeError as e:
    raise ValueError(f"the weights do not load into the PyTorch module of {spec['name']} "
                     f"(saat_jax.models.torch_nets.build of the spec {spec}): {e}") from e
  return net.eval()


def _torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def export(workdir: str, out: str, *, checkpoint: str = "best", weights: str = "raw") -> dict:
  """Write the ``checkpoint`` (``best`` or ``last``) ``weights`` (``raw`` or ``ema``) of the run in
  ``workdir`` to ``out`` (``.npz``: numpy arrays, without torch; anything else: ``torch.save``) and
  its spec to :func:`spec_path` ``(out)``; returns that spec record.

  Where torch is installed the weights are first loaded into the module of the spec with
  ``strict=True``, so what is written is known to load. Raises ``ValueError`` (a run that cannot be
  exported), ``ImportError`` (a ``.pt`` without torch) or ``OSError`` (an unwritable ``out``), each
  saying "cannot export" and what to do; then nothing is written.
  """
  from saat_jax.models import NORMALIZATIONS
  from saat_jax.models.torch_export import check_export_path, save_state_dict

  out = check_export_path(out)  # before reading the checkpoint: a wrong --out fails at once
  variables, spec, meta = _restore(workdir, checkpoint, weights)
  state_dict = _state_dict(variables, spec)
  if _torch_available():
    try:
      _load_strict(spec, state_dict)
    except ValueError as e:
      raise ValueError(f"cannot export {workdir}: {e}") from e
  mean, std = NORMALIZATIONS[spec["normalization"]]
  record = {
      "format": FORMAT,
      "file": os.path.basename(out),
      "model": spec,
      "input": "NCHW float32 images in [0, 1]; build(model) normalises them itself, build(model, "
               "normalize=False) is the bare network, which takes (x - mean) / std",
      "normalization": None if mean is None else {"mean": list(mean), "std": list(std)},
      "tensors": len(state_dict),
      "source": {"workdir": os.path.abspath(workdir), "checkpoint": checkpoint, "weights": weights,
                 "epoch": int(meta["epoch"]) + 1},
      "load": _load_snippet(out),
  }
  json_path = spec_path(out)
  tmp = f"{json_path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(record, f, indent=1)
    save_state_dict(state_dict, out)
    os.replace(tmp, json_path)
  except OSError as e:
    raise OSError(str(e) if "cannot export" in str(e) else f"cannot export to {json_path!r}: {e}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return record


def load_torch(source: str, *, checkpoint: str = "best", weights: str = "raw", normalize: bool = True):
  """A ``torch.nn.Module`` in eval mode with exported weights loaded (``strict=True``).

  ``source`` is a file written by :func:`export` (``.pt`` or ``.npz``, with its ``.json`` beside
  it), or a run's work dir, whose ``checkpoint`` / ``weights`` are exported in memory. The module
  takes NCHW images in [0, 1] and gives the Flax model's logits; ``normalize=False`` gives the bare
  network, which takes normalised ones. Raises ``FileNotFoundError`` for a file without its spec,
  ``ValueError`` for weights that do not fit it.
  """
  import numpy as np
  try:
    import torch
  except ImportError as e:
    raise ImportError("loading an export into PyTorch needs torch: pip install torch==2.13.0, or "
                      "pip install saat_jax[torch]") from e

  source = os.fspath(source)
  if os.path.isdir(source):
    variables, spec, _ = _restore(source, checkpoint, weights)
    return _load_strict(spec, _state_dict(variables, spec), normalize)
  if not os.path.isfile(source):
    raise FileNotFoundError(f"no export at {source!r}: give the .pt or .npz written by python -m saat_jax.export, "
                            "or a run's work dir")
  json_path = spec_path(source)
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f"cannot load {source!r} as a saat_jax export: its spec {json_path!r} is missing "
                            "(python -m saat_jax.export writes both); or build the module yourself with "
                            "saat_jax.models.torch_nets.build(spec) and load the state_dict into it")
  with open(json_path) as f:
    record = json.load(f)
  if record.get("format") != FORMAT:
    raise ValueError(f"{json_path} is not the spec of a saat_jax export (format {record.get('format')!r}, "
                     f"expected {FORMAT!r}); export the run again with python -m saat_jax.export")
  if source.endswith(".npz"):
    with np.load(source) as z:
      state_dict = {k: z[k] for k in z.files}
  else:
    state_dict = torch.load(source, map_location="cpu", weights_only=True)
  try:
    return _load_strict(record["model"], state_dict, normalize)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from e


def main(argv: Optional[Any] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m saat_jax.export", description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="the run's work dir")
  ap.add_argument("--checkpoint", default="best", choices=("best", "last"))
  ap.add_argument("--weights", default="raw", choices=("raw", "ema"))
  ap.add_argument("--out", required=True, help="a .pt (needs torch) or .npz path; its spec goes to OUT.json")
  args = ap.parse_args(argv)

  try:
    record = export(args.workdir, args.out, checkpoint=args.checkpoint, weights=args.weights)
  except (ValueError, ImportError, OSError) as e:
    print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
    return 2
  spec, norm = record["model"], record["normalization"]
  norm = ("none (inputs in [0, 1])" if norm is None
          else f"{spec['normalization']}: mean {tuple(norm['mean'])}, std {tuple(norm['std'])}")
  print(f"written {args.out} and {spec_path(args.out)}: {spec['name']}, {spec['num_classes']} classes, "
        f"{record['tensors']} tensors, epoch {record['source']['epoch']} ({args.checkpoint}, {args.weights} "
        f"weights); normalisation {norm}, applied inside the module of saat_jax.models.torch_nets.build")
  print("load it in PyTorch (in the directory of the files) with:\n" + record["load"])
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
