"""The training loop's small pieces, each against a hand computation (``saat_jax.train``).

The run-level tests (resume bit for bit, 1 vs 4 devices, the digits runs) go through them too, but
a wrong epoch record or a shared EMA buffer would only show there as a changed number with no
pointer to the cause; here each fails by name, in a second. Mutation testing of ``train.py``
(docs/mutation.md) found them untested.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax import train, workdir


def step_metrics(loss, acc, eps, steps, sat, unpert):
  f32 = np.float32
  return {"loss": f32(loss), "accuracy": f32(acc), "eps": np.asarray(eps, f32), "steps": np.asarray(steps, np.int32),
          "satisfied": np.asarray(sat, bool), "unperturbed": np.asarray(unpert, bool)}


def test_epoch_summary_is_the_hand_computed_record():
  # Float32 losses whose float32 mean (0: 1e8 + 1 rounds to 1e8) differs from the float64 one (1/3).
  # Accuracies whose float32 mean rounds differently from their float64 one.
  accs = np.array([0.1, 0.7, 0.3], np.float32)
  ms = [step_metrics(1e8, accs[0], [2 / 255, 4 / 255], [1, 3], [1, 0], [0, 0]),
        step_metrics(1.0, accs[1], [6 / 255, 8 / 255], [5, 7], [1, 1], [1, 0]),
        step_metrics(-1e8, accs[2], [10 / 255, 12 / 255], [9, 11], [0, 0], [0, 0])]
  got = train.epoch_summary(ms)
  acc64 = float(np.mean(accs.astype(np.float64)))
  assert acc64 != float(np.mean(accs))  # (the float32 mean)
  assert got["train_accuracy"] == acc64 and got["train_loss"] == 1 / 3
  eps = np.array([2, 4, 6, 8, 10, 12], np.float64) / 255
  want = {"train_loss": 1 / 3, "train_accuracy": acc64, "attack_eps_mean": 7.0, "attack_steps_mean": 6.0,
          "attack_frac_satisfied": 0.5, "attack_frac_unperturbed": 1 / 6}
  for q in train.EPS_QUANTILES:
    want[f"attack_eps_q{int(q * 100)}"] = float(np.quantile(eps, q)) * 255
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), k
  assert got["attack_eps_q50"] == pytest.approx(7.0)  # the median budget, in 1/255


def test_stack_unstack_per_step_and_dispatches():
  ms = [{"loss": np.float32(i), "eps": np.full(3, i, np.float32)} for i in range(4)]
  stacked = workdir.stack_steps(ms)
  assert stacked["loss"].shape == (4,) and stacked["eps"].shape == (4, 3)
  back = workdir.unstack_steps(stacked)
  assert len(back) == 4
  for a, b in zip(ms, back):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert workdir.stack_steps([]) == {} and workdir.unstack_steps({}) == []
  one = workdir.stack_steps(ms[:1])  # a dispatch of one step
  assert one["loss"].shape == (1,) and one["eps"].shape == (1, 3)

  # one step's scalar metrics, then a dispatch of 3 stacked steps: global steps 5, then 6, 7, 8
  per = train.per_step_metrics([5, 6], [ms[0], workdir.stack_steps(ms[1:])])
  assert [gs for gs, _ in per] == [5, 6, 7, 8]
  assert [float(m["loss"]) for _, m in per] == [0.0, 1.0, 2.0, 3.0]
  np.testing.assert_array_equal(per[3][1]["eps"], np.full(3, 3.0))

  assert train.dispatch_runs(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
  assert train.dispatch_runs(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
  assert train.dispatch_runs(list(range(2)), 1) == [[0], [1]]


def test_ema_starts_as_a_copy_in_its_own_buffers():
  """The step donates its state: an EMA aliasing the parameters' buffers would be invalidated (or
  updated in place) with them."""
  import optax

  from saat_jax.models import create_model

  state = train.initial_state(create_model("small_cnn", 10, width=4), optax.sgd(0.1), jax.random.key(0), (8, 8, 1),
                              ema=True)
  for a, b in zip(jax.tree.leaves(state.variables), jax.tree.leaves(state.ema_variables)):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()


# ---- validate_config: every rule at its boundary -------------------------------------------------


def digits(**overrides):
  from saat_jax.config_base import saat_digits_config

  c = saat_digits_config()
  c.update_from_flattened_dict(overrides)
  return c


E = 14 / 255

REFUSED = [
    ({"saat.start": "bogus"}, "saat.start='bogus' is unknown; use 'zero' (Algorithm 1) or 'pgd' (released code)"),
    ({"saat.start": "pgd", "saat.eps_max": E, "saat.start_eps": E + 1e-6},
     f"saat.start_eps={E + 1e-6} exceeds saat.eps_max={E}"),
    ({"saat.start": "pgd", "saat.start_eps": -1.0}, "saat.eps_init must be finite and >= 0, got -1.0"),
    ({"method": "sa_trades", "saat.tau": 0.0}, "saat.tau (the budget step) must be > 0"),
    ({"method": "trades", "trades.beta": -0.5},
     "trades.beta must be >= 0, got -0.5 (TRADES uses 6; 0 is natural training)"),
    ({"method": "sa_trades", "trades.beta": -0.5}, "trades.beta must be >= 0"),
    ({"method": "trades", "trades.eps": -0.1}, "trades: need eps >= 0, alpha > 0, steps >= 0, got eps=-0.1"),
    ({"method": "trades", "trades.alpha": 0.0}, "trades: need eps >= 0, alpha > 0, steps >= 0"),
    ({"method": "trades", "trades.steps": -1}, "steps=-1 (TRADES: 0.031, 0.007, 10)"),
    ({"method": "sa_trades", "attack_bn": "train_update"}, "TRADES attacks with BatchNorm in eval mode"),
    ({"method": "sa_trades", "sa_trades.stop_loss": "dlr"}, "sa_trades.stop_loss='dlr' is unknown"),
    ({"awp.gamma": float("inf")}, "awp.gamma must be finite and >= 0, got inf"),
    ({"awp.gamma": -0.01}, "awp.gamma must be finite and >= 0, got -0.01"),
    ({"awp.proxy_lr": 0.0}, "awp.proxy_lr must be > 0, got 0.0"),
    ({"awp.warmup": -1}, "awp.warmup must be >= 0 epochs, got -1"),
    ({"ema.decay": 1.0}, "ema.decay must be in [0, 1), got 1.0"),
    ({"ema.decay": -0.01}, "ema.decay must be in [0, 1), got -0.01"),
    ({"eval.best_weights": "avg"}, "eval.best_weights='avg'; use 'raw' or 'ema'"),
    ({"eval.best_weights": "ema"}, "eval.best_weights='ema' needs an EMA: set ema.decay"),
    ({"model.dtype": "float16"}, "model.dtype='float16' is unknown"),
    ({"data.pad_mode": "edge"}, "data.pad_mode='edge' is unknown"),
    ({"method": "at", "at.eps": -0.1}, "at.eps must be >= 0, got -0.1"),
    ({"method": "at", "at.alpha": 0.0}, "at.alpha must be > 0, got 0.0"),
    ({"method": "at", "at.steps": 0}, "at.steps must be >= 1, got 0"),
    ({"attack_bn": "frozen"}, "attack_bn='frozen'; use 'train' (batch statistics), 'train_update'"),
    ({"num_epochs": 0}, "num_epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"eval.batch_size": 0}, "eval.batch_size must be >= 1, got 0"),
    ({"steps_per_dispatch": 0}, "steps_per_dispatch must be an integer >= 1 (steps per jitted dispatch), got 0"),
    ({"optim.lr": float("inf")}, "optim.lr must be finite and > 0, got inf"),
    ({"optim.lr": 0.0}, "optim.lr must be finite and > 0, got 0.0"),
    ({"optim.momentum": 1.0}, "optim.momentum must be in [0, 1), got 1.0"),
    ({"optim.momentum": -0.1}, "optim.momentum must be in [0, 1), got -0.1"),
    ({"optim.weight_decay": -1e-4}, "optim.weight_decay must be >= 0, got -0.0001"),
    ({"optim.lr_milestones": (13, 10)}, "optim.lr_milestones must be increasing epochs >= 0, got (13, 10)"),
    ({"optim.lr_milestones": (-1, 10)}, "optim.lr_milestones must be increasing epochs >= 0, got (-1, 10)"),
    ({"eval.eps": -0.1}, "eval.eps must be >= 0, got -0.1"),
    ({"eval.select_best_on": "train"}, "eval.select_best_on='train'; use 'test' or 'val'"),
    ({"eval.select_best_on": "val", "data.val_size": 0}, "eval.select_best_on='val' needs data.val_size > 0"),
    ({"eval.every": 0}, "eval.every must be an integer >= 1 (evaluate every N epochs and at the last), got 0"),
]

ACCEPTED = [
    {},
    {"saat.start": "pgd", "saat.eps_max": E, "saat.start_eps": E},  # the released code's warm start
    {"saat.start": "zero", "saat.eps_max": E, "saat.start_eps": 1.0},  # ignored without a warm start
    {"saat.start": "zero", "saat.start_eps": -1.0},
    {"method": "trades", "trades.beta": 0.0, "trades.eps": 0.0, "trades.steps": 0},
    {"method": "sa_trades", "trades.beta": 0.0},
    {"method": "sa_trades", "sa_trades.stop_loss": "kl"},
    {"method": "at", "at.eps": 0.0, "at.steps": 1, "attack_bn": "train_update"},
    {"method": "saat", "attack_bn": "train_update"},
    {"method": "natural", "saat.tau": 0.0, "trades.beta": -1.0},  # other methods' settings are not read
    {"method": "at", "saat.start": "bogus", "sa_trades.stop_loss": "dlr"},
    {"awp.gamma": 0.0, "awp.warmup": 0},
    {"ema.decay": 0.0, "eval.best_weights": "raw"},
    {"ema.decay": 0.999, "eval.best_weights": "ema"},
    {"optim.momentum": 0.0, "optim.weight_decay": 0.0, "optim.lr_milestones": (0, 10, 10)},
    {"eval.eps": 0.0, "eval.every": 1, "num_epochs": 1},
    {"eval.select_best_on": "val", "data.val_size": 1},
    {"model.dtype": "bfloat16", "data.pad_mode": "zero", "attack_bn": "eval"},
    "smallest batches",  # batch_size = eval.batch_size = the device count (built in the test)
    "no steps_per_dispatch and no eval.every",  # configs written before these existed: 1 each
]


@pytest.mark.parametrize("overrides,message", REFUSED)
def test_validate_config_refuses_each_impossible_value_with_its_message(overrides, message):
  with pytest.raises(ValueError) as e:
    train.validate_config(digits(**overrides))
  text = str(e.value)
  assert text.startswith("invalid config:\n  - ")
  assert message in text, text
  assert len(text.splitlines()) == 2, text  # that problem alone


@pytest.mark.parametrize("overrides", ACCEPTED)
def test_validate_config_accepts_the_boundary_values(overrides):
  if overrides == "smallest batches":
    n = jax.device_count()
    c = digits(batch_size=n, **{"eval.batch_size": n})
  elif isinstance(overrides, str):
    c = digits()
    with c.unlocked():
      del c["steps_per_dispatch"]
      del c.eval["every"]
  else:
    c = digits(**overrides)
  train.validate_config(c)


def test_validate_config_batch_sizes_the_devices_cannot_split(monkeypatch):
  monkeypatch.setattr(train.jax, "device_count", lambda: 4)
  with pytest.raises(ValueError) as e:
    train.validate_config(digits(batch_size=30, **{"eval.batch_size": 1}))
  lines = str(e.value).splitlines()[1:]
  assert lines == ["  - batch_size=30 is not divisible by the 4 devices",
                   "  - eval.batch_size=1 is not divisible by the 4 devices",
                   "  - batch_size=30: use 28 or 32 (the nearest multiples of the 4 devices)",
                   "  - eval.batch_size=1: use 4 (the smallest multiple of the 4 devices)"]


def test_validate_config_names_every_problem_at_once_and_types_are_checked():
  with pytest.raises(ValueError) as e:
    train.validate_config(digits(**{"num_epochs": 0, "optim.lr": -1.0, "method": "mart"}))
  lines = str(e.value).splitlines()[1:]
  assert len(lines) == 3
  assert any("method='mart' is unknown; use one of" in line for line in lines)
  for where, key, bad, message in [(None, "steps_per_dispatch", True, "steps_per_dispatch must be an integer >= 1"),
                                   (None, "steps_per_dispatch", 1.5, "steps_per_dispatch must be an integer >= 1"),
                                   (None, "data_on_device", 1, "data_on_device must be True or False"),
                                   ("eval", "every", True, "eval.every must be an integer >= 1")]:
    c = digits()
    d = c if where is None else c[where]
    with c.unlocked():  # a ConfigDict field keeps its type: replace the field to give it another one
      del d[key]
      d[key] = bad
    with pytest.raises(ValueError, match=re.escape(message) + f".*got {bad!r}"):
      train.validate_config(c)


# ---- the state and the dispatch ------------------------------------------------------------------


def test_initial_state_counts_steps_in_int32_and_has_an_ema_only_when_asked():
  import optax

  from saat_jax.models import create_model

  model = create_model("small_cnn", num_classes=3)
  tx = optax.sgd(0.1)
  st = train.initial_state(model, tx, jax.random.key(0), (8, 8, 1))
  assert st.step.dtype == jnp.int32 and int(st.step) == 0 and st.step.shape == ()
  assert st.ema is None
  with_ema = train.initial_state(model, tx, jax.random.key(0), (8, 8, 1), ema=True)
  for a, b in zip(jax.tree.leaves(with_ema.ema["params"]), jax.tree.leaves(with_ema.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dispatch_runs_each_of_its_steps_on_its_rows_with_its_key(k):
  """``make_dispatch`` with a stand-in training step that adds up its batch: every one of the k
  steps (also with batches of one example, where k and the batch size could be confused) runs on
  the rows ``idx[j]`` with the key ``fold_in(train_key, steps[j])``, metrics stacked in order."""
  from saat_jax import parallel

  mesh = parallel.make_mesh()
  batch = jax.device_count()  # one example per device: the smallest batch
  images = np.arange(40, dtype=np.float32).reshape(20, 2)
  labels = np.arange(100, 120, dtype=np.int32)

  def step(st, x, y, key):
    return st + jnp.sum(x), {"loss": jnp.sum(y).astype(jnp.float32), "key": jax.random.key_data(key)}

  train_key = jax.random.key(5)
  repl = parallel.replicated(mesh)
  dispatch = jax.jit(train.make_dispatch(step, mesh, train_key), out_shardings=(repl, repl))
  rng = np.random.default_rng(k)
  idx = rng.integers(0, 20, size=(k, batch)).astype(np.int32)
  steps = np.arange(7, 7 + k, dtype=np.int32)
  st, m = dispatch(jnp.float32(0), jax.device_put(images, repl), jax.device_put(labels, repl), idx, steps)
  assert float(st) == float(images[idx.reshape(-1)].sum())
  np.testing.assert_array_equal(np.asarray(m["loss"]), labels[idx].sum(axis=1).astype(np.float32))
  want_keys = np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(train_key, int(s)))) for s in steps])
  np.testing.assert_array_equal(np.asarray(m["key"]), want_keys)
