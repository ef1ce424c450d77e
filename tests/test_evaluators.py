"""The evaluators (saat_jax.evaluators): natural / PGD-k accuracy as a direct computation, the masked
padding of the last batch, PGD really running its steps, RD (Sec. 3.1) and the sweep's PGD schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax.attack import pgd
from saat_jax.data import to_float
from saat_jax.evaluators import RobustnessEvaluator, robustness_disparity, sweep_pgd_schedule
from saat_jax.losses import ce_loss_fn

EPS, ALPHA = 16 / 255, 2 / 255


class Linear(nn.Module):
  """A linear classifier; with two classes the sign of its input gradient is that of ``w_other -
  w_label`` wherever the attack is, so PGD with ``steps * alpha >= 2 eps`` ends at that corner of the
  eps-box whatever its random start."""

  classes: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def split(classes, n, seed=0, label_noise=0.0):
  """A model, its variables and a split of uint8 4x4 images labelled mostly as the model predicts."""
  model = Linear(classes)
  k_init, k_img, k_lab = jax.random.split(jax.random.key(seed), 3)
  images = np.asarray(jax.random.randint(k_img, (n, 4, 4, 1), 0, 256), np.uint8)
  variables = model.init(k_init, jnp.zeros((1, 4, 4, 1)))
  labels = np.asarray(jnp.argmax(model.apply(variables, to_float(images)), -1), np.int32)
  flip = np.asarray(jax.random.uniform(k_lab, (n,)) < label_noise)
  labels = np.where(flip, (labels + 1) % classes, labels).astype(np.int32)
  return model, variables, images, labels


def evaluator(model, batch_size, steps=20, eps=EPS):
  return RobustnessEvaluator(model.apply, eps=eps, alpha=ALPHA, steps=steps, batch_size=batch_size)


@pytest.mark.parametrize("batch_size,steps", [(16, 1), (48, 1), (16, 20)])
@pytest.mark.slow
def test_evaluator_is_the_direct_computation(batch_size, steps):
  """Natural accuracy is mean(argmax == label); PGD accuracy is saat_jax.attack.pgd run on batch b
  with the key fold_in(key, b), as the per-epoch evaluation has always drawn its random starts
  (PGD-1 at 32/255 keeps much of its random start, so another key per batch shows)."""
  model, variables, images, labels = split(3, 48, label_noise=0.25)
  key, eps = jax.random.key(7), 32 / 255
  got = evaluator(model, batch_size, steps, eps).run(variables, images, labels, key)

  logits_fn = lambda x: model.apply(variables, x, train=False)
  attack = jax.jit(lambda x, y, k: pgd(ce_loss_fn(logits_fn), x, y, eps=eps, alpha=ALPHA, steps=steps, key=k))
  x = to_float(images)
  natural = np.mean(np.argmax(np.asarray(logits_fn(x)), -1) == labels)
  robust = []
  for b, start in enumerate(range(0, len(labels), batch_size)):
    xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
    robust.append(np.argmax(np.asarray(logits_fn(attack(xb, yb, jax.random.fold_in(key, b)))), -1) == yb)
  robust = np.mean(np.concatenate(robust))
  assert got == {"natural_accuracy": natural, "pgd_accuracy": robust}
  assert 0 < robust < natural < 1  # the split is neither trivial nor hopeless


@pytest.mark.slow
def test_padding_of_the_last_batch_is_masked():
  """7 examples in batches of 4 (the last padded with a copy of example 0) or 8 count as in one of 7."""
  model, variables, images, labels = split(2, 7, seed=1)
  key = jax.random.key(3)
  one = evaluator(model, 7).run(variables, images, labels, key)
  assert one["natural_accuracy"] == 1.0  # example 0, the padding, is correct: counting it would show
  for batch_size in (4, 8):
    assert evaluator(model, batch_size).run(variables, images, labels, key) == one


@pytest.mark.slow
def test_pgd_runs_its_steps():
  """PGD-20 reaches the worst corner of the eps-box of a two-class linear model; PGD-1 does not."""
  model, variables, images, labels = split(2, 256, seed=2)
  key = jax.random.key(0)
  w = variables["params"]["Dense_0"]["kernel"]  # (16, 2)
  direction = jnp.sign(w[:, 1 - labels] - w[:, labels]).T.reshape(images.shape)
  corner = jnp.clip(to_float(images) + EPS * direction, 0, 1)
  worst = float(np.mean(np.argmax(model.apply(variables, corner), -1) == labels))

  pgd20 = evaluator(model, 64, steps=20).run(variables, images, labels, key)["pgd_accuracy"]
  pgd1 = evaluator(model, 64, steps=1).run(variables, images, labels, key)["pgd_accuracy"]
  assert pgd20 == worst
  assert worst < pgd1 - 0.05 and pgd1 < 1.0


@pytest.mark.slow
def test_no_attack_when_eps_or_steps_is_zero():
  model, variables, images, labels = split(3, 12, label_noise=0.25)
  for eps, steps in ((0.0, 20), (EPS, 0)):
    got = RobustnessEvaluator(model.apply, eps=eps, alpha=ALPHA, steps=steps, batch_size=4).run(
        variables, images, labels, jax.random.key(0))
    assert got["pgd_accuracy"] == got["natural_accuracy"]


def test_rd_matches_hand_computation():
  eps = [0, 2, 4, 8]
  acc = [0.9, 0.8, 0.6, 0.3]
  # (1/3) * ((0.9-0.8)/2 + (0.9-0.6)/4 + (0.9-0.3)/8)
  assert robustness_disparity(eps, acc) == pytest.approx((0.05 + 0.075 + 0.075) / 3)
  # a model whose accuracy does not drop has RD 0; order of budgets does not matter
  assert robustness_disparity([4, 0, 2], [0.7, 0.7, 0.7]) == 0.0
  # budgets below 1/255 count too
  assert robustness_disparity([0, 0.5], [0.9, 0.8]) == pytest.approx(0.2)
  # float32 inputs are summed in float64
  e32, a32 = np.float32([0, 1, 3, 7]), np.float32([0.93, 0.71, 0.52, 0.37])
  e64, a64 = e32.astype(np.float64), a32.astype(np.float64)
  assert robustness_disparity(e32, a32) == float(np.mean((a64[0] - a64[1:]) / e64[1:]))
  with pytest.raises(ValueError, match=r"^robustness_disparity needs the accuracy at eps = 0 \(A_0\)$"):
    robustness_disparity([2, 4], [0.5, 0.4])
  with pytest.raises(ValueError, match=r"^robustness_disparity needs at least one budget eps_i > 0$"):
    robustness_disparity([0], [0.5])
  for e, a in (([0, 2], [0.5]), ([[0, 2]], [[0.5, 0.4]])):  # unequal lengths; 2-D
    with pytest.raises(ValueError, match="^robustness_disparity: eps_list and accuracies must be 1-D and of equal "
                                         "length$"):
      robustness_disparity(e, a)


def test_autoattack_evaluation_passes_its_settings_and_reads_the_result(monkeypatch):
  """``autoattack_evaluation`` is a thin layer over ``saat_jax.autoattack.autoattack``: the settings
  reach it (AutoAttack's defaults: standard version, seed 0, the project's warnings), the uint8
  images arrive in [0, 1], and the accuracy is the mean of its per-point verdicts."""
  import saat_jax.autoattack as aa
  from saat_jax.evaluators import autoattack_evaluation
  from saat_jax.log import warn as project_warn

  calls = []

  class Result:
    robust = jnp.array([True, False, True, True])
    checks = ({"check": "randomized", "status": "ok"},)

  def fake(logits_fn, x, y, **kw):
    calls.append((logits_fn, np.asarray(x), np.asarray(y), kw))
    return Result()

  monkeypatch.setattr(aa, "autoattack", fake)
  images = np.array([0, 51, 102, 255], np.uint8).reshape(4, 1, 1, 1)
  labels = np.array([1, 2, 3, 4])
  f = lambda x: x
  got = autoattack_evaluation(f, images, labels, eps=8 / 255)
  assert got == {"accuracy": 0.75, "checks": [{"check": "randomized", "status": "ok"}]}
  fn, x, y, kw = calls[0]
  assert fn is f and np.allclose(x.reshape(-1), [0, 0.2, 0.4, 1]) and y.tolist() == [1, 2, 3, 4]
  assert kw == {"eps": 8 / 255, "version": "standard", "seed": 0, "batch_size": None, "progress": True,
                "warn": project_warn}
  mine = lambda msg: None
  autoattack_evaluation(f, images, labels, eps=0.5, version="rand", seed=3, batch_size=8, progress=False, warn=mine)
  assert calls[1][3] == {"eps": 0.5, "version": "rand", "seed": 3, "batch_size": 8, "progress": False, "warn": mine}


def test_sweep_pgd_schedule_follows_released_code():
  assert sweep_pgd_schedule(8) == (2 / 255, 20)
  assert sweep_pgd_schedule(2) == (2 / 255, 5)
  assert sweep_pgd_schedule(16) == (2 / 255, 40)
  assert sweep_pgd_schedule(0.25) == (2 / 255, 1)  # at least one step


def test_pgd_of_the_evaluation_is_one_restart_unless_asked(monkeypatch):
  """Rice et al.'s PGD-20 evaluation has one random start; more restarts only when asked."""
  from saat_jax.evaluators import robustness

  seen = []

  def recording_pgd(loss_fn, x, y, **kw):
    seen.append(kw)
    return x

  monkeypatch.setattr(robustness, "pgd", recording_pgd)
  model = Linear(2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
  images, labels = np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32)
  for kwargs, restarts in (({}, 1), ({"restarts": 3}, 3)):
    RobustnessEvaluator(model.apply, eps=EPS, alpha=ALPHA, steps=2, batch_size=4, **kwargs).run(
        variables, images, labels, jax.random.key(1))
    assert seen[-1]["restarts"] == restarts and seen[-1]["steps"] == 2
    assert seen[-1]["eps"] == pytest.approx(EPS) and seen[-1]["alpha"] == pytest.approx(ALPHA)


def test_an_empty_split_has_no_accuracy_and_one_example_has_one():
  from saat_jax.evaluators import natural_and_pgd_accuracy

  model = Linear(2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
  step = jax.jit(robustness_step(model))
  nat, rob = natural_and_pgd_accuracy(step, variables, np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, np.int32),
                                      batch_size=4, key=jax.random.key(1))
  assert np.isnan(nat) and np.isnan(rob)
  images = np.full((1, 2, 2, 1), 128, np.uint8)
  pred = int(np.argmax(model.apply(variables, jnp.asarray(images, jnp.float32) / 255)))
  nat, rob = natural_and_pgd_accuracy(step, variables, images, np.full(1, pred, np.int32), batch_size=4,
                                      key=jax.random.key(1))
  assert nat == 1.0 and rob in (0.0, 1.0)


def robustness_step(model):
  from saat_jax.evaluators import make_eval_step

  return make_eval_step(model.apply, eps=EPS, alpha=ALPHA, steps=2)
