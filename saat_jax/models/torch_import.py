"""Import PyTorch ``state_dict``s of the reference architectures into the Flax models.

Three PyTorch architectures are supported, each mapped onto the Flax model of the same name:

* ``resnet18``: the standard CIFAR ResNet-18 of the AutoAttack examples (``examples/resnet.py``,
  after kuangliu); its pretrained ``model_test.pt`` ships in the ``pyautoattack`` wheel.
* ``preact_resnet18``: PreAct ResNet-18 as in Rice et al. (2020) ``preactresnet.py`` (final ``bn``).
* ``wrn<depth>_<width>`` (e.g. ``wrn34_10``): Wide ResNet as in TRADES / Rice et al.
  ``wideresnet.py``, which is also RobustBench's format (``block1.layer.0.convShortcut`` etc.).

Layouts: conv weights (O, I, kh, kw) become HWIO kernels (kh, kw, I, O), linear weights (out, in)
become (in, out) kernels, BatchNorm ``weight``/``bias`` become ``scale``/``bias`` params and
``running_mean``/``running_var`` the ``mean``/``var`` batch stats. The imported model gives the
same logits as the PyTorch module in eval mode (``train=False``) up to float32 round-off.

Torch is optional: ``convert_state_dict`` works on any mapping of arrays (numpy arrays or torch
tensors) and never imports torch; only ``load_torch_checkpoint`` needs it, to read the file.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# Keys under which training scripts commonly store the state_dict inside a checkpoint dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes added by DataParallel / DistributedDataParallel (``module.``), by normalisation
# wrappers (``model.``) and by ``torch.compile`` (``_orig_mod.``); stripped when every key has one.
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")
_MAX_LISTED = 5
_SUPPORTED = ("resnet18", "preact_resnet18", "wrn<depth>_<width> (e.g. wrn34_10)")
# Exported (``saat_jax.export``) to the modules of ``saat_jax.models.torch_nets``: the above and the small CNN,
# which has no PyTorch original to import from.
_EXPORTABLE = _SUPPORTED + ("small_cnn",)


def model_family(model_name: str, action: str = "import") -> tuple[str, str]:
  """``(family, canonical name)`` of a model name; ``ValueError`` when it cannot be imported
  (``action='import'``) or exported (``'export'``), naming the models that can."""
  if action == "import":
    fail, supported = f"no PyTorch import for model {model_name!r}", _SUPPORTED
  else:
    fail, supported = f"cannot export model {model_name!r} to PyTorch", _EXPORTABLE
  if not isinstance(model_name, str):
    raise ValueError(f"{fail}: the model name must be a string")
  key = model_name.lower().replace("-", "_")
  if key in ("resnet18", "preact_resnet18"):
    return key, key
  if key == "small_cnn" and action == "export":
    return key, key
  m = re.fullmatch(r"(?:wrn|wide_resnet)_?(\d+)_(\d+)", key)
  if m:
    depth, width = int(m.group(1)), int(m.group(2))
    if depth < 10 or (depth - 4) % 6:
      raise ValueError(f"{fail}: a Wide ResNet's depth must be 6n+4 (e.g. 16, 28, 34), got {model_name!r}")
    if width < 1:
      raise ValueError(f"{fail}: a Wide ResNet's width must be positive, got {model_name!r}")
    return "wrn", f"wrn{depth}_{width}"
  if key == "small_cnn":
    raise ValueError(f"{fail}: the small CNN has no PyTorch original (it can be exported, see "
                     f"saat_jax.export); supported: {', '.join(supported)}")
  raise ValueError(f"{fail}; supported: {', '.join(supported)}")


def _to_numpy(value: Any, key: str) -> np.ndarray:
  """A numpy copy-free view of a torch tensor or array-like (floating tensors as float32)."""
  if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
    t = value.detach().cpu()
    if t.is_floating_point():
      t = t.float()  # bfloat16 / float16 have no (or a lossy) numpy path
    return t.numpy()
  try:
    return np.asarray(value)
  except Exception as e:  # pragma: no cover - exotic values
    raise ValueError(f"state_dict entry {key!r} is not an array "
                     f"(got {type(value).__name__})") from e


def _is_array_like(value: Any) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _unwrap(obj: Any) -> Mapping[str, Any]:
  """The state_dict inside a checkpoint: descends ``{'state_dict': ...}``-style wrappers."""
  for _ in range(4):
    if not isinstance(obj, Mapping):
      break
    if any(_is_array_like(v) for v in obj.values()):
      return obj
    inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      return obj
    obj = inner
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state_dict (a mapping of parameter names to tensors), got "
                     f"{type(obj).__name__}")
  return obj


def _strip_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
  sd = dict(sd)
  changed = True
  while changed and sd:
    changed = False
    for prefix in _STRIP_PREFIXES:
      if all(isinstance(k, str) and k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        changed = True
  return sd


def _ignored(key: str, family: str) -> bool:
  """Keys that carry nothing the forward pass uses."""
  if key.endswith("num_batches_tracked"):
    return True
  # TRADES' / RobustBench's WRN defines an extra ``sub_block1`` that forward never calls.
  return family == "wrn" and key.startswith("sub_block1.")


def _torch_module_path(family: str, names: tuple[str, ...]) -> list[str]:
  """The dotted torch module path of a Flax module path."""
  out: list[str] = []
  for name in names:
    m = re.fullmatch(r"(layer\d+)_(\d+)", name)
    if m:
      out += [m.group(1), m.group(2)]          # layer1_0 -> layer1.0
      continue
    m = re.fullmatch(r"(block\d+)_(\d+)", name)
    if m:
      out += [m.group(1), "layer", m.group(2)]  # block1_0 -> block1.layer.0
      continue
    if name == "shortcut":
      out.append("convShortcut" if family == "wrn" else "shortcut.0")
    elif name == "shortcut_conv":
      out.append("shortcut.0")
    elif name == "shortcut_bn":
      out.append("shortcut.1")
    else:
      out.append(name)
  return out


_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == "kernel" and len(flax_shape) == 4:   # HWIO -> OIHW
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if leaf == "kernel" and len(flax_shape) == 2:   # (in, out) -> (out, in)
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def _from_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  elif leaf == "kernel" and array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array, dtype=np.float32)


def _resnet_depth(counts: tuple[int, ...], bottleneck: bool) -> Optional[int]:
  table = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50 if bottleneck else 34, (3, 4, 23, 3): 101,
           (3, 8, 36, 3): 152}
  depth = table.get(counts)
  if depth is None or (bottleneck and depth == 18) or (not bottleneck and depth > 34):
    return None
  return depth


def _guess_architecture(state_dict: Mapping[str, Any]) -> Optional[str]:
  """A best guess of the architecture a (prefix-stripped) state_dict belongs to, or None."""
  keys = [k for k in state_dict if isinstance(k, str)]
  if any(k.startswith("block1.layer.") for k in keys):
    n = len({k.split(".")[2] for k in keys if k.startswith("block1.layer.")})
    w = state_dict.get("block1.layer.0.conv1.weight")
    width = int(w.shape[0]) // 16 if w is not None and len(getattr(w, "shape", ())) == 4 else None
    return f"wrn{6 * n + 4}_{width}" if width else f"Wide ResNet of depth {6 * n + 4}"
  blocks: dict[int, set] = {}
  for k in keys:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
  if not blocks:
    return None
  counts = tuple(len(blocks[i]) for i in sorted(blocks))
  bottleneck = any(".conv3." in k for k in keys)
  preact = "bn.weight" in state_dict or (
      "bn1.weight" not in state_dict and not any(re.search(r"\.shortcut\.1\.", k) for k in keys))
  prefix = "preact_resnet" if preact else "resnet"
  depth = _resnet_depth(counts, bottleneck)
  name = f"{prefix}{depth}" if depth else f"{prefix} with blocks {counts}"
  if preact and "bn.weight" not in state_dict and "linear.weight" in state_dict:
    name += " without the final BatchNorm 'bn' (kuangliu's variant, not Rice et al.'s)"
  return name


def torch_key_map(model_name: str, num_classes: int, *, image_shape=(32, 32, 3),
                  **model_kwargs) -> dict[str, tuple[tuple, tuple[int, ...]]]:
  """``{torch state_dict key: (Flax variable path, torch shape)}`` of an exportable model.

  The one correspondence between the two layouts, used to import (:func:`convert_state_dict`) and
  to export (:mod:`saat_jax.models.torch_export`). The model is ``create_model(model_name,
  num_classes, **model_kwargs)`` on ``image_shape`` (H, W, C) images: the input channels fix the
  first conv's shape, and the small CNN's ``fc1`` depends on H and W too.
  """
  from saat_jax.models import create_model

  family, canonical = model_family(model_name, "export")
  model = create_model(canonical, num_classes, **model_kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)),
                                             train=False))
  expected: dict[str, tuple[tuple, tuple[int, ...]]] = {}
  for path, leaf_shape in traverse_util.flatten_dict(dict(shapes)).items():
    collection, *modules, leaf = path
    torch_leaf = _LEAF_NAMES.get((collection, leaf))
    if torch_leaf is None:  # pragma: no cover - the models only have conv, BN and linear layers
      raise ValueError(f"cannot map Flax variable {'/'.join(path)} to a torch name")
    key = ".".join(_torch_module_path(family, tuple(modules)) + [torch_leaf])
    expected[key] = (path, _torch_shape(tuple(leaf_shape.shape), leaf))
  return expected


def final_layer_key(family: str) -> str:
  return {"wrn": "fc", "small_cnn": "fc2"}.get(family, "linear")


def _first(items: list[str]) -> str:
  shown = ", ".join(items[:_MAX_LISTED])
  return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str,
                       num_classes: Optional[int] = None) -> dict:
  """Convert a PyTorch ``state_dict`` into Flax variables ``{'params', 'batch_stats'}``.

  ``state_dict`` maps torch parameter names to torch tensors or numpy arrays; a checkpoint dict
  wrapping it (``{'state_dict': ...}``, ``{'model_state_dict': ...}``, ``{'model': ...}``) and
  ``module.`` (DataParallel) prefixes are accepted. ``num_batches_tracked`` entries and the unused
  ``sub_block1.*`` of TRADES / RobustBench Wide ResNets are skipped. ``num_classes`` defaults to the
  final layer's output size. The result is a tree of float32 numpy arrays with exactly the structure
  of ``init_variables(create_model(model_name, num_classes), key, (32, 32, 3))``.

  Raises ``ValueError`` for a model without a PyTorch reference, and for missing keys, unexpected
  keys or shape mismatches (naming the first few, and the architecture the checkpoint looks like).
  """
  family, canonical = model_family(model_name)
  sd = _strip_prefixes(_unwrap(state_dict))
  sd = {k: v for k, v in sd.items() if not _ignored(k, family)}
  final = final_layer_key(family)

  if num_classes is None:
    w = sd.get(f"{final}.weight")
    num_classes = int(w.shape[0]) if w is not None and len(getattr(w, "shape", ())) == 2 else 10

  # RobustBench's WideResNet(bias_last=False) has a bias-free classifier: a zero bias is the same.
  if family == "wrn" and f"{final}.weight" in sd and f"{final}.bias" not in sd:
    sd[f"{final}.bias"] = np.zeros((num_classes,), np.float32)

  expected = torch_key_map(canonical, num_classes)

  missing = [k for k in expected if k not in sd]
  unexpected = [str(k) for k in sd if k not in expected]
  mismatched = [f"{k} (checkpoint {tuple(getattr(sd[k], 'shape', ()))} vs model {shape})"
                for k, (_, shape) in expected.items()
                if k in sd and tuple(getattr(sd[k], "shape", ())) != shape]
  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
      parts.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched)}")
    msg = f"state_dict mismatch for {canonical} with {num_classes} classes: " + "; ".join(parts)
    guess = _guess_architecture(sd)
    if guess is not None and guess != canonical:
      msg += f". This state_dict looks like a {guess}, not a {canonical}"
    raise ValueError(msg)

  out: dict = {}
  for key, (path, _) in expected.items():
    out[path] = _from_torch(_to_numpy(sd[key], key), path[-1])
  return traverse_util.unflatten_dict(out)


def read_state_dict(path: str) -> dict[str, Any]:
  """The state_dict stored at ``path``, checkpoint wrappers and ``module.``-style prefixes removed.

  A ``.npz`` of the state_dict's arrays (``np.savez(f, **{k: v.numpy() ...})``) reads without
  torch, e.g. on an accelerator machine that has none; any other file is read with
  ``torch.load(path, map_location='cpu', weights_only=True)`` (no arbitrary pickles).

  Raises ``FileNotFoundError`` for a missing file, ``ImportError`` when a PyTorch file is given and
  torch is not installed, and ``ValueError`` for a file that is not a state_dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no PyTorch checkpoint at {path!r}")
  if path.endswith(".npz"):
    try:
      with np.load(path) as f:
        return _strip_prefixes({k: f[k] for k in f.files})
    except Exception as e:
      raise ValueError(f"could not read {path!r} as a .npz of state_dict arrays "
                       f"({type(e).__name__}: {e})") from e
  try:
    import torch
  except ImportError as e:
    raise ImportError("loading a PyTorch checkpoint needs torch, which saat_jax does not require "
                      "for training: pip install torch==2.13.0 (a CPU build is enough), or "
                      "pip install saat_jax[torch]; or save its arrays as a .npz") from e
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"could not read {path!r} as a PyTorch checkpoint with weights_only=True "
                     f"({type(e).__name__}: {e}). If it pickles whole objects and you trust it, "
                     "load it yourself and pass its state_dict to convert_state_dict.") from e
  return _strip_prefixes(_unwrap(ckpt))


