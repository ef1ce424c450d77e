"""Data parallelism: ONE training step on 1 and on 4 (forced CPU) devices gives the same numbers.

Why one step and not an epoch: the 4-way data-parallel reductions (BatchNorm's batch statistics,
the gradient all-reduce) add in another order than 1 device, so results differ in the last bits
(~1e-7 relative). SA-PGD turns such differences into yes/no decisions (``loss >= rho``, and the
sign of each input-gradient component), and over an epoch one flipped decision grows into a
different trajectory, so an epoch-level tolerance only passes by luck. One step from the same
state, batch and key is tight: parameters, BatchNorm statistics and the gradient agree to 1e-5 and
the per-example SA-PGD outcomes (eps, steps, satisfied) are identical.

That the decisions cannot flip is not assumed but checked: on 1 device the step is run once more
with a model whose ``apply`` records every logit and every input gradient the step computes, and the
test asserts that no loss lies within ``LOSS_MARGIN`` of rho and that no input-gradient component
lies within ``GRAD_MARGIN`` (relative to the median magnitude) of zero. The 1-vs-4-device
differences measured for these configs are at most 2.4e-7 in the logits and 2.4e-6 x the median in
the input gradients, so the thresholds are ~200x and ~40x those, and the actual margins (below)
~2700x and ~180x. The hyper-parameters were chosen so that the margins hold; a change that brings a
decision near its threshold fails here with that explanation rather than as a flaky comparison.
(Both margins are measured over every forward and backward pass of the step and every example, a
superset of the decisions that count, so they do not depend on how the attack loop is written.)

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count``
must be set before JAX starts) and returns its arrays through an ``.npz`` file.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from saat_jax.testing.one_step import BATCH, CONFIGS, OFFSET
from saat_jax.testing.processes import env as processes_env
from saat_jax.testing.processes import without_compile_cache

LOSS_MARGIN = 1e-4  # min |loss - rho| over the step's losses (measured 1.3e-3 for "saat")
GRAD_MARGIN = 1e-4  # min |input grad| / median |input grad| (measured 4.4e-4 "saat", 5.2e-4 "at")
# Every test here reads the module fixture ``steps``: two subprocesses compiling and running each
# config's step (~2.5 minutes of one core on the 2-core CI machine).
pytestmark = pytest.mark.slow

TOL = 1e-5  # rtol and atol for parameters, BatchNorm statistics, loss (differences measured: <= 6e-8)

_SCRIPT = textwrap.dedent("""
    import json, sys
    out, observe = sys.argv[1], sys.argv[2] == "1"
    configs, offset, batch = json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    import jax, numpy as np
    from saat_jax.config_base import saat_digits_config
    from saat_jax import parallel, train
    from saat_jax.data import load_dataset
    from saat_jax.models import create_model

    data = load_dataset("digits")
    images = data.train_images[offset:offset + batch]
    labels = data.train_labels[offset:offset + batch]
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    arrays = {"devices": np.asarray(jax.device_count()), "labels": labels}

    def put(prefix, tree):
      for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        arrays[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)

    # What the model sees during the step (1 device only: ordered callbacks need one device).
    seen = {"logits": [], "input_grads": []}

    @jax.custom_vjp
    def tap(x):
      return x

    def tap_bwd(_, g):
      jax.debug.callback(lambda v: seen["input_grads"].append(np.asarray(v)), g, ordered=True)
      return (g,)

    tap.defvjp(lambda x: (x, None), tap_bwd)

    for name, overrides in configs.items():
      c = saat_digits_config()
      c.update_from_flattened_dict(overrides)
      model = create_model(c.model.name, data.num_classes, normalization=c.model.normalization)
      tx = train.make_optimizer(c, 10)[0]
      init_key, step_key = jax.random.split(jax.random.key(0))
      host_state = jax.device_get(train.initial_state(model, tx, init_key, images.shape[1:]))

      def run(apply_fn):
        # A new step function, jitted as train_and_evaluate does (so each call compiles afresh).
        step = jax.jit(train.make_train_step(c, apply_fn, tx), donate_argnums=0, out_shardings=(repl, repl))
        x, y = parallel.shard_batch(mesh, images, labels)
        return step(jax.device_put(host_state, repl), x, y, step_key)

      for r in range(2):  # twice, compiled twice: bit-identical?
        state, metrics = run(model.apply)
        put(f"{name}/run{r}/state", state)
        put(f"{name}/run{r}/metrics", metrics)
      if observe:
        def observed_apply(variables, x, *args, **kwargs):
          out = model.apply(variables, tap(x), *args, **kwargs)
          logits = out[0] if isinstance(out, tuple) else out
          jax.debug.callback(lambda v: seen["logits"].append(np.asarray(v)), logits, ordered=True)
          return out
        seen["logits"].clear(); seen["input_grads"].clear()
        _, metrics = run(observed_apply)
        put(f"{name}/observed/metrics", metrics)
        jax.effects_barrier()
        arrays[f"{name}/observed/logits"] = np.stack(seen["logits"])
        grads = seen["input_grads"]
        arrays[f"{name}/observed/input_grads"] = np.stack(grads) if grads else np.zeros((0, batch, 8, 8, 1))
        arrays[f"{name}/rho"] = np.asarray(c.saat.rho if c.method == "saat" else np.nan)
    np.savez(out, **arrays)
