"""What identifies a run (its model spec and random keys) and its weights read back for evaluation.

Evaluation restores only the weights -- ``params`` and ``batch_stats``, or their EMA -- of a
checkpoint written by :func:`saat_jax.train.train_and_evaluate`, through the one reader of
:mod:`saat_jax.checkpointing` (newest readable checkpoint, arrays verified against their
checksums). The restore target is built from the checkpoint's own array metadata, so it needs
neither the optimizer nor the image shape, and the optimizer state is not read. The model is then
checked against the weights (abstractly, no initialisation) at the image shape recorded in
``meta`` (a guess from the dataset for checkpoints written before ``image_shape`` was recorded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from saat_jax import checkpointing
from saat_jax.models import create_model

WEIGHTS = ("raw", "ema")


def model_spec(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """What identifies the network of a checkpoint (compared on resume and evaluation)."""
  return {"name": config.model.name, "num_classes": int(num_classes),
          "normalization": config.model.normalization,
          "kwargs": dict(config.model.get("kwargs", {}) or {})}


def run_dtype(config) -> str:
  """The compute dtype a run trained in: ``config.model.dtype`` (a config or its JSON), float32 for
  runs from before the key existed. Not part of :func:`model_spec`: the weights are float32 either
  way, so a change of dtype on resume is a config change (:func:`saat_jax.workdir.config_changes`)."""
  return (config.get("model") or {}).get("dtype", "float32")


def model_from_spec(spec: dict, dtype="float32"):
  """The network of ``spec``, computing in ``dtype`` (see :func:`run_dtype`)."""
  return create_model(spec["name"], spec["num_classes"], normalization=spec["normalization"], dtype=dtype,
                      **spec.get("kwargs", {}))


def run_keys(seed: int):
  """``(init_key, train_key, eval_key)`` of a run; evaluation reuses ``eval_key`` for its PGD starts."""
  return tuple(jax.random.split(jax.random.key(seed), 3))


def image_shape(meta: dict) -> tuple:
  """(H, W, C) of the run's images: recorded in ``meta``, else guessed from the dataset's name."""
  if meta.get("image_shape"):
    return tuple(meta["image_shape"])
  return (8, 8, 1) if meta["config"]["data"]["name"] == "digits" else (32, 32, 3)


def variables_of(params, batch_stats) -> dict:
  """Flax variables ``{'params', 'batch_stats'?}``: a model without BatchNorm has no batch_stats."""
  v = {"params": params}
  if jax.tree_util.tree_leaves(batch_stats):
    v["batch_stats"] = batch_stats
  return v


def _variables(tree: dict) -> dict:
  return variables_of(tree["params"], tree.get("batch_stats"))


def restore_weights(workdir: str, kind: str = "last", weights: str = "raw", epoch=None) -> tuple[dict, dict]:
  """``(variables, meta)`` of a checkpoint: ``{'params', 'batch_stats'?}`` (``weights='raw'``) or
  their EMA (``'ema'``), as host arrays, without reading the optimizer state. The checkpoint is the
  newest readable one of ``kind``, its arrays verified, as training's restore
  (:func:`saat_jax.checkpointing.restore_part`)."""
  if weights not in WEIGHTS:
    raise ValueError(f"weights={weights!r}; use one of {WEIGHTS}")
  names = ("ema",) if weights == "ema" else ("params", "batch_stats")
  part, meta = checkpointing.restore_part(workdir, kind, names, epoch)
  if weights == "ema" and "ema" not in part:
    raise ValueError(f"{workdir} was trained without an EMA of the weights (ema.decay = 0); "
                     "evaluate its raw weights (--weights raw)")
  return _variables(part["ema"] if weights == "ema" else part), meta


def check_weights_fit(model, variables: dict, shape, where: str) -> None:
  """Refuse weights whose structure or shapes are not those of ``model`` on ``shape`` images."""
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
  shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), _variables(dict(t)))
  if shapes(expected) != shapes(variables):
    raise checkpointing.CheckpointError(f"the checkpoint in {where} does not fit its model {type(model).__name__}")


def restore_for_eval(workdir: str, kind: str = "last", weights: str = "raw", dtype=None):
  """``(model, variables, meta, config)`` of a run's ``kind`` checkpoint, ready for the evaluators.

  The model computes in ``dtype``, by default the run's own (:func:`run_dtype`)."""
  variables, meta = restore_weights(workdir, kind, weights)
  model = model_from_spec(meta["model"], run_dtype(meta["config"]) if dtype is None else dtype)
  check_weights_fit(model, variables, image_shape(meta), checkpointing.checkpoint_dir(workdir, kind))
  return model, jax.device_put(variables), meta, ml_collections.ConfigDict(meta["config"])
