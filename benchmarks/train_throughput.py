"""Training-step throughput: saat_jax's step against a PyTorch transcription of the reference step.

For each ``--method`` (natural, AT, SAAT, TRADES), ``--model`` and ``--batch``, on whatever device
JAX sees:

* **saat_jax**: the step exactly as training builds it: the config of ``configs/paper.py`` (``at``,
  ``saat_up_e14_r1.7``, ``trades``; natural is ``base_config()`` with ``method='natural'``),
  ``make_optimizer`` / ``initial_state`` / ``make_train_step``, ``jax.jit(..., donate_argnums=0)``,
  called on a uint8 batch (the augmentation runs inside the step, as in training). Its FLOPs come
  from XLA's cost analysis of the compiled step (see "FLOPs" below).
* **PyTorch reference** (when torch is installed), on the same device kind, the same batch and the
  same network (``saat_jax.testing.torch_reference``; for PreAct ResNet-18 and WRN the JAX model
  starts from the torch model's weights): natural is Rice et al.'s step with ``delta = 0``; AT is
  Rice et al.'s ``attack_pgd`` (random start, 10 steps of 2/255 at 8/255, model in train mode,
  then the all-loss forward) and the SGD step; SAAT is the authors' released ``SAAT/main.py`` step
  (ChaojianYu/Strength-Adaptive-Adversarial-Training, commit e63ec5b): ``attack_pgd`` warm start,
  then its ``sa_pgd`` loop (per budget stage a loss forward pass, then K steps each followed by a
  forward pass that recomputes which examples are still below rho), then the SGD step; TRADES is
  yaodongyu/TRADES ``trades_loss`` (10 steps of 0.007 at 0.031 on the KL in eval mode, beta 6) and
  the SGD step. The reference's data loading and augmentation (done by DataLoader workers) are not
  timed; neither is Rice et al.'s logging forward pass after the step.

SAAT runs with ``--rho inf`` by default: every example then takes every step (PGD-10, then the
three stages 10, 12, 14/255 with K = 3), in both implementations, so the work is deterministic and
the same on both sides. ``--rho 1.7`` is the paper's value; on an untrained network every example
starts above it, so almost no SA-PGD step is taken.

Timing: the JAX step is compiled first (reported as ``compile_s``), then ``--warmup`` steps of each
side, then ``--steps`` timed steps, the two sides alternating (JAX, torch, JAX, torch, ...) so that
other load on the machine hits both alike; each JAX step ends with ``block_until_ready`` and each
CUDA torch step with ``torch.cuda.synchronize()``. Median and best step times are reported, with
images/s, TFLOP/s, and the ratio JAX time / PyTorch time (< 1: saat_jax faster) and its inverse.

FLOPs: XLA's ``cost_analysis()`` counts the body of a while loop once, whatever its trip count.
The step's attack loops (PGD's ``fori_loop``, SA-PGD's ``while_loop``, TRADES' ``fori_loop``) are
therefore added back: ``flops = xla_flops + sum over loops of (trips - 1) * body_flops``, where
``body_flops`` is the cost analysis of one attack pass (input gradient of the loss at the step's
batch shape, BatchNorm as the attack sees it) and SA-PGD's trips are read from the step's own
statistics. Whether this backend's cost analysis counts loop bodies once is checked on a small
loop first; where it counts every trip, no correction is made. Both numbers are recorded.

Mixed precision: ``--dtype float32 bfloat16`` builds one saat_jax step per compute dtype
(``config.model.dtype``; parameters, optimizer state and losses stay float32) and times them
alternately with the other sides; a result then holds ``jax`` (float32), ``jax_bfloat16`` and
``speedup_bfloat16_over_float32_median`` (float32 time / bfloat16 time, > 1: bf16 faster). The
PyTorch reference always runs in float32 (TF32 as torch's settings say, recorded).

  python benchmarks/train_throughput.py --quick --model small_cnn                  # smoke, < 1 min on a CPU
  python benchmarks/train_throughput.py --model preact_resnet18 --batch 128 --dtype float32 bfloat16 --skip-torch
  python benchmarks/train_throughput.py --model preact_resnet18 --batch 32 --methods saat at --steps 5
  python benchmarks/train_throughput.py --model preact_resnet18 --batch 128 512    # on a GPU
  python benchmarks/train_throughput.py --model wrn34_10 --batch 128 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchinfo  # noqa: E402

METHODS = ("natural", "at", "saat", "trades")
DTYPES = ("float32", "bfloat16")  # saat_jax.models.COMPUTE_DTYPES
MODELS = ("preact_resnet18", "wrn34_10", "small_cnn", "resnet18")
PAPER_ROWS = {"at": "at", "saat": "saat_up_e14_r1.7", "trades": "trades"}  # configs/paper.py:<row>
STEPS_PER_EPOCH = 50_000 // 128  # only sets the (irrelevant here) lr milestones of make_optimizer


# ------------------------------------------------------------------------------------------------
# saat_jax: the step as training builds it
# ------------------------------------------------------------------------------------------------


def jax_config(method: str, model: str, batch: int, rho: float, attack_bn, dtype: str = "float32"):
  from configs import paper
  from saat_jax.config_base import base_config
  from saat_jax.train import validate_config

  if method == "natural":
    c = base_config()
    c.method = "natural"
    c.experiment.row = "natural (base_config)"
  else:
    c = paper.get_config(PAPER_ROWS[method])
  c.model.name = model
  c.model.dtype = dtype
  c.batch_size = batch
  if method == "saat":
    c.saat.rho = float(rho)
  if attack_bn:
    c.attack_bn = attack_bn
  validate_config(c)
  return c


class JaxSide:
  """One method's compiled step, its state and its inputs."""

  def __init__(self, method, args, batch, images_u8, labels, torch_weights=None, dtype="float32"):
    import jax
    import numpy as np

    from saat_jax.models import create_model
    from saat_jax.train import initial_state, make_optimizer, make_train_step

    self.method, self.batch, self.dtype = method, batch, dtype
    self.key = "jax" if dtype == "float32" else f"jax_{dtype}"  # its entry in a result
    self.config = c = jax_config(method, args.model, batch, args.rho, args.attack_bn, dtype)
    self.model = create_model(args.model, 10, normalization="cifar10", dtype=dtype)
    self.tx, _ = make_optimizer(c, STEPS_PER_EPOCH)
    state = initial_state(self.model, self.tx, jax.random.key(0), (32, 32, 3))
    if torch_weights is not None:  # the torch model's initial weights, so both train the same net
      state = state.replace(params=jax.tree.map(jnp_array, torch_weights["params"]),
                            batch_stats=jax.tree.map(jnp_array, torch_weights.get("batch_stats", {})),
                            opt_state=self.tx.init(jax.tree.map(jnp_array, torch_weights["params"])))
    self.variables0 = jax.device_get(state.variables)  # for the FLOP count of one attack pass
    self.images = jax.device_put(images_u8)
    self.labels = jax.device_put(labels.astype(np.int32))
    self.keys = [jax.random.fold_in(jax.random.key(1), i) for i in range(args.warmup + args.steps + 1)]
    step = jax.jit(make_train_step(c, self.model.apply, self.tx, STEPS_PER_EPOCH), donate_argnums=0)
    t0 = time.perf_counter()
    self.compiled = step.lower(state, self.images, self.labels, self.keys[0]).compile()
    self.compile_s = time.perf_counter() - t0
    self.state = state
    self.i = 0
    self.last_metrics = None

  def step(self) -> float:
    import jax

    t0 = time.perf_counter()
    self.state, m = self.compiled(self.state, self.images, self.labels, self.keys[self.i % len(self.keys)])
    jax.block_until_ready((self.state, m))
    dt = time.perf_counter() - t0
    self.i += 1
    self.last_metrics = m
    return dt

  # -- FLOPs ----------------------------------------------------------------------------------

  def xla_flops(self):
    return cost_flops(self.compiled)

  def attack_loops(self):
    """``[(name, trips, body)]`` of the step's while loops; body in ("ce", "kl")."""
    import numpy as np

    c, loops = self.config, []
    if self.method == "at":
      loops.append(("pgd", int(c.at.steps), "ce"))
    elif self.method == "saat":
      pre = int(c.saat.start_steps) if c.saat.start == "pgd" else 0
      if pre:
        loops.append(("pgd warm start", pre, "ce"))
      steps = np.asarray(self.last_metrics["steps"]) if self.last_metrics is not None else None
      trips = int(steps.max()) - pre if steps is not None else None
      loops.append(("sa_pgd", trips, "ce"))
    elif self.method == "trades":
      loops.append(("trades_pgd", int(c.trades.steps), "kl"))
    return loops

  def body_flops(self, kind: str):
    """XLA FLOPs of one attack pass: the input gradient of the summed loss at this batch shape."""
    import jax
    import jax.numpy as jnp

    from saat_jax.losses import cross_entropy, kl_divergence
    from saat_jax.methods import AttackNet

    apply_fn, bn = self.model.apply, self.config.attack_bn
    x = jnp.zeros((self.batch, 32, 32, 3), jnp.float32)

    # Everything as arguments (as closure constants XLA would fold the weights' transposes); for
    # the KL, the natural logits are an input, as trades_pgd computes them once outside its loop.
    def f(variables, xa, y, logits_nat):
      net = AttackNet(apply_fn, variables, bn)
      if kind == "ce":
        return jax.grad(lambda v: jnp.sum(cross_entropy(net.logits(v), y)))(xa)
      return jax.grad(lambda v: jnp.sum(kl_divergence(logits_nat, net.logits(v))))(xa)

    logits_nat = jnp.zeros((self.batch, 10), jnp.float32)
    return cost_flops(jax.jit(f).lower(self.variables0, x, self.labels, logits_nat).compile())


