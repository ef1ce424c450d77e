"""Each training method's step against an independent slow implementation (one step, small model),
AWP and EMA composed with them, the BatchNorm-update switch, and the paper's configs.

The slow side is written from the papers and reference code, not from saat_jax.methods: Python
loops per step (and per example for SA-PGD), its own KL, its own AWP rule and a hand-written
``torch.optim.SGD`` update. Both sides draw the same random numbers (same keys, same order).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saat_jax import train
from saat_jax.attack import budget_schedule
from saat_jax.data import load_dataset
from saat_jax.models import create_model

ROOT = Path(__file__).resolve().parents[1]
from saat_jax.config_base import digits_config, paper_config

B = 16


@pytest.fixture(scope="module")
def batch():
  d = load_dataset("digits")
  return d.train_images[:B], d.train_labels[:B]


def _config(method, **over):
  c = digits_config(method)
  c.model.kwargs = {"width": 4, "use_bn": False}
  c.optim.lr = 0.05
  c.update_from_flattened_dict(over)
  return c


def _fast_step(c, images, labels, key, *, model=None, steps_per_epoch=1):
  model = model or create_model(c.model.name, 10, normalization=c.model.normalization, **c.model.kwargs)
  tx, _ = train.make_optimizer(c, steps_per_epoch)
  state = train.initial_state(model, tx, jax.random.key(0), (8, 8, 1), ema=c.ema.decay > 0)
  step = jax.jit(train.make_train_step(c, model.apply, tx, steps_per_epoch))
  new, metrics = step(state, jnp.asarray(images), jnp.asarray(labels), key)
  return model, state, new, jax.tree_util.tree_map(np.asarray, metrics)


# ---- the slow side --------------------------------------------------------------------------


def _ce(logits, y):
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]


def _kl(lp, lq):
  p, q = jax.nn.log_softmax(lp), jax.nn.log_softmax(lq)
  return jnp.sum(jnp.exp(p) * (p - q), axis=1)


def _slow_pgd(f, x, y, *, eps, alpha, steps, key):
  """attack_pgd of Rice et al.: uniform start, signed steps, projection, clip."""
  r_key = jax.random.split(key, 1)[0]
  xa = np.clip(x + np.asarray(jax.random.uniform(r_key, x.shape, x.dtype, -1.0, 1.0)) * eps, 0, 1)
  g = jax.jit(jax.grad(lambda xa: jnp.sum(_ce(f(xa), y))))
  for _ in range(steps):
    xa = np.clip(np.clip(xa + alpha * np.sign(np.asarray(g(xa))), x - eps, x + eps), 0, 1)
  return xa


def _slow_trades_pgd(f, x, *, eps, alpha, steps, key):
  """trades.py's attack: x + 0.001 N(0, 1), signed steps on KL(f(x) || f(x')), projection, clip."""
  nat = f(x)
  xa = x + 0.001 * np.asarray(jax.random.normal(key, x.shape, x.dtype))
  g = jax.jit(jax.grad(lambda xa: jnp.sum(_kl(nat, f(xa)))))
  for _ in range(steps):
    xa = np.clip(np.clip(xa + alpha * np.sign(np.asarray(g(xa))), x - eps, x + eps), 0, 1)
  return np.clip(xa, 0, 1)


def _slow_sa_pgd(ascent, stop, x, x0, *, rho, eps_max, tau, k, alpha, eps_init):
  """Algorithm 1 per example: budget from eps_init by tau, K steps each, stop when stop >= rho."""
  out, margins = [], []
  for i in range(len(x)):
    gi = jax.grad(lambda xi: ascent(xi[None], i)[0])
    xp, eps = x0[i], eps_init
    s = float(stop(xp[None], i)[0])
    margins.append(abs(s - rho))
    done = s >= rho
    while not done and eps < eps_max - 1e-3 * tau:
      eps = min(eps + tau, eps_max)
      for _ in range(k):
        xp = np.clip(np.clip(xp + alpha * np.sign(np.asarray(gi(xp))), x[i] - eps, x[i] + eps), 0, 1)
        s = float(stop(xp[None], i)[0])
        margins.append(abs(s - rho))
        if s >= rho:
          done = True
          break
    out.append(xp)
  return np.stack(out), min(margins)


def _sgd(params, grads, c):
  """torch.optim.SGD's first step (momentum buffer = d): p - lr * (g + wd * p)."""
  return jax.tree_util.tree_map(lambda p, g: p - c.optim.lr * (g + c.optim.weight_decay * p), params, grads)


