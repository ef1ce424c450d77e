"""Export trained Flax models as PyTorch ``state_dict``s of the reference architectures.

The inverse of :mod:`saat_jax.models.torch_import`, through the same key map
(:func:`~saat_jax.models.torch_import.torch_key_map`): HWIO conv kernels become OIHW weights,
(in, out) dense kernels (out, in) weights, BatchNorm ``scale``/``bias``/``mean``/``var`` become
``weight``/``bias``/``running_mean``/``running_var`` (and ``num_batches_tracked``, which
``load_state_dict(strict=True)`` expects). The keys are those of Rice et al.'s PreAct ResNet-18,
the AutoAttack examples' ResNet-18 and TRADES / RobustBench's Wide ResNet (``block1.layer.0...``),
so a model trained here can be checked with ``pyautoattack`` or submitted to RobustBench.

Input normalisation: saat_jax normalises inside the model; the exported state_dict is the bare
network, which expects normalised inputs. Wrap it as the Flax model does (the model spec's
``normalization``: mean and std in :data:`saat_jax.models.NORMALIZATIONS`), e.g. with
``saat_jax.testing.torch_reference.Normalized`` or RobustBench's own wrapper.

Torch is needed only to write a ``.pt`` file; :func:`export_state_dict` returns numpy arrays and
``.npz`` files are written without torch.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from flax import traverse_util

from saat_jax.models.torch_import import _family, _final_layer_key, torch_key_map


def _to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:   # HWIO -> OIHW
    array = array.transpose(3, 2, 0, 1)
  elif leaf == "kernel" and array.ndim == 2:  # (in, out) -> (out, in)
    array = array.T
  return np.ascontiguousarray(array, dtype=np.float32)


def export_state_dict(variables: Mapping, model_name: str) -> dict[str, np.ndarray]:
  """``variables`` (``{'params', 'batch_stats'}`` of ``create_model(model_name, ...)``) as the
  reference architecture's ``state_dict``: ``{torch key: float32 numpy array}``.

  Raises ``ValueError`` for a model with no PyTorch reference (naming the supported ones) and for
  variables that do not fit ``model_name`` (naming the first differing entries).
  """
  family, canonical = _family(model_name)
  params = variables.get("params") if isinstance(variables, Mapping) else None
  if params is None:
    raise ValueError("export_state_dict expects Flax variables {'params': ..., 'batch_stats': ...}, "
                     f"got {type(variables).__name__}")
  final = params.get(_final_layer_key(family), {}).get("kernel")
  if final is None:
    raise ValueError(f"these variables have no final layer {_final_layer_key(family)!r}: they are not "
                     f"a {canonical}")
  num_classes = int(np.shape(final)[1])
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  key_map = torch_key_map(canonical, num_classes)
  wanted = {path: key for key, (path, _) in key_map.items()}
  missing = ["/".join(p) for p in wanted if p not in flat]
  extra = ["/".join(p) for p in flat if p not in wanted]
  if missing or extra:
    raise ValueError(f"variables do not fit {canonical} with {num_classes} classes: "
                     f"missing {missing[:5]}, unexpected {extra[:5]}")
  out: dict[str, np.ndarray] = {}
  for key, (path, shape) in key_map.items():
    array = _to_torch_layout(np.asarray(flat[path]), path[-1])
    if array.shape != shape:
      raise ValueError(f"{'/'.join(path)} has shape {np.shape(flat[path])}, which does not fit {key} {shape}")
    out[key] = array
    if key.endswith(".running_var"):
      out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> str:
  """Write a state_dict: ``.npz`` with numpy, anything else with ``torch.save`` (needs torch)."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    np.savez(path, **state_dict)
    return path
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"writing {path!r} as a PyTorch file needs torch (pip install torch==2.13.0); "
                      "or give a path ending in .npz") from e
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
  return path