def jnp_array(a):
  import jax.numpy as jnp

  return jnp.asarray(a)


def cost_flops(compiled):
  """'flops' of XLA's cost analysis of a compiled computation, or None where it has none."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - backends without a cost model raise various errors
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def loop_counting() -> dict:
  """How this backend's cost analysis counts a while loop: a 10-trip loop of a small conv pass
  against the pass alone, for a static-trip ``fori_loop`` and a data-dependent ``while_loop``."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  w = jnp.full((3, 3, 8, 8), 0.01, jnp.float32)
  x = jnp.ones((4, 8, 8, 8), jnp.float32)

  def body(v):
    return jnp.tanh(lax.conv_general_dilated(v, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

  one = cost_flops(jax.jit(body).lower(x).compile())
  fori = cost_flops(jax.jit(lambda v: lax.fori_loop(0, 10, lambda i, a: body(a), v)).lower(x).compile())

  def wl(v, n):
    return lax.while_loop(lambda s: s[1] < n, lambda s: (body(s[0]), s[1] + 1), (v, 0))[0]

  whl = cost_flops(jax.jit(wl).lower(x, 10).compile())
  if not one or fori is None or whl is None:
    return {"available": False}
  return {"available": True, "fori_loop_10_over_body": fori / one, "while_loop_10_over_body": whl / one,
          "fori_counts_body_once": fori / one < 2.0, "while_counts_body_once": whl / one < 2.0}


def step_flops(side: JaxSide, counting: dict) -> dict:
  raw = side.xla_flops()
  out = {"xla_flops": raw, "loops": []}
  if raw is None or not counting.get("available"):
    out["flops_per_step"] = None
    out["note"] = "XLA's cost analysis gave no 'flops' on this backend"
    return out
  total, bodies = raw, {}
  for name, trips, kind in side.attack_loops():
    once = counting["while_counts_body_once"] if name == "sa_pgd" else counting["fori_counts_body_once"]
    if kind not in bodies:
      bodies[kind] = side.body_flops(kind)
    body = bodies[kind]
    rec = {"loop": name, "trips": trips, "body": f"input gradient of the {kind.upper()} loss",
           "body_flops": body, "xla_counted_body_once": once}
    if trips is None or body is None:
      out["flops_per_step"] = None
      out["loops"].append(rec)
      return out
    if once:
      total += (trips - 1) * body
    out["loops"].append(rec)
  out["flops_per_step"] = total
  return out


# ------------------------------------------------------------------------------------------------
# PyTorch: the reference steps, transcribed
# ------------------------------------------------------------------------------------------------


def torch_small_cnn():
  """The Flax ``SmallCNN`` (width 32, BatchNorm) in PyTorch: same layers and sizes."""
  import torch
  from torch import nn

  from saat_jax.models import NORMALIZATIONS
  from saat_jax.testing.torch_reference import Normalized

  net = nn.Sequential(
      nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
      nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
      nn.Flatten(), nn.Linear(64 * 16 * 16, 128), nn.ReLU(), nn.Linear(128, 10))
  mean, std = NORMALIZATIONS["cifar10"]
  del torch
  return Normalized(net, mean, std)


def _clamp(X, lower_limit, upper_limit):
  import torch

  return torch.max(torch.min(X, upper_limit), lower_limit)


def attack_pgd(model, X, y, epsilon, alpha, attack_iters, restarts):
  """Rice et al. ``attack_pgd`` (l_inf, no early stop), as ``SAAT/main.py`` copies it. ``model``
  normalises its input itself (the reference writes ``model(normalize(X + delta))``)."""
  import torch
  import torch.nn.functional as F

  upper_limit, lower_limit = 1, 0
  max_loss = torch.zeros(y.shape[0], device=X.device)
  max_delta = torch.zeros_like(X)
  for _ in range(restarts):
    delta = torch.zeros_like(X)
    delta.uniform_(-epsilon, epsilon)
    delta = _clamp(delta, lower_limit - X, upper_limit - X)
    delta.requires_grad = True
    index = slice(None, None, None)
    for _ in range(attack_iters):
      output = model(X + delta)
      loss = F.cross_entropy(output, y)
      loss.backward()
      grad = delta.grad.detach()
      d = delta[index, :, :, :]
      g = grad[index, :, :, :]
      x = X[index, :, :, :]
      d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon, max=epsilon)
      d = _clamp(d, lower_limit - x, upper_limit - x)
      delta.data[index, :, :, :] = d
      delta.grad.zero_()
    all_loss = F.cross_entropy(model(X + delta), y, reduction="none")
    max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
    max_loss = torch.max(max_loss, all_loss)
  return max_delta


def sa_pgd_released(model, X, y, alpha, restarts, PGD_delta, *, rho=1.7, eps_start=8 / 255.,
                    eps_max=14 / 255., tau=2 / 255., K=3):
  """``sa_pgd`` of the released ``SAAT/main.py`` (l_inf), its constants as arguments (the release
  hard-codes rho 1.7, the 8/255 start, eps_max 14/255, tau 2/255, K 3)."""
  import torch
  import torch.nn.functional as F

  upper_limit, lower_limit = 1, 0
  max_loss = torch.zeros(y.shape[0], device=X.device)
  max_delta = torch.zeros_like(X)
  for _ in range(restarts):
    delta = PGD_delta.clone()
    delta = _clamp(delta, lower_limit - X, upper_limit - X)
    delta.requires_grad = True
    ii = eps_start
    epsilon_work = 0 / 255.
    epsilon_max = eps_max
    while ii < epsilon_max:
      output = model(X + delta)
      loss = F.cross_entropy(output, y, reduction="none")
      index = torch.where(loss < rho)[0]
      if len(index) == 0:
        break
      ii = ii + tau
      epsilon_work = ii if ii < epsilon_max else epsilon_max
      for _ in range(K):
        output = model(X + delta)
        loss = F.cross_entropy(output, y)
        loss.backward()
        grad = delta.grad.detach()
        d = delta[index, :, :, :]
        g = grad[index, :, :, :]
        x = X[index, :, :, :]
        d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon_work, max=epsilon_work)
        d = _clamp(d, lower_limit - x, upper_limit - x)
        delta.data[index, :, :, :] = d
        delta.grad.zero_()
        output = model(X + delta)
        loss = F.cross_entropy(output, y, reduction="none")
        index = torch.where(loss < rho)[0]
        if len(index) == 0:
          break
    all_loss = F.cross_entropy(model(X + delta), y, reduction="none")
    max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
    max_loss = torch.max(max_loss, all_loss)
  return max_delta


