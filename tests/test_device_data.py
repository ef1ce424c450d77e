"""The input path off the critical path: the training set on the devices (each batch gathered there)
and several steps per jitted dispatch (lax.scan) give the parameters and metrics of the host loop,
bit for bit; the remainder of an epoch that k does not divide runs as one shorter dispatch."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from saat_jax import run_state, train

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.testing.tiny import STEPS_INSIDE, tiny_config

# 5 steps an epoch, augmentation on (crops and flips drawn inside the step), SA-PGD's while loop
TINY = {**STEPS_INSIDE, "num_epochs": 2, "check_every": 3}
from saat_jax.health import MACHINE_DEPENDENT_KEYS as MACHINE_DEPENDENT  # noqa: E402


def run(tmp_path, name, **over):
  c = tiny_config("saat_up", {**TINY, **over})
  train.train_and_evaluate(c, str(tmp_path / name))
  _, variables, _, _ = run_state.restore_for_eval(str(tmp_path / name), "last")
  recs = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  return variables, [{k: v for k, v in r.items() if k not in MACHINE_DEPENDENT} for r in recs]


@pytest.fixture(scope="module")
def host_loop(tmp_path_factory):
  return run(tmp_path_factory.mktemp("host"), "host")


@pytest.mark.slow
def test_data_on_device_gives_the_host_loops_parameters_and_metrics_bit_for_bit(host_loop, tmp_path):
  variables, recs = run(tmp_path, "x", data_on_device=True)
  ref_vars, ref_recs = host_loop
  for a, b in zip(jax.tree.leaves(ref_vars), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert recs == ref_recs


@pytest.mark.slow
def test_one_dispatch_of_k_steps_equals_k_host_steps():
  """A scan of 3 steps (gathered on the device) against 3 host-loop steps from the same state: the
  same SA-PGD decisions and budgets, parameters within float32 rounding (the loop body is compiled
  on its own and may round differently; exactly equal is not promised)."""
  from saat_jax import parallel
  from saat_jax.data import epoch_batches, load_dataset
  from saat_jax.run_state import model_from_spec, model_spec, run_keys

  c = tiny_config("saat_up", TINY)
  data = load_dataset("digits", None)
  x_all, y_all = data.train_images[:160], data.train_labels[:160]
  model = model_from_spec(model_spec(c, 10))
  tx, _ = train.make_optimizer(c, 5)
  init_key, train_key, _ = run_keys(0)
  state0 = train.initial_state(model, tx, init_key, x_all.shape[1:])
  step = train.make_train_step(c, model.apply, tx, 5)
  idx = np.stack(epoch_batches(160, 32, seed=0, epoch=0)[:3]).astype(np.int32)

  host, host_m = state0, []
  jstep = jax.jit(step)
  for i in range(3):
    host, m = jstep(host, x_all[idx[i]], y_all[idx[i]], jax.random.fold_in(train_key, i))
    host_m.append(m)
  dispatch = jax.jit(train.make_dispatch(step, parallel.make_mesh(), train_key))
  dev, dev_m = dispatch(state0, jax.numpy.asarray(x_all), jax.numpy.asarray(y_all), idx, np.arange(3, dtype=np.int32))
  for i in range(3):
    for k in ("eps", "steps", "satisfied"):
      np.testing.assert_array_equal(np.asarray(host_m[i][k]), np.asarray(dev_m[k][i]))
    np.testing.assert_allclose(float(host_m[i]["loss"]), float(dev_m["loss"][i]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(dev.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert int(dev.step) == 3


@pytest.mark.parametrize("over", [{"data_on_device": True, "steps_per_dispatch": 2},
                                  {"steps_per_dispatch": 3}], ids=["device_k2", "host_k3"])
@pytest.mark.slow
def test_runs_with_several_steps_per_dispatch_and_a_shorter_remainder(tmp_path, over):
  """5 steps an epoch in runs of 2 (2+2+1) or 3 (3+2): every step is taken and logged once, and the
  shorter last dispatch is compiled in the first epoch only."""
  _, recs = run(tmp_path, "x", **over)
  assert [r["step"] for r in recs] == [5, 10]
  recs_full = [json.loads(l) for l in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
  assert recs_full[1]["compiles"] == 0


@pytest.mark.parametrize("over,match", [
    ({"steps_per_dispatch": 0}, "steps_per_dispatch must be an integer >= 1"),
    ({"steps_per_dispatch": -2}, "steps_per_dispatch must be an integer >= 1"),
])
def test_bad_settings_are_refused(over, match):
  c = tiny_config("saat_up", TINY)
  c.update_from_flattened_dict(over)  # (a float or a string is refused by ml_collections' own types)
  with pytest.raises(ValueError, match=match):
    train.validate_config(c)
