"""The training loop's small pieces, each against a hand computation (``saat_jax.train``).

The run-level tests (resume bit for bit, 1 vs 4 devices, the digits runs) go through them too, but
a wrong epoch record or a shared EMA buffer would only show there as a changed number with no
pointer to the cause; here each fails by name, in a second. Mutation testing of ``train.py``
(docs/mutation.md) found them untested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax import train


def step_metrics(loss, acc, eps, steps, sat, unpert):
  f32 = np.float32
  return {"loss": f32(loss), "accuracy": f32(acc), "eps": np.asarray(eps, f32), "steps": np.asarray(steps, np.int32),
          "satisfied": np.asarray(sat, bool), "unperturbed": np.asarray(unpert, bool)}


def test_epoch_summary_is_the_hand_computed_record():
  # Float32 losses whose float32 mean (0: 1e8 + 1 rounds to 1e8) differs from the float64 one (1/3).
  ms = [step_metrics(1e8, 0.5, [2 / 255, 4 / 255], [1, 3], [1, 0], [0, 0]),
        step_metrics(1.0, 1.0, [6 / 255, 8 / 255], [5, 7], [1, 1], [1, 0]),
        step_metrics(-1e8, 0.25, [10 / 255, 12 / 255], [9, 11], [0, 0], [0, 0])]
  got = train._epoch_summary(ms)
  eps = np.array([2, 4, 6, 8, 10, 12], np.float64) / 255
  want = {"train_loss": 1 / 3, "train_accuracy": 1.75 / 3, "attack_eps_mean": 7.0, "attack_steps_mean": 6.0,
          "attack_frac_satisfied": 0.5, "attack_frac_unperturbed": 1 / 6}
  for q in train.EPS_QUANTILES:
    want[f"attack_eps_q{int(q * 100)}"] = float(np.quantile(eps, q)) * 255
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), k
  assert got["attack_eps_q50"] == pytest.approx(7.0)  # the median budget, in 1/255


def test_stack_unstack_per_step_and_dispatches():
  ms = [{"loss": np.float32(i), "eps": np.full(3, i, np.float32)} for i in range(4)]
  stacked = train._stack(ms)
  assert stacked["loss"].shape == (4,) and stacked["eps"].shape == (4, 3)
  back = train._unstack(stacked)
  assert len(back) == 4
  for a, b in zip(ms, back):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert train._stack([]) == {} and train._unstack({}) == []

  # one step's scalar metrics, then a dispatch of 3 stacked steps: global steps 5, then 6, 7, 8
  per = train._per_step([5, 6], [ms[0], train._stack(ms[1:])])
  assert [gs for gs, _ in per] == [5, 6, 7, 8]
  assert [float(m["loss"]) for _, m in per] == [0.0, 1.0, 2.0, 3.0]
  np.testing.assert_array_equal(per[3][1]["eps"], np.full(3, 3.0))

  assert train._dispatches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
  assert train._dispatches(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
  assert train._dispatches(list(range(2)), 1) == [[0], [1]]


def test_ema_starts_as_a_copy_in_its_own_buffers():
  """The step donates its state: an EMA aliasing the parameters' buffers would be invalidated (or
  updated in place) with them."""
  tree = {"params": {"w": jnp.arange(4.0)}, "batch_stats": {"m": jnp.ones(2)}}
  copied = train._copy(tree)
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(copied)):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