def trades_loss(model, x_natural, y, optimizer, step_size=0.003, epsilon=0.031, perturb_steps=10, beta=1.0):
  """yaodongyu/TRADES ``trades_loss`` (l_inf branch); ``KLDivLoss(size_average=False)`` is
  ``reduction='sum'``."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  criterion_kl = nn.KLDivLoss(reduction="sum")
  model.eval()
  batch_size = len(x_natural)
  x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape, device=x_natural.device).detach()
  for _ in range(perturb_steps):
    x_adv.requires_grad_()
    with torch.enable_grad():
      loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
    grad = torch.autograd.grad(loss_kl, [x_adv])[0]
    x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
  model.train()
  x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
  optimizer.zero_grad()
  logits = model(x_natural)
  loss_natural = F.cross_entropy(logits, y)
  loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                  F.softmax(model(x_natural), dim=1))
  return loss_natural + beta * loss_robust


TORCH_STEPS = {
    "natural": "Rice et al. train_cifar.py with --attack none: forward at clamp(X + 0), CE, SGD step",
    "at": "Rice et al. attack_pgd (8/255, 2/255, 10 iters, 1 restart, random start, train mode; 10 "
          "forward+backward passes, weight gradients included, then the all-loss forward) + SGD step",
    "saat": "released SAAT/main.py: attack_pgd warm start as AT, then sa_pgd (per stage 10, 12, 14/255: one "
            "loss forward, then K=3 x [forward+backward, forward]; then the all-loss forward) + SGD step",
    "trades": "yaodongyu/TRADES trades_loss (eval mode: 10 x [2 forwards + input-gradient backward]; then 3 "
              "train-mode forwards) + backward + SGD step (train_trades_cifar10.py)",
}


class TorchSide:
  def __init__(self, method, args, batch, x_float, labels, net, device):
    import torch

    self.torch, self.method, self.args, self.device = torch, method, args, device
    self.model = net
    self.model.train()
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    self.X = torch.from_numpy(x_float.transpose(0, 3, 1, 2).copy()).to(device)
    self.y = torch.from_numpy(labels.astype("int64")).to(device)
    self.cuda = str(device).startswith("cuda")

  def _step(self):
    import torch.nn.functional as F

    torch, model, X, y, opt = self.torch, self.model, self.X, self.y, self.opt
    if self.method == "trades":
      model.train()
      opt.zero_grad()
      loss = trades_loss(model, X, y, opt, step_size=0.007, epsilon=0.031, perturb_steps=10, beta=6.0)
      loss.backward()
      opt.step()
      return
    model.train()
    if self.method == "natural":
      delta = torch.zeros_like(X)
    else:
      delta = attack_pgd(model, X, y, 8 / 255., 2 / 255., 10, 1).detach()
      if self.method == "saat":
        delta = sa_pgd_released(model, X, y, 2 / 255., 1, PGD_delta=delta, rho=self.args.rho).detach()
    robust_output = model(torch.clamp(X + delta[:X.size(0)], min=0, max=1))
    robust_loss = F.cross_entropy(robust_output, y, reduction="none").mean()
    opt.zero_grad()
    robust_loss.backward()
    opt.step()

  def step(self) -> float:
    t0 = time.perf_counter()
    self._step()
    if self.cuda:
      self.torch.cuda.synchronize()
    return time.perf_counter() - t0


def build_torch_net(model_name: str):
  """``(torch module, flax variables of its initial weights or None)``."""
  import numpy as np

  if model_name == "small_cnn":
    return torch_small_cnn(), None
  from saat_jax.models import convert_state_dict
  from saat_jax.testing.torch_reference import build_torch_model

  net = build_torch_model(model_name, 10, normalization="cifar10")
  sd = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
  variables = convert_state_dict(sd, model_name, 10)
  return net, jax_tree_to_numpy(variables, np)


def jax_tree_to_numpy(tree, np):
  if isinstance(tree, dict):
    return {k: jax_tree_to_numpy(v, np) for k, v in tree.items()}
  return np.asarray(tree)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def summarize(times, batch, flops=None, peaks=None):
  med, best = statistics.median(times), min(times)
  out = {"step_s": [round(t, 6) for t in times], "median_s": med, "best_s": best,
         "images_per_s": batch / med, "images_per_s_best": batch / best}
  if flops:
    out["tflops_per_s"] = flops / med / 1e12
    out["tflops_per_s_best"] = flops / best / 1e12
    if peaks:
      out["fraction_of_peak"] = {k: out["tflops_per_s"] / v for k, v in peaks.items()
                                 if isinstance(v, float)}
  return out


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="preact_resnet18", help=f"one of {MODELS}")
  ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 128; --quick: 8)")
  ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"any of {METHODS}")
  ap.add_argument("--rho", type=float, default=float("inf"),
                  help="SAAT's rho (default inf: every example takes every step; the paper's row uses 1.7)")
  ap.add_argument("--attack-bn", default=None, choices=("train", "train_update", "eval"),
                  help="override the configs' attack_bn (default: as training: train for AT/SAAT, eval for TRADES)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps per side after compiling (default 2)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps per side (default 5)")
  ap.add_argument("--skip-torch", action="store_true", help="time saat_jax only")
  ap.add_argument("--skip-jax", action="store_true", help="time the PyTorch reference only")
  ap.add_argument("--torch-device", default=None, help="cuda or cpu (default: cuda when torch sees a GPU)")
  ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
  ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the fraction of peak")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: batch 8, 1 warm-up and 2 timed steps, torch on 1 thread unless "
                  "--torch-threads; result not saved unless --out")
  ap.add_argument("--dtype", nargs="+", default=["float32"], choices=DTYPES,
                  help="saat_jax compute dtype(s) (config.model.dtype), each timed alternately with the "
                  "others; float32 and bfloat16 together give the bf16 speed-up")
  ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_throughput_<...>.json)")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  args.model = args.model.lower().replace("-", "_")
  if args.model not in MODELS:
    ap.error(f"unknown model {args.model!r}; use one of {', '.join(MODELS)}")
  methods = [m.lower() for s in args.methods for m in s.split(",") if m]
  bad = [m for m in methods if m not in METHODS]
  if bad:
    ap.error(f"unknown method(s) {bad}; use any of {', '.join(METHODS)} (SAAT is 'saat')")
  args.methods = methods
  args.dtype = list(dict.fromkeys(args.dtype))
  if args.skip_jax and args.skip_torch:
    ap.error("--skip-jax and --skip-torch together leave nothing to time")
  if not (args.rho > 0 or math.isinf(args.rho)):
    ap.error(f"--rho must be > 0, got {args.rho}")
  args.batch = args.batch or ([8] if args.quick else [128])
  if any(b < 1 for b in args.batch):
    ap.error(f"--batch must be >= 1, got {args.batch}")
  args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
  args.steps = args.steps if args.steps is not None else (2 if args.quick else 5)
  if args.steps < 1 or args.warmup < 0:
    ap.error("need --steps >= 1 and --warmup >= 0")
  return args


def main(argv=None):
  args = parse_args(argv)
  want_torch = not args.skip_torch
  if want_torch:
    try:
      import torch
    except ImportError:
      print("torch is not installed: timing saat_jax only (pip install torch==2.13.0 for the reference)")
      want_torch = False
  if want_torch:
    torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch_device.startswith("cuda"):
      # JAX would otherwise take 75% of the GPU's memory before torch allocates anything.
      os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    if args.torch_threads or args.quick:
      # --quick: one thread, since two OpenMP threads on a loaded 2-core machine can make small ops
      # 20x slower (threads spinning at barriers while the other core runs someone else's job)
      torch.set_num_threads(args.torch_threads or 1)
    torch.manual_seed(args.seed)
  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  warnings.filterwarnings("ignore", message=".*size_average.*")

  import jax
  import numpy as np

  dev = benchinfo.device_info()
  peaks = benchinfo.peak_tflops(dev["jax_device_kind"], args.peak_tflops)
  record = {
      "benchmark": "train_throughput", "created": benchinfo.now_utc(), "command": benchinfo.command_line(),
      "model": args.model, "batches": args.batch, "methods": args.methods, "dtypes": args.dtype,
      "rho": "inf" if math.isinf(args.rho) else args.rho, "attack_bn_override": args.attack_bn,
      "warmup_steps": args.warmup, "timed_steps": args.steps, "quick": args.quick,
      "device": dev, "peak_tflops": peaks, "versions": benchinfo.versions(), "git": benchinfo.git_state(),
      "threads": benchinfo.threads_info(), "load_before": benchinfo.loadavg(),
      "reference": {"source": {
          "at": "locuslab/robust_overfitting train_cifar.py attack_pgd (as copied in SAAT/main.py)",
          "saat": "ChaojianYu/Strength-Adaptive-Adversarial-Training SAAT/main.py (commit e63ec5b), sa_pgd "
                  "written from the released code",
          "trades": "yaodongyu/TRADES trades.py trades_loss + train_trades_cifar10.py train()"},
          "steps": {m: TORCH_STEPS[m] for m in args.methods},
          "device": torch_device if want_torch else None},
      "results": [],
  }
  if want_torch:
    record["reference"]["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                         "cudnn": torch.backends.cudnn.allow_tf32,
                                         "cudnn_benchmark": torch.backends.cudnn.benchmark}
  record["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
  out_path = args.out
  if out_path is None and not args.quick:
    dtypes = "" if args.dtype == ["float32"] else "_" + "-".join(args.dtype)
    out_path = os.path.join(ROOT, "benchmarks", "results",
                            f"train_throughput_{dev['jax_platform']}_{args.model}_b{'-'.join(map(str, args.batch))}"
                            f"{dtypes}_{benchinfo.stamp()}.json")
  counting = loop_counting() if not args.skip_jax else {}
  record["xla_loop_counting"] = counting
  print(f"device: {dev['jax_device_kind']} ({dev['jax_platform']}); CPU {dev['cpu_model']}; "
        f"torch on {record['reference']['device']}; load {record['load_before']}", flush=True)

  rng = np.random.RandomState(args.seed)
  for batch in args.batch:
    images = rng.randint(0, 256, (batch, 32, 32, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, (batch,)).astype(np.int32)
    x_float = images.astype(np.float32) / np.float32(255)
    for method in args.methods:
      res = {"method": method, "batch": batch}
      net = weights = None
      if want_torch:
        net, weights = build_torch_net(args.model)
        net = net.to(torch_device)
        res["same_initial_weights"] = weights is not None and not args.skip_jax
      js = ts = None
      jax_sides = []
      try:
        if not args.skip_jax:
          jax_sides = [JaxSide(method, args, batch, images, labels, torch_weights=weights, dtype=d)
                       for d in args.dtype]
          js = jax_sides[0]
          res["config"] = {"row": js.config.experiment.row or None, "method": js.config.method,
                           "attack_bn": js.config.attack_bn}
          if method == "saat":
            s = js.config.saat
            res["config"]["saat"] = {"rho": "inf" if math.isinf(s.rho) else s.rho, "start": s.start,
                                     "eps_max_255": round(s.eps_max * 255, 3), "tau_255": round(s.tau * 255, 3),
                                     "k": s.k, "start_steps": s.start_steps}
        if want_torch:
          ts = TorchSide(method, args, batch, x_float, labels, net, torch_device)
        sides = jax_sides + ([ts] if ts is not None else [])
        for _ in range(args.warmup):
          for s in sides:
            s.step()
        times = {id(s): [] for s in sides}
        load = []
        for k in range(args.steps):
          for s in sides:
            times[id(s)].append(s.step())
          load.append(benchinfo.loadavg())
          if not args.quick:
            print(f"  {method} b{batch} timed step {k + 1}/{args.steps}: "
                  + ", ".join(f"{getattr(s, 'key', 'torch')} {times[id(s)][-1]:.3f} s" for s in sides)
                  + f"; load {load[-1]}", flush=True)
        res["load_during"] = load
        for side in jax_sides:
          fl = step_flops(side, counting)
          j = res[side.key] = {"dtype": side.dtype, "compile_s": side.compile_s, **fl,
                               **summarize(times[id(side)], batch, fl.get("flops_per_step"), peaks)}
          steps = np.asarray(side.last_metrics["steps"])
          j["attack_steps_per_example"] = {"mean": float(steps.mean()), "max": int(steps.max())}
          j["loss_last_step"] = float(side.last_metrics["loss"])
        if ts is not None:
          res["torch"] = summarize(times[id(ts)], batch)
          for side in jax_sides:
            j, t = res[side.key], res["torch"]
            res[f"ratio_{side.key}_over_torch_median"] = j["median_s"] / t["median_s"]
            res[f"ratio_{side.key}_over_torch_best"] = j["best_s"] / t["best_s"]
            res[f"speedup_torch_over_{side.key}_median"] = t["median_s"] / j["median_s"]
            res[f"speedup_torch_over_{side.key}_best"] = t["best_s"] / j["best_s"]
        if "jax" in res and "jax_bfloat16" in res:
          f32, bf16 = res["jax"], res["jax_bfloat16"]
          res["speedup_bfloat16_over_float32_median"] = f32["median_s"] / bf16["median_s"]
          res["speedup_bfloat16_over_float32_best"] = f32["best_s"] / bf16["best_s"]
      except Exception as e:  # noqa: BLE001 - keep the other methods' results, record this failure
        import traceback

        traceback.print_exc()
        res["error"] = f"{type(e).__name__}: {e}"
      finally:
        del js, ts, net, jax_sides
        if want_torch and torch_device.startswith("cuda"):
          torch.cuda.empty_cache()
      record["results"].append(res)
      print_row(res, flush=True)
      if out_path:
        record["load_after"] = benchinfo.loadavg()
        benchinfo.write_json(out_path, record)
  record["load_after"] = benchinfo.loadavg()
  if out_path:
    benchinfo.write_json(out_path, record)
    print(f"wrote {os.path.relpath(out_path)}")
  else:
    print("quick run: not saved (pass --out to keep it)")
  return 1 if any("error" in r for r in record["results"]) else 0


def print_row(res, flush=False):
  head = f"{res['method']:>8} b{res['batch']:<4}"
  if "error" in res:
    print(f"{head} ERROR {res['error']}", flush=flush)
    return
  parts = []
  for key in [k for k in res if k == "jax" or k.startswith("jax_")]:
    j = res[key]
    tf = f", {j['tflops_per_s']:.3g} TFLOP/s" if j.get("tflops_per_s") else ""
    parts.append(f"{key} {j['median_s']:.4g} s (best {j['best_s']:.4g}, {j['images_per_s']:.4g} img/s{tf}; "
                 f"compile {j['compile_s']:.1f} s)")
  if "torch" in res:
    t = res["torch"]
    parts.append(f"torch {t['median_s']:.4g} s (best {t['best_s']:.4g}, {t['images_per_s']:.4g} img/s)")
  if "ratio_jax_over_torch_median" in res:
    parts.append(f"jax/torch {res['ratio_jax_over_torch_median']:.3f} (best {res['ratio_jax_over_torch_best']:.3f}), "
                 f"speedup {res['speedup_torch_over_jax_median']:.3f}")
  if "speedup_bfloat16_over_float32_median" in res:
    parts.append(f"bf16 speed-up {res['speedup_bfloat16_over_float32_median']:.3f} "
                 f"(best {res['speedup_bfloat16_over_float32_best']:.3f})")
  print(head + " | ".join(parts), flush=flush)


if __name__ == "__main__":
  sys.exit(main())