""")


def _run(n: int, out: Path, observe: bool) -> dict:
  # Without the tests' compilation cache: the step is compiled twice on purpose (see _SCRIPT).
  env = without_compile_cache(processes_env(n))
  args = [str(out), "1" if observe else "0", json.dumps(CONFIGS), str(OFFSET), str(BATCH)]
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, f"the {n}-device step failed:\n{proc.stderr[-3000:]}"
  with np.load(out) as f:
    arrays = dict(f)
  assert int(arrays["devices"]) == n
  return arrays


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
  """``{1: arrays, 4: arrays}``: each config's step, run twice on 1 and on 4 devices.

  One process after the other: on 2 cores two JAX processes at once take longer than in turn.
  """
  tmp = tmp_path_factory.mktemp("parallel")
  return {n: _run(n, tmp / f"devices{n}.npz", observe=(n == 1)) for n in (1, 4)}


def _group(arrays, prefix):
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _cross_entropy(logits, labels):
  """Per-example cross-entropy of ``(..., B, C)`` float32 logits, in float64."""
  z = logits.astype(np.float64)
  m = z.max(axis=-1, keepdims=True)
  return m[..., 0] + np.log(np.exp(z - m).sum(axis=-1)) - z[..., np.arange(len(labels)), labels]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decisions_are_far_from_their_thresholds(steps, name):
  """Every loss the step computes is far from rho and every input-gradient component far from 0.

  So the yes/no decisions of the attack (stop at ``loss >= rho``; the sign of each step) are the
  same on any machine and device count, and the comparisons below are not luck.
  """
  a = steps[1]
  observed, plain = _group(a, f"{name}/observed/metrics"), _group(a, f"{name}/run0/metrics")
  for k in ("eps", "steps", "satisfied", "unperturbed"):  # the recording changed nothing
    np.testing.assert_array_equal(observed[f"['{k}']"], plain[f"['{k}']"], err_msg=k)
  grads = np.abs(a[f"{name}/observed/input_grads"])
  if CONFIGS[name].get("trades.steps", 1) == 0 and "awp.gamma" not in CONFIGS[name]:
    assert len(grads) == 0  # no attack step, no input gradient: nothing to decide
    return
  assert grads.shape[1:] == (BATCH, 8, 8, 1) and len(grads) >= 2
  grads = grads.reshape(-1, grads[0, 0].size)
  grads = grads[grads.max(axis=1) > 0]  # an example's gradient masked to 0 as a whole takes no step
  ratio = grads.min() / np.median(grads)
  assert ratio >= GRAD_MARGIN, (
      f"an input-gradient component is {ratio:.2e} x the median from 0: its sign (a PGD step) could "
      f"differ between machines or device counts; choose other hyper-parameters or data")
  rho = float(a[f"{name}/rho"])
  if name == "saat":
    losses = _cross_entropy(a[f"{name}/observed/logits"], a["labels"])  # every forward pass
    margin = np.abs(losses - rho).min()
    assert margin >= LOSS_MARGIN, (
        f"a loss is {margin:.2e} from rho={rho}: SA-PGD's stop decision (loss >= rho) could differ "
        f"between machines or device counts; choose another rho")
    # The step exercises every kind of decision: done at line 4, stopped at a stage, exhausted.
    st, sat = plain["['steps']"], plain["['satisfied']"]
    assert (st == 0).any() and ((st > 0) & sat).any() and (~sat).any(), (st, sat)
    assert len(np.unique(st)) >= 3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_step_on_one_device_equals_four(steps, name):
  one, four = _group(steps[1], f"{name}/run0/"), _group(steps[4], f"{name}/run0/")
  assert one.keys() == four.keys()
  checked = set()
  for k, a in one.items():
    b = four[k]
    assert a.shape == b.shape and a.dtype == b.dtype, k
    if a.dtype.kind in "biu":  # step counter, SA-PGD steps / satisfied / unperturbed
      np.testing.assert_array_equal(a, b, err_msg=k)
    elif k.startswith("metrics['eps']"):
      np.testing.assert_array_equal(a, b, err_msg=k)  # budgets come from a table: exact
    elif k.startswith("metrics"):  # loss, accuracy
      np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL, err_msg=k)
    elif k.startswith("state.opt_state"):
      # SGD's momentum after one step is the gradient itself (plus weight decay): relative to the
      # leaf's largest entry, as entries near 0 carry the absolute rounding of their neighbours.
      np.testing.assert_allclose(a, b, rtol=0, atol=TOL * np.abs(a).max(), err_msg=k)
    else:  # params, batch_stats
      np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL, err_msg=k)
    checked.add(k.split("[")[0])
  assert {"state.params", "state.batch_stats", "state.opt_state", "metrics"} <= checked, checked
  for k in ("loss", "eps", "steps", "satisfied"):
    assert f"metrics['{k}']" in one, k


@pytest.mark.parametrize("devices", [1, 4])
def test_step_is_deterministic(steps, devices):
  """The same step, compiled twice and run twice on the same device count, is bit-identical."""
  for name in CONFIGS:
    r0, r1 = _group(steps[devices], f"{name}/run0/"), _group(steps[devices], f"{name}/run1/")
    assert r0.keys() == r1.keys() and r0
    for k in r0:
      np.testing.assert_array_equal(r0[k], r1[k], err_msg=f"{name} {k}")