def model_from_state_dict(state_dict: Mapping[str, Any], model_name: str, *,
                          num_classes: Optional[int] = None,
                          normalization: str = "none") -> tuple[Any, dict]:
  """``(flax_model, variables)`` of a PyTorch ``state_dict`` (see :func:`convert_state_dict`).

  The model is ``create_model(model_name, num_classes, normalization=normalization)``, with
  ``num_classes`` taken from the state_dict's final layer when None.
  """
  from saat_jax.models import create_model

  variables = convert_state_dict(state_dict, model_name, num_classes)
  family, canonical = model_family(model_name)
  n_classes = variables["params"][final_layer_key(family)]["kernel"].shape[1]
  return create_model(canonical, int(n_classes), normalization=normalization), variables


def load_torch_checkpoint(path: str, model_name: str, *, num_classes: Optional[int] = None,
                          normalization: str = "none") -> tuple[Any, dict]:
  """Read a PyTorch checkpoint and return ``(flax_model, variables)``.

  The file is read by :func:`read_state_dict` (``torch.load(..., weights_only=True)``, or a
  ``.npz`` of the state_dict's arrays without torch) and converted by
  :func:`model_from_state_dict`. Apply the model with
  ``model.apply(variables, images_nhwc, train=False)`` on images in [0, 1].

  Raises ``FileNotFoundError`` for a missing file, ``ImportError`` when torch is needed and not
  installed, and ``ValueError`` for a file that is not a matching state_dict.
  """
  model_family(model_name)  # reject unknown names before touching the file
  state_dict = read_state_dict(path)
  try:
    return model_from_state_dict(state_dict, model_name, num_classes=num_classes,
                                 normalization=normalization)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from e
