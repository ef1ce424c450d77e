"""Training end to end on digits: SAAT vs natural, resume == uninterrupted, the optimizer, bad input.

1 vs 4 devices is compared where it is tight, one step: tests/test_parallel.py."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from saat_jax import checkpointing, train
from saat_jax.train import TrainingDiverged, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import saat_digits_config


def digits_config(**overrides):
  c = saat_digits_config()
  c.progress = False
  c.update_from_flattened_dict(overrides)
  return c


def restore_params(workdir, kind="last"):
  ck = checkpointing.RunCheckpoints(str(workdir))
  meta = ck.restore_meta(kind)
  model = train.model_from_spec(meta["model"])
  tx, _ = train.make_optimizer(digits_config(), 1)
  target = train.initial_state(model, tx, jax.random.key(0), (8, 8, 1))
  state, meta = ck.restore(kind, target)
  ck.close()
  return state, meta


@pytest.mark.slow
def test_digits_saat_beats_natural_training(tmp_path):
  """The digits config trains in about a minute; SAAT must be far more robust than natural.

  Evaluated at epochs 5 and 10 only (``eval.every``): each evaluation (PGD-20 on 400 test and 500
  training digits) takes longer than a natural epoch. Measured at epoch 10: PGD-20 accuracy 0.43
  natural, 0.86 SAAT."""
  every = {"eval.every": 5}
  nat = train_and_evaluate(digits_config(method="natural", num_epochs=10, **every), str(tmp_path / "nat"))
  saat = train_and_evaluate(digits_config(num_epochs=10, **every), str(tmp_path / "saat"))
  n, s = nat[-1], saat[-1]
  print("natural:", json.dumps(n), "\nsaat:", json.dumps(s))
  assert n["test_natural_accuracy"] > 0.9 and s["test_natural_accuracy"] > 0.8
  assert s["test_pgd_accuracy"] > n["test_pgd_accuracy"] + 0.2
  # SA-PGD statistics are recorded and plausible: budgets grow while the model becomes robust
  assert saat[-1]["attack_eps_mean"] > saat[0]["attack_eps_mean"]
  assert 0 <= s["attack_frac_satisfied"] <= 1 and s["attack_steps_mean"] > 0
  lines = (tmp_path / "saat" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in lines] == list(range(10))
  for key in ("train_loss", "train_accuracy", "attack_eps_q50", "attack_frac_unperturbed",
              "test_natural_accuracy", "test_pgd_accuracy", "best_epoch", "lr"):
    assert key in s
  assert (tmp_path / "saat" / "checkpoints" / "best").is_dir()


class _Killed(Exception):
  pass


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path, monkeypatch):
  # 512 training digits (8 steps an epoch) and a smaller evaluation (100 test and 100 training
  # digits, still one batch each): the runs are compared bit for bit, not read as numbers.
  cfg = dict(num_epochs=3, **{"optim.lr_milestones": (1, 2), "data.num_train": 512, "eval.num_test": 100,
                              "eval.train_subset": 100})
  ref = train_and_evaluate(digits_config(**cfg), str(tmp_path / "ref"))

  # 1) killed in the middle of the second epoch: its 4th training batch, put on the devices after
  #    epoch 1's 8 training batches and its 2 evaluation batches (the test set, the training subset)
  from saat_jax import parallel
  real_shard = parallel.shard_batch
  calls = {"n": 0}

  def killing_shard_batch(*a, **kw):
    calls["n"] += 1
    if calls["n"] == 8 + 2 + 4:
      raise _Killed()
    return real_shard(*a, **kw)

  monkeypatch.setattr(parallel, "shard_batch", killing_shard_batch)
  with pytest.raises(_Killed):
    train_and_evaluate(digits_config(**cfg), str(tmp_path / "run"))
  monkeypatch.setattr(parallel, "shard_batch", real_shard)
  assert checkpointing.RunCheckpoints(str(tmp_path / "run")).latest_epoch("last") == 0

  # 2) killed after `best` but before `last` of the third epoch was written
  real_save = checkpointing.RunCheckpoints.save

  def save_then_die(self, kind, epoch, state, meta):
    if kind == "last" and epoch == 2:
      raise _Killed()
    return real_save(self, kind, epoch, state, meta)

  monkeypatch.setattr(checkpointing.RunCheckpoints, "save", save_then_die)
  with pytest.raises(_Killed):
    train_and_evaluate(digits_config(**cfg), str(tmp_path / "run"))
  monkeypatch.setattr(checkpointing.RunCheckpoints, "save", real_save)

  resumed = train_and_evaluate(digits_config(**cfg), str(tmp_path / "run"))
  a, _ = restore_params(tmp_path / "ref")
  b, meta = restore_params(tmp_path / "run")
  assert meta["epoch"] == 2 and int(b.step) == int(a.step)
  for x, y in zip(jax.tree_util.tree_leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree_util.tree_leaves((b.params, b.batch_stats, b.opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert [r["epoch"] for r in resumed] == [0, 1, 2]
  for r1, r2 in zip(ref, resumed):
    assert r1["test_pgd_accuracy"] == r2["test_pgd_accuracy"] and r1["train_loss"] == r2["train_loss"]


@pytest.mark.parametrize("override,match", [
    ({"saat.eps_max": -1 / 255}, "eps_max"),
    ({"saat.tau": 0.0}, "tau"),
    ({"saat.k": 0}, "k"),
    ({"saat.alpha": -1.0}, "alpha"),
    ({"saat.rho": float("nan")}, "rho is NaN"),
    ({"method": "mart"}, "method"),
    ({"trades.beta": -1.0, "method": "trades"}, "trades.beta"),
    ({"awp.gamma": -0.01}, "awp.gamma"),
    ({"ema.decay": 1.0}, "ema.decay"),
    ({"ema.decay": -0.1}, "ema.decay"),
    ({"eval.best_weights": "ema"}, "needs an EMA"),
    ({"sa_trades.stop_loss": "dlr", "method": "sa_trades"}, "stop_loss"),
    ({"data.pad_mode": "edge"}, "pad_mode"),
    ({"attack_bn": "train_update", "method": "trades"}, "eval"),
    ({"model.name": "resnet50"}, "unknown model"),
    ({"data.name": "mnist"}, "mnist"),
    ({"optim.lr": 0.0}, "optim.lr"),
    ({"eval.select_best_on": "val"}, "val_size"),
])
def test_impossible_config_is_refused_before_writing(tmp_path, override, match):
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(digits_config(**override), str(workdir))
  assert not workdir.exists()


def test_missing_data_path_is_refused_before_writing(tmp_path):
  from saat_jax.data import DataError
  c = digits_config(**{"data.name": "cifar10", "data.data_dir": str(tmp_path / "nope.tar.gz")})
  with pytest.raises(DataError, match="nope.tar.gz"):
    train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path):
  train_and_evaluate(digits_config(num_epochs=1), str(tmp_path))
  before = sorted(p.name for p in (tmp_path / "checkpoints" / "last").iterdir())
  c = digits_config(num_epochs=2, **{"model.kwargs": {"width": 16}})
  with pytest.raises(checkpointing.CheckpointError, match="holds a checkpoint of model"):
    train_and_evaluate(c, str(tmp_path))
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "last").iterdir()) == before


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  train_and_evaluate(digits_config(num_epochs=1), str(tmp_path))
  good, _ = restore_params(tmp_path)
  with pytest.raises(TrainingDiverged, match=r"at step \d+ \(epoch 2") as e:
    train_and_evaluate(digits_config(num_epochs=2, **{"optim.lr": 1e30, "allow_config_change": True}), str(tmp_path))
  assert "epoch 1" in str(e.value) and "kept" in str(e.value)
  after, meta = restore_params(tmp_path)
  assert meta["epoch"] == 0
  for x, y in zip(jax.tree_util.tree_leaves(good.params), jax.tree_util.tree_leaves(after.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 1


@pytest.mark.torch
@pytest.mark.slow
def test_optimizer_matches_torch_sgd_with_multistep_lr():
  """``make_optimizer`` is ``torch.optim.SGD(lr, momentum, weight_decay)`` + ``MultiStepLR`` in steps.

  Milestones are in epochs (fractions allowed) and become steps ``round(m * steps_per_epoch)``:
  1.5 and 3 epochs of 4 steps are torch milestones 6 and 12; 15 steps cross both.
  """
  torch = pytest.importorskip("torch")
  import optax

  steps_per_epoch, num_steps = 4, 15
  c = digits_config(**{"optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 5e-4,
                       "optim.lr_decay": 0.1, "optim.lr_milestones": (1.5, 3)})
  tx, schedule = train.make_optimizer(c, steps_per_epoch)
  rng = np.random.default_rng(0)
  shapes = {"b": (3,), "k": (2, 2, 3), "w": (4, 3)}
  init = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  grads = [{n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()} for _ in range(num_steps)]

  tparams = {n: torch.tensor(v, requires_grad=True) for n, v in init.items()}
  opt = torch.optim.SGD(list(tparams.values()), lr=0.1, momentum=0.9, weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[6, 12], gamma=0.1)

  params = {n: jax.numpy.asarray(v) for n, v in init.items()}
  opt_state = tx.init(params)
  update = jax.jit(tx.update)
  lrs = []
  for t in range(num_steps):
    lr = opt.param_groups[0]["lr"]
    lrs.append(lr)
    assert float(schedule(t)) == pytest.approx(lr, rel=1e-6), t
    for n, p in tparams.items():
      p.grad = torch.from_numpy(grads[t][n].copy())
    opt.step()
    sched.step()
    updates, opt_state = update({n: jax.numpy.asarray(g) for n, g in grads[t].items()}, opt_state, params)
    params = optax.apply_updates(params, updates)
    for n in shapes:
      np.testing.assert_allclose(np.asarray(params[n]), tparams[n].detach().numpy(), rtol=1e-6, atol=1e-6,
                                 err_msg=f"{n} after step {t + 1}")
  assert lrs == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 3)
