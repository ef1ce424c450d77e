"""Mixed precision (config.model.dtype='bfloat16'): what stays float32, what runs in bfloat16, the
exactness of the attacks' budgets, the error for an unknown dtype, and bf16 vs float32 accuracy."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax import train
from saat_jax.attack import pgd
from saat_jax.losses import ce_loss_fn
from saat_jax.methods import AttackNet, get_method
from saat_jax.models import create_model, init_variables
from saat_jax.run_state import model_from_spec, model_spec, run_dtype

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import digits_config

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def saat_up(dtype, **overrides):
  """configs/digits.py:saat_up (PGD-10 warm start, then SA-PGD up to 56/255) in ``dtype``."""
  c = digits_config("saat_up")
  c.progress = False
  c.model.dtype = dtype
  c.update_from_flattened_dict(overrides)
  return c


def dtypes(tree):
  return {jnp.dtype(a.dtype) for a in jax.tree_util.tree_leaves(tree)}


def float_dtypes(tree):  # the optimizer state also holds an int32 step count
  return dtypes([a for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)])


def equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (loops, conds, custom derivatives) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr in .jaxpr
        if hasattr(inner, "eqns"):
          yield from equations(inner)


def operand_dtypes(closed_jaxpr, primitive):
  return [tuple(jnp.dtype(v.aval.dtype) for v in e.invars)
          for e in equations(closed_jaxpr.jaxpr) if e.primitive.name == primitive]


def one_step(config, batch=32, width=8, abstract=False):
  """(state before, step, its arguments) of ``train.make_train_step`` for ``config``, with the model
  built as training builds it (``model_from_spec(spec, run_dtype(config))``); ``abstract``: the
  state as shapes and dtypes only, enough to trace the step."""
  config.model.kwargs = {"width": width}
  model = model_from_spec(model_spec(config, 10), run_dtype(config))
  tx, _ = train.make_optimizer(config, 10)
  init = lambda: train.initial_state(model, tx, jax.random.key(0), (8, 8, 1))
  state = jax.eval_shape(init) if abstract else init()
  k1, k2 = jax.random.split(jax.random.key(1))
  images = jax.random.randint(k1, (batch, 8, 8, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(k2, (batch,), 0, 10)
  step = train.make_train_step(config, model.apply, tx, 10)
  return state, step, (images, labels, jax.random.key(2))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_computes_in_the_config_dtype(dtype):
  """Traced, not run: every convolution and matmul of a SAAT step (the attack's passes, the outer
  loss, their gradients) takes operands of config.model.dtype, through the model train.py builds."""
  state, step, args = one_step(saat_up(dtype), abstract=True)
  jaxpr = jax.make_jaxpr(step)(state, *args)
  convs, dots = operand_dtypes(jaxpr, "conv_general_dilated"), operand_dtypes(jaxpr, "dot_general")
  assert len(convs) >= 6 and len(dots) >= 4
  assert {d for ops in convs + dots for d in ops} == {jnp.dtype(dtype)}


@pytest.mark.slow
def test_bf16_step_keeps_parameters_optimizer_state_statistics_and_loss_float32():
  state, step, args = one_step(saat_up("bfloat16"))
  new, m = jax.jit(step)(state, *args)
  # Parameters, optimizer state (momentum), BatchNorm running statistics and the loss stay float32,
  # and they changed: the step did update them.
  for before, after in ((state.params, new.params), (state.batch_stats, new.batch_stats),
                        (state.opt_state, new.opt_state)):
    assert float_dtypes(after) == {F32} and float_dtypes(before) == {F32}
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(state.batch_stats),
                                                      jax.tree_util.tree_leaves(new.batch_stats)))
  assert np.any(np.asarray(jax.tree_util.tree_leaves(new.opt_state)[0]) != 0)
  assert m["loss"].dtype == F32 and np.isfinite(m["loss"]) and m["eps"].dtype == F32


@pytest.mark.parametrize("name,shape", [("small_cnn", (8, 8, 1)), ("preact_resnet18", (32, 32, 3)),
                                        ("resnet18", (32, 32, 3)), ("wrn16_2", (32, 32, 3))])
def test_every_layer_outputs_bf16_and_the_logits_are_float32(name, shape):
  """Shapes only (``eval_shape``): no network is run."""
  model = create_model(name, 10, normalization="none" if shape[-1] == 1 else "cifar10", dtype="bfloat16")
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert dtypes(variables["params"]) == {F32} and dtypes(variables["batch_stats"]) == {F32}
  logits, upd = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, capture_intermediates=True,
                                                        mutable=["batch_stats", "intermediates"]), variables, x)
  assert logits.dtype == F32 and dtypes(upd["batch_stats"]) == {F32}
  outputs = {path: leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(upd["intermediates"])}
  convs = [p for p in outputs if any("conv" in str(k) or "shortcut" in str(k) for k in p)]
  assert len(convs) >= 2
  # Every module's output is bf16 except the whole model's (the float32 logits).
  top = [p for p in outputs if len(p) == 2]  # ('__call__', 0) of the root module
  assert top and all(outputs[p] == F32 for p in top)
  assert {outputs[p] for p in outputs if p not in top} == {BF16}


@pytest.mark.slow
def test_bf16_attack_input_and_budget_are_float32_and_exact():
  """One signed step of ``alpha = eps = k/255`` from ``x`` (k = 1 for half the batch, 8 for the
  other half) moves each pixel by exactly ``k/255``, as exactly as float32 rounds ``x + eps``; a bf16
  ``x'`` or ``x + delta`` would be off by up to 2^-9 (half of 1/255). ``x`` is random, so it is not
  bf16-representable."""
  model = create_model("small_cnn", 10, width=8, dtype="bfloat16")
  variables = init_variables(model, jax.random.key(0), (8, 8, 1))
  x = jax.random.uniform(jax.random.key(1), (32, 8, 8, 1), jnp.float32, 0.1, 0.9)
  y = jnp.arange(32) % 10
  eps = jnp.where(jnp.arange(32) < 16, 1 / 255, 8 / 255).astype(jnp.float32)
  net = AttackNet(model.apply, variables, "train")
  x_adv = jax.jit(lambda x, y, eps: pgd(ce_loss_fn(net.logits), x, y, eps=eps, alpha=eps, steps=1))(x, y, eps)
  assert x_adv.dtype == F32
  moved = np.abs(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64))
  assert (moved > 0).mean() > 0.9
  budget = np.broadcast_to(np.asarray(eps, np.float64)[:, None, None, None], moved.shape)
  np.testing.assert_allclose(moved[moved > 0], budget[moved > 0], rtol=0, atol=2.0 ** -25)


@pytest.mark.slow
def test_bf16_saat_examples_are_float32_and_inside_their_budgets():
  """SAAT_up's adversary (PGD warm start at 32/255, SA-PGD by 8/255 to 56/255) on a bf16 network:
  ``x'`` is float32 and ``x - eps_i <= x' <= x + eps_i`` holds exactly in float32 arithmetic."""
  config = saat_up("bfloat16")
  model = create_model("small_cnn", 10, width=8, dtype="bfloat16")
  variables = init_variables(model, jax.random.key(0), (8, 8, 1))
  x = jax.random.uniform(jax.random.key(1), (64, 8, 8, 1), jnp.float32)
  y = jnp.arange(64) % 10
  adv = jax.jit(lambda x, y, key: get_method(config).adversary(AttackNet(model.apply, variables), x, y, key))(
      x, y, jax.random.key(2))
  assert adv.x_adv.dtype == F32 and adv.eps.dtype == F32
  x, x_adv = np.asarray(x), np.asarray(adv.x_adv)
  eps = np.asarray(adv.eps)[:, None, None, None]
  assert set(np.round(np.unique(adv.eps) * 255, 3)) <= {32.0, 40.0, 48.0, 56.0}
  assert np.all(x_adv <= x + eps) and np.all(x_adv >= x - eps)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  assert np.abs(x_adv - x).max() > 31 / 255  # the attack did move


def test_input_is_normalised_in_float32_before_the_cast():
  """CIFAR normalisation of a random float32 batch, then bf16: not the normalisation of a bf16 input
  (which would first round each pixel, and so x + 1/255, to 8 bits)."""
  from saat_jax.models.layers import CIFAR10_MEAN, CIFAR10_STD, model_input
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3), jnp.float32)
  mean, std = np.asarray(CIFAR10_MEAN, np.float32), np.asarray(CIFAR10_STD, np.float32)
  got = model_input(x, CIFAR10_MEAN, CIFAR10_STD, jnp.bfloat16)
  assert got.dtype == BF16
  np.testing.assert_array_equal(np.asarray(got), ((np.asarray(x) - mean) / std).astype(jnp.bfloat16))
  rounded_first = (np.asarray(x.astype(jnp.bfloat16), np.float32) - mean) / std
  assert np.any(np.asarray(got) != rounded_first.astype(jnp.bfloat16))


@pytest.mark.parametrize("bad", ["float16", "bf16", "fp32", "int8"])
def test_unknown_dtype_is_refused_naming_the_choices(tmp_path, bad):
  with pytest.raises(ValueError, match=r"model\.dtype='.*' is unknown; use one of 'float32', 'bfloat16'"):
    train.train_and_evaluate(saat_up(bad), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  with pytest.raises(ValueError, match="use one of 'float32', 'bfloat16'"):
    create_model("small_cnn", 10, dtype=bad)


def test_dtype_given_as_a_dtype_object():
  assert jnp.dtype(create_model("small_cnn", 10, dtype=jnp.bfloat16).dtype) == BF16
  assert jnp.dtype(create_model("small_cnn", 10).dtype) == F32


@pytest.mark.slow
def test_digits_saat_in_bf16_against_float32(tmp_path):
  """Two-epoch SAAT_up digits runs in float32 and bf16 from the same initial weights and batches.

  What CI can check in seconds (the full 15-epoch comparison, 3 seeds, is in benchmarks/README.md
  "Mixed precision": there bf16 and float32 differ by 0.2 points natural and 0.1 PGD-20 on average,
  within the seed-to-seed spread; two independent short runs differ by several points whatever the
  dtype, since 1 point of the 400 test digits is 4 images and the trajectories diverge):
  * the first epoch's mean training loss and SA-PGD budget agree closely, and the runs are not the
    same (bf16 was in effect);
  * the same weights evaluated in float32 and in bf16 give natural and PGD-20 accuracy within
    1 point, for both runs;
  * evaluation uses the run's dtype by default; resuming with another dtype is a reported config
    change, and with allow_config_change=True it resumes.
  """
  from saat_jax.evaluate import evaluate_run
  from saat_jax.run_state import restore_for_eval
  from saat_jax.workdir import ConfigChangeError

  # evaluated once, after epoch 2 (the resumed run: after epoch 3), which is all the test reads
  kw = {"num_epochs": 2, "optim.lr_milestones": (1,), "eval.train_subset": 0, "eval.every": 2}
  runs = {dt: train.train_and_evaluate(saat_up(dt, **kw), str(tmp_path / dt)) for dt in ("float32", "bfloat16")}
  f32, bf16 = runs["float32"][0], runs["bfloat16"][0]
  assert f32["train_loss"] != bf16["train_loss"]
  assert bf16["train_loss"] == pytest.approx(f32["train_loss"], rel=0.02)
  assert abs(bf16["attack_eps_mean"] - f32["attack_eps_mean"]) < 0.5  # in /255

  for dt, other in (("float32", "bfloat16"), ("bfloat16", "float32")):
    assert jnp.dtype(restore_for_eval(str(tmp_path / dt))[0].dtype) == jnp.dtype(dt)
    assert jnp.dtype(restore_for_eval(str(tmp_path / dt), dtype=other)[0].dtype) == jnp.dtype(other)
    # The run's last-epoch evaluation (in its own dtype) against the same weights and PGD starts
    # evaluated in the other dtype.
    own = runs[dt][-1]
    acc = evaluate_run(str(tmp_path / dt), kinds=("last",), attacks=("natural", "pgd20"), seed=None,
                       dtype=other)["checkpoints"]["last"]
    assert abs(acc["natural"] - own["test_natural_accuracy"]) <= 0.01
    assert abs(acc["pgd20"] - own["test_pgd_accuracy"]) <= 0.01

  with pytest.raises(ConfigChangeError, match='model.dtype: "float32" -> "bfloat16"'):
    train.train_and_evaluate(saat_up("bfloat16", **{**kw, "num_epochs": 3}), str(tmp_path / "float32"))
  resumed = train.train_and_evaluate(saat_up("bfloat16", **{**kw, "num_epochs": 3, "allow_config_change": True}),
                                     str(tmp_path / "float32"))
  assert [r["epoch"] for r in resumed] == [0, 1, 2]
  assert "model.dtype" in (tmp_path / "float32" / "configs.jsonl").read_text()