def _awp(loss, params, gamma, proxy_lr):
  """AdvWeightPerturb.calc_awp + diff_in_weights: one proxy step, rescaled to gamma ||w||."""
  g = jax.grad(loss)(params)

  def rule(w, gw):
    if w.ndim <= 1:
      return jnp.zeros_like(w)
    d = (w + proxy_lr * gw) - w
    return gamma * jnp.linalg.norm(w) / (jnp.linalg.norm(d) + 1e-20) * d

  return jax.tree_util.tree_map(rule, params, g)


def slow_step(c, model, params, images, labels, key):
  """One step of Algorithm 2 / TRADES / AWP, written out."""
  x = np.asarray(images, np.float32) / 255.0
  y = jnp.asarray(labels)
  _, attack_key = jax.random.split(key)
  f = lambda xa: model.apply({"params": params}, xa)
  method, s, margin = c.method, c.saat, np.inf
  if method == "natural":
    xa = x
  elif method == "at":
    xa = _slow_pgd(f, x, y, eps=c.at.eps, alpha=c.at.alpha, steps=c.at.steps, key=attack_key)
  elif method == "trades":
    xa = _slow_trades_pgd(f, x, eps=c.trades.eps, alpha=c.trades.alpha, steps=c.trades.steps, key=attack_key)
  else:
    nat = f(x)
    if method == "saat":
      ascent = stop = lambda xi, i: _ce(f(xi), y[i:i + 1])
      x0 = _slow_pgd(f, x, y, eps=s.start_eps, alpha=s.start_alpha, steps=s.start_steps, key=attack_key) \
          if s.start == "pgd" else x
    else:
      ascent = lambda xi, i: _kl(nat[i:i + 1], f(xi))
      stop = lambda xi, i: _ce(f(xi), y[i:i + 1])
      x0 = _slow_trades_pgd(f, x, eps=s.start_eps, alpha=s.start_alpha, steps=s.start_steps, key=attack_key)
    eps_init = s.start_eps if s.start == "pgd" else 0.0
    xa, margin = _slow_sa_pgd(ascent, stop, x, x0, rho=s.rho, eps_max=s.eps_max, tau=s.tau, k=s.k,
                              alpha=s.alpha, eps_init=eps_init)

  def loss(p):
    g = lambda xx: model.apply({"params": p}, xx)
    if method in ("trades", "sa_trades"):
      return jnp.mean(_ce(g(x), y)) + c.trades.beta * jnp.sum(_kl(g(x), g(xa))) / len(y)
    return jnp.mean(_ce(g(xa), y))

  if c.awp.gamma > 0:
    v = _awp(loss, params, c.awp.gamma, c.awp.proxy_lr)
    wp = jax.tree_util.tree_map(jnp.add, params, v)
    new = jax.tree_util.tree_map(jnp.subtract, _sgd(wp, jax.grad(loss)(wp), c), v)
  else:
    new = _sgd(params, jax.grad(loss)(params), c)
  return new, xa, margin


@pytest.mark.parametrize("method", ["natural", "at", "saat_down", "saat_up", "trades", "sa_trades_up",
                                    "awp_at", "awp_saat_up", "awp_trades", "awp_sa_trades_up"])
@pytest.mark.slow
def test_one_step_equals_slow_implementation(batch, method):
  c = _config(method, **{"awp.warmup": 0})
  key = jax.random.key(7)
  model, state, new, metrics = _fast_step(c, *batch, key)
  ref, _, margin = slow_step(c, model, state.params, *batch, key)
  # SA-PGD's yes/no decisions are compared only where no loss sits near rho
  assert margin > 1e-3, f"a stopping loss is within {margin:.2g} of rho; pick another key"
  for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new.params),
                                                      jax.tree_util.tree_leaves(state.params))]
  assert all(changed)


@pytest.mark.slow
def test_awp_before_its_warmup_is_exactly_the_method_without_awp(batch):
  """The perturbation is zero until awp.warmup epochs: adding and removing it changes no bit."""
  key = jax.random.key(3)
  _, _, with_awp, m1 = _fast_step(_config("awp_trades", **{"awp.warmup": 5}), *batch, key, steps_per_epoch=4)
  _, _, without, m2 = _fast_step(_config("trades"), *batch, key, steps_per_epoch=4)
  for a, b in zip(jax.tree_util.tree_leaves(with_awp), jax.tree_util.tree_leaves(without)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ... and from the warm-up on it does change the step
  _, _, active, _ = _fast_step(_config("awp_trades", **{"awp.warmup": 0}), *batch, key, steps_per_epoch=4)
  assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(active.params)[0]),
                            np.asarray(jax.tree_util.tree_leaves(without.params)[0]))


