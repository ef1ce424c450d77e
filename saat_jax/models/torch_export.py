"""Export trained Flax models as PyTorch ``state_dict``s of the reference architectures.

The inverse of :mod:`saat_jax.models.torch_import`, through the same key map
(:func:`~saat_jax.models.torch_import.torch_key_map`): HWIO conv kernels become OIHW weights,
(in, out) dense kernels (out, in) weights, BatchNorm ``scale``/``bias``/``mean``/``var`` become
``weight``/``bias``/``running_mean``/``running_var`` (and ``num_batches_tracked``, which
``load_state_dict(strict=True)`` expects). The keys are those of Rice et al.'s PreAct ResNet-18,
the AutoAttack examples' ResNet-18 and TRADES / RobustBench's Wide ResNet (``block1.layer.0...``),
so a model trained here can be checked with ``pyautoattack`` or submitted to RobustBench; the
small CNN, which has no PyTorch original, keeps its Flax layer names (``conv1``, ``bn1``, ``fc1``...).
Every exported ``state_dict`` loads with ``strict=True`` into the module that
:func:`saat_jax.models.torch_nets.build` makes of the run's model spec.

Input normalisation: saat_jax normalises inside the model; the exported state_dict is the bare
network, which expects normalised inputs. The modules of :mod:`saat_jax.models.torch_nets`
normalise as the Flax model does (the model spec's ``normalization``: mean and std in
:data:`saat_jax.models.NORMALIZATIONS`) with buffers outside the state_dict; with a module of
one's own, wrap it (e.g. ``torch_nets.Normalized`` or RobustBench's wrapper).

Torch is needed only to write a ``.pt`` file; :func:`export_state_dict` returns numpy arrays and
``.npz`` files are written without torch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from saat_jax.models.torch_import import model_family, final_layer_key, torch_key_map


def _to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:   # HWIO -> OIHW
    array = array.transpose(3, 2, 0, 1)
  elif leaf == "kernel" and array.ndim == 2:  # (in, out) -> (out, in)
    array = array.T
  return np.ascontiguousarray(array, dtype=np.float32)


def export_state_dict(variables: Mapping, model_name: str, *, image_shape: Sequence[int] = (32, 32, 3),
                      normalization: str = "none", **model_kwargs: Any) -> dict[str, np.ndarray]:
  """``variables`` (``{'params', 'batch_stats'?}`` of ``create_model(model_name, num_classes,
  normalization=normalization, **model_kwargs)`` on ``image_shape`` (H, W, C) images) as the PyTorch
  module's ``state_dict``: ``{torch key: float32 numpy array}`` (``num_batches_tracked``: int64
  zeros). ``num_classes`` is read from the final layer. (``normalization`` changes no weight, except
  that a 3-channel one turns one-channel images into three: the first conv's input.)

  Raises ``ValueError`` ("cannot export ...") for a model with no PyTorch module (naming the
  supported ones) and for variables that do not fit ``model_name`` (naming the first differing
  entries, and the arguments to check).
  """
  family, canonical = model_family(model_name, "export")
  fail = f"cannot export these variables as a {canonical}"
  params = variables.get("params") if isinstance(variables, Mapping) else None
  if params is None:
    raise ValueError(f"{fail}: export_state_dict expects Flax variables {{'params': ..., 'batch_stats': ...}}, "
                     f"got {type(variables).__name__}")
  final = params.get(final_layer_key(family), {}).get("kernel")
  if final is None:
    raise ValueError(f"{fail}: they have no final layer {final_layer_key(family)!r}, so they are not a "
                     f"{canonical}; export them with the name of the model they were trained as")
  num_classes = int(np.shape(final)[1])
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  key_map = torch_key_map(canonical, num_classes, image_shape=tuple(image_shape), normalization=normalization,
                          **model_kwargs)
  wanted = {path: key for key, (path, _) in key_map.items()}
  missing = ["/".join(p) for p in wanted if p not in flat]
  extra = ["/".join(p) for p in flat if p not in wanted]
  settings = f"{num_classes} classes" + "".join(f", {k}={v!r}" for k, v in model_kwargs.items())
  hint = "export them with the model name and kwargs they were trained with"
  if missing or extra:
    raise ValueError(f"{fail} with {settings}: missing {missing[:5]}, unexpected {extra[:5]}; {hint}")
  out: dict[str, np.ndarray] = {}
  for key, (path, shape) in key_map.items():
    array = _to_torch_layout(np.asarray(flat[path]), path[-1])
    if array.shape != shape:
      raise ValueError(f"{fail} with {settings} on {tuple(image_shape)} images: {'/'.join(path)} has shape "
                       f"{np.shape(flat[path])}, which does not fit {key} {shape}; {hint} (and the image "
                       "shape: a run records it in its checkpoint's meta)")
    out[key] = array
    if key.endswith(".running_var"):
      out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out


def check_export_path(path: str) -> str:
  """``path`` if a state_dict can be written there: its directory exists, and torch is installed
  unless it ends in ``.npz``; else ``FileNotFoundError`` / ``ImportError`` saying what to do."""
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"cannot export to {path!r}: the directory {parent!r} does not exist (create it first)")
  if not path.endswith(".npz"):
    try:
      import torch  # noqa: F401
    except ImportError as e:
      raise ImportError(f"cannot export to {path!r}: a PyTorch file needs torch (pip install torch==2.13.0, "
                        "or pip install saat_jax[torch]); or give a path ending in .npz") from e
  return path


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> str:
  """Write a state_dict: ``.npz`` with numpy, anything else with ``torch.save`` (needs torch).

  The file is written beside ``path`` and renamed onto it, so a failed export leaves no partial file
  (and an earlier file of that name intact).
  """
  path = check_export_path(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    if path.endswith(".npz"):
      with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the name
        np.savez(f, **state_dict)
    else:
      import torch

      torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, tmp)
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(f"cannot export to {path!r}: {e}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