@pytest.mark.slow
def test_awp_warmup_counts_epochs_of_steps_and_gamma_zero_is_the_plain_program(batch):
  """awp.warmup is in epochs of ``steps_per_epoch`` steps: with 4 steps an epoch and a warm-up of 1,
  global step 3 is the plain step and step 4 the perturbed one. With gamma = 0 the step is the plain
  method's program (no weight perturbation computed and thrown away)."""
  images, labels = jnp.asarray(batch[0]), jnp.asarray(batch[1])
  c_awp, c_plain = _config("awp_trades", **{"awp.warmup": 1}), _config("trades")
  model = create_model(c_plain.model.name, 10, normalization=c_plain.model.normalization, **c_plain.model.kwargs)
  tx, _ = train.make_optimizer(c_plain, 4)
  state = train.initial_state(model, tx, jax.random.key(0), (8, 8, 1))
  awp_step = jax.jit(train.make_train_step(c_awp, model.apply, tx, 4))
  plain_step = jax.jit(train.make_train_step(c_plain, model.apply, tx, 4))
  key = jax.random.key(3)
  for step, same in ((3, True), (4, False)):
    s = state.replace(step=jnp.asarray(step, jnp.int32))
    a = jax.tree_util.tree_leaves(awp_step(s, images, labels, key)[0].params)
    b = jax.tree_util.tree_leaves(plain_step(s, images, labels, key)[0].params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) == same, step
  no_awp = _config("awp_trades", **{"awp.gamma": 0.0, "awp.warmup": 0})
  jaxpr = lambda cfg: str(jax.make_jaxpr(train.make_train_step(cfg, model.apply, tx, 4))(state, images, labels, key))
  assert jaxpr(no_awp) == jaxpr(c_plain)


@pytest.mark.parametrize("method", ["natural", "at"])
@pytest.mark.slow
def test_step_metrics_per_example_and_accuracy(batch, method):
  """``unperturbed`` is per example (natural: every x' is x; AT at 8/255 from a random start: none),
  ``accuracy`` the fraction of the step's train-mode predictions on x' that are right."""
  images = batch[0]
  c = _config(method)
  model = create_model(c.model.name, 10, normalization=c.model.normalization, **c.model.kwargs)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]  # as _fast_step's state
  pred = np.argmax(np.asarray(model.apply({"params": params}, jnp.asarray(images, jnp.float32) / 255)), 1)
  # labels the initial model gets right on examples 0, 3, 6, ... only: natural accuracy 6/16
  labels = np.where(np.arange(B) % 3 == 0, pred, (pred + 1) % 10).astype(np.int32)
  _, state, _, m = _fast_step(c, images, labels, jax.random.key(2), model=model)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, state.params, params))
  assert m["unperturbed"].shape == (B,) and m["unperturbed"].dtype == bool
  assert m["unperturbed"].all() == (method == "natural") and (~m["unperturbed"]).all() == (method == "at")
  if method == "natural":  # x' = x: the accuracy of the model before the step on the clean batch
    assert float(m["accuracy"]) == pytest.approx(6 / 16, abs=1e-6)
  else:
    assert 0 <= float(m["accuracy"]) <= 6 / 16  # the attack only takes right answers away here


@pytest.mark.slow
def test_ema_is_the_exponential_average_of_the_weights(batch):
  c = _config("at", **{"ema.decay": 0.9})
  _, state, new, _ = _fast_step(c, *batch, jax.random.key(1))
  for e, p0, p1 in zip(jax.tree_util.tree_leaves(new.ema["params"]), jax.tree_util.tree_leaves(state.params),
                       jax.tree_util.tree_leaves(new.params)):
    np.testing.assert_allclose(np.asarray(e), 0.9 * np.asarray(p0) + 0.1 * np.asarray(p1), rtol=1e-6, atol=1e-7)
  # without EMA the state carries none (checkpoints keep their structure)
  _, _, plain, _ = _fast_step(_config("at"), *batch, jax.random.key(1))
  assert plain.ema is None


def _bn_model():
  return create_model("small_cnn", 10, width=4, use_bn=True)


@pytest.mark.slow
def test_attack_bn_train_update_moves_running_stats_once_per_attack_pass(batch):
  """attack_bn='train_update': PGD-10 (+ attack_pgd's selection pass) then the outer pass update
  the running statistics 12 times; 'train' only once (the outer pass). Same adversarial examples."""
  images, labels = batch
  c = _config("at", **{"model.kwargs": {"width": 4, "use_bn": True}})
  model = _bn_model()
  x = jnp.asarray(images, jnp.float32) / 255
  key = jax.random.key(2)
  _, state, plain, m_plain = _fast_step(c, images, labels, key, model=model)
  c.attack_bn = "train_update"
  _, _, upd, m_upd = _fast_step(c, images, labels, key, model=model)
  np.testing.assert_array_equal(m_plain["eps"], m_upd["eps"])

  # replay: the same 12 train-mode passes by hand, in order
  from saat_jax.attack import pgd
  from saat_jax.losses import ce_loss_fn
  v = state.variables
  logits = lambda xa: model.apply(v, xa, train=True, mutable=["batch_stats"])[0]
  x_adv = pgd(ce_loss_fn(logits), x, jnp.asarray(labels), eps=c.at.eps, alpha=c.at.alpha, steps=10,
              key=jax.random.split(key)[1])
  r_key = jax.random.split(jax.random.split(key)[1], 1)[0]
  xa = jnp.clip(x + jax.random.uniform(r_key, x.shape, x.dtype, -1.0, 1.0) * c.at.eps, 0, 1)
  bs = v["batch_stats"]
  iterates = [xa]
  g = jax.grad(lambda xa: jnp.sum(ce_loss_fn(logits)(xa, jnp.asarray(labels))))
  for _ in range(10):
    xa = jnp.clip(jnp.clip(xa + c.at.alpha * jnp.sign(g(xa)), x - c.at.eps, x + c.at.eps), 0, 1)
    iterates.append(xa)
  np.testing.assert_allclose(np.asarray(iterates[10]), np.asarray(x_adv), atol=1e-6)
  # 10 gradient passes at iterates 0..9, attack_pgd's selection pass, the outer loss's pass
  for xi in iterates[:10] + [iterates[10], x_adv]:
    bs = model.apply({"params": v["params"], "batch_stats": bs}, xi, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  for a, b in zip(jax.tree_util.tree_leaves(upd.batch_stats), jax.tree_util.tree_leaves(bs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # and the default leaves them to the outer pass alone
  one = model.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, x_adv, train=True,
                    mutable=["batch_stats"])[1]["batch_stats"]
  for a, b in zip(jax.tree_util.tree_leaves(plain.batch_stats), jax.tree_util.tree_leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, order", [
    ("trades", "nat adv nat"),  # yaodongyu/TRADES trades.py: model(x_natural), model(x_adv), model(x_natural)
    # csdongxian/AWP trades_AWP/train_trades_cifar.py: model(x_adv), model(x_natural) for the KL, model(x_natural)
    # for the CE; the order is the AWP code's in its warm-up epochs too (the same train() runs them)
    ("awp_trades", "adv nat nat"),
])
@pytest.mark.slow
def test_trades_updates_running_stats_as_the_reference_s_three_train_mode_passes(batch, method, order):
  images, labels = batch
  c = _config(method, **{"model.kwargs": {"width": 4, "use_bn": True}, "awp.warmup": 5})  # AWP's diff is 0
  model = _bn_model()
  key = jax.random.key(4)
  _, state, new, _ = _fast_step(c, images, labels, key, model=model)
  v = state.variables
  x = jnp.asarray(images, jnp.float32) / 255
  from saat_jax.attack import trades_pgd
  xa = trades_pgd(lambda z: model.apply(v, z, train=False), x, eps=c.trades.eps, alpha=c.trades.alpha,
                  steps=c.trades.steps, key=jax.random.split(key)[1])
  bs = v["batch_stats"]
  for xi in [{"nat": x, "adv": xa}[p] for p in order.split()]:
    bs = model.apply({"params": v["params"], "batch_stats": bs}, xi, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  for a, b in zip(jax.tree_util.tree_leaves(new.batch_stats), jax.tree_util.tree_leaves(bs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _outer_passes(loss):
  """The inputs (nat / adv) of ``loss``'s network passes in order, their count, and its logits."""
  x, x_adv, y = jnp.zeros((2, 8, 8, 1)), jnp.ones((2, 8, 8, 1)), jnp.array([0, 1])
  seen = []

  def forward(inputs, passes):
    adv = bool(inputs[0, 0, 0, 0] == 1.0)
    seen.append("adv" if adv else "nat")
    return jnp.full((2, 10), 2.0 if adv else 0.0).at[:, 3].set(5.0), passes + 1

  _, logits, passes = loss(forward, 0, x, x_adv, y)
  np.testing.assert_array_equal(logits, jnp.full((2, 10), 2.0).at[:, 3].set(5.0))  # the adversarial logits
  return " ".join(seen), passes


@pytest.mark.parametrize("method, order", [("trades", "nat adv nat"), ("awp_trades", "adv nat nat"),
                                           ("sa_trades_up", "nat adv nat"), ("awp_sa_trades_up", "adv nat nat")])
def test_the_trades_outer_losses_call_the_network_in_their_reference_order(method, order):
  """Both TRADES-family methods, with and without AWP: the outer loss's train-mode passes in the
  order of the reference code (the test above checks TRADES' through BatchNorm's statistics; SA-TRADES
  follows the same codes), and the logits it reports are the adversarial ones."""
  from saat_jax.methods import get_method

  assert _outer_passes(get_method(_config(method)).loss) == (order, 3)


def test_without_an_awp_section_and_by_default_the_trades_order_is_trades_own():
  from saat_jax.methods import get_method
  from saat_jax.methods.trades import trades_outer_loss

  c = _config("trades")
  del c.awp  # a config written before AWP existed has no section: no AWP
  assert _outer_passes(get_method(c).loss) == ("nat adv nat", 3)
  assert _outer_passes(trades_outer_loss(6.0)) == ("nat adv nat", 3)


# ---- the paper's configs ---------------------------------------------------------------------


def test_headline_config_is_table1_saat_up_e14_r17_as_released():
  from saat_jax.config_help import load_config  # the files themselves, loaded by path as --config does
  c = load_config(str(ROOT / "configs" / "saat_cifar10.py"))
  assert c.experiment.row == "saat_up_e14_r1.7" and c.method == "saat"
  s = c.saat
  assert (s.rho, s.start, s.k) == (1.7, "pgd", 3)
  assert (s.start_eps * 255, s.start_alpha * 255, s.start_steps) == pytest.approx((8, 2, 10))
  assert np.allclose(np.array(budget_schedule(s.eps_max, s.tau, s.start_eps)) * 255, [8, 10, 12, 14])
  assert c.data.pad_mode == "reflect" and c.model.normalization == "cifar10"
  assert tuple(c.optim.lr_milestones) == (100, 150) and c.num_epochs == 200
  assert c.attack_bn == "train" and c.eval.steps == 20
  a = load_config(str(ROOT / "configs" / "saat_cifar10_algorithm1.py")).saat
  assert a.start == "zero" and len(budget_schedule(a.eps_max, a.tau)) == 8


@pytest.mark.parametrize("row,start,stages", [
    ("saat_down", "zero", [0, 2, 4, 6, 8]),
    ("saat_up_e9_r1.5", "pgd", [8, 9]),
    ("saat_up_e20_r1.5", "pgd", [8, 10, 12, 14, 16, 18, 20]),
    ("awp_saat_up_e9_r1.7", "pgd", [8, 9]),
    ("sa_trades_up", "pgd", [8, 10, 12, 14]),
    ("fig3a_r0.4", "zero", list(range(0, 129, 2))),
])
def test_saat_rows_build_the_attack_they_claim(row, start, stages):
  c = paper_config(row)
  s = c.saat
  assert s.start == start
  eps_init = s.start_eps if start == "pgd" else 0.0
  np.testing.assert_allclose(np.array(budget_schedule(s.eps_max, s.tau, eps_init)) * 255, stages, atol=1e-6)
  assert (c.awp.gamma > 0) == row.startswith("awp_")


def test_paper_rows_set_method_data_model_and_awp():
  assert paper_config("cifar100_saat_up").model.normalization == "cifar100"
  assert paper_config("cifar100_at").data.name == "cifar100"
  assert paper_config("wrn34_10_awp_at").model.name == "wrn34_10"
  t = paper_config("awp_trades")
  # AWP from the 10th epoch on, as trades_AWP's `epoch >= 10` with epochs counted from 1
  assert (t.method, t.awp.gamma, t.awp.warmup, t.attack_bn, t.trades.beta) == ("trades", 5e-3, 9, "eval", 6.0)
  assert t.trades.eps == pytest.approx(8 / 255)
  t = paper_config("trades")
  assert (t.trades.eps, t.trades.alpha, t.trades.steps, t.awp.gamma) == (0.031, 0.007, 10, 0.0)
  a = paper_config("awp_at")
  assert (a.method, a.awp.gamma, a.awp.proxy_lr, a.awp.warmup) == ("at", 0.01, 0.01, 0)
  assert paper_config("fig1b_at_e16").at.eps == pytest.approx(16 / 255)
  with pytest.raises(ValueError, match="saat_up_e14_r1.7"):
    paper_config("saat_up_e14_r17")
  with pytest.raises(ValueError, match="unknown method"):
    digits_config("mart")


# ---- resume == uninterrupted, for every method ------------------------------------------------


def _restore(workdir, c):
  from saat_jax import checkpointing
  ck = checkpointing.RunCheckpoints(str(workdir))
  meta = ck.restore_meta("last")
  model = train.model_from_spec(meta["model"])
  tx, _ = train.make_optimizer(c, 1)
  state, _ = ck.restore("last", train.initial_state(model, tx, jax.random.key(0), (8, 8, 1), ema=c.ema.decay > 0))
  ck.close()
  return state


@pytest.mark.parametrize("method,extra", [
    ("saat_down", {"attack_bn": "train_update"}),
    # AWP switches on at the resumed epoch; the EMA is restored and selects `best`. (TRADES' and
    # SAAT_up's own resume is covered by this SA-TRADES_up run and tests/test_preemption.py.)
    ("awp_sa_trades_up", {"awp.warmup": 1, "ema.decay": 0.9, "eval.best_weights": "ema"}),
])
@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, method, extra):
  from saat_jax.train import train_and_evaluate

  def cfg(epochs):
    c = _config(method, **{"num_epochs": epochs, "data.num_train": 128, "batch_size": 64, "eval.num_test": 64,
                           "eval.batch_size": 64, "eval.train_subset": 64, "progress": False,
                           "model.kwargs": {"width": 4, "use_bn": True}, **extra})
    return c

  full = train_and_evaluate(cfg(2), str(tmp_path / "full"))
  train_and_evaluate(cfg(1), str(tmp_path / "split"))
  resumed = train_and_evaluate(cfg(2), str(tmp_path / "split"))
  a, b = _restore(tmp_path / "full", cfg(2)), _restore(tmp_path / "split", cfg(2))
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  from saat_jax.health import MACHINE_DEPENDENT_KEYS as drop
  assert [{k: v for k, v in r.items() if k not in drop} for r in full] == \
         [{k: v for k, v in r.items() if k not in drop} for r in resumed]


@pytest.mark.parametrize("pad_mode,flip", [("reflect", True), ("zero", False)])
@pytest.mark.slow
def test_step_augments_with_reflect_padded_crops_and_flips(batch, pad_mode, flip):
  """The training step crops after reflect padding and flips, as Rice et al.: replayed by hand with
  the same random draws (a step that never flips, or pads with zeros, fails here); and the config's
  other choice, zero padding without flips, reaches the step too."""
  images, labels = batch
  c = _config("natural", **{"data.augment": True, "data.pad": 2, "data.pad_mode": pad_mode, "data.flip": flip})
  key = jax.random.key(11)
  model, state, new, _ = _fast_step(c, images, labels, key)
  aug_key, _ = jax.random.split(key)
  crop_key, flip_key = jax.random.split(aug_key)
  offsets = np.asarray(jax.random.randint(crop_key, (B, 2), 0, 5))
  flips = np.asarray(jax.random.bernoulli(flip_key, 0.5, (B,)))
  assert flips.any() and (~flips).any() and len({tuple(o) for o in offsets}) > 3
  padded = np.pad(np.asarray(images, np.float32) / 255, ((0, 0), (2, 2), (2, 2), (0, 0)),
                  mode="reflect" if pad_mode == "reflect" else "constant")
  x = np.stack([padded[i, dy:dy + 8, dx:dx + 8] for i, (dy, dx) in enumerate(offsets)])
  if flip:
    x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
  y = jnp.asarray(labels)
  loss = lambda p: jnp.mean(_ce(model.apply({"params": p}, x), y))
  ref = _sgd(state.params, jax.grad(loss)(state.params), c)
  for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)
