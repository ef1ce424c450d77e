"""The run configurations: the training recipe of Sec. 4.1 (after Rice et al. 2020) and its variants.

:func:`base_config` is that recipe. The experiment configs in ``configs/`` are short files that
call the builders here and change what their experiment changes, so that a config file loaded by
path (``saat-train --config /anywhere/configs/saat_cifar10.py``) needs only ``saat_jax``:

* :func:`paper_config`: every experiment of the paper by row (``configs/paper.py:<row>``);
* :func:`saat_digits_config`: SAAT on scikit-learn's 8x8 digits (``configs/saat_digits.py``);
* :func:`digits_config`: every method on digits (``configs/digits.py:<method>``).

Budgets are in pixel units of [0, 1] images (8/255).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from saat_jax.methods import method_def, method_sections
from saat_jax.paper import get_row


def base_config() -> ml_collections.ConfigDict:
  """The recipe of Sec. 4.1. Each key's comment is its documentation: ``saat-train --config_help``
  prints it (:mod:`saat_jax.config_help`), so a new key gets one on its line or just above it."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # the parameters' init, the batch order, augmentation and attack starts; --config.seed=N
  c.method = "saat"  # a registered method (saat_jax.methods.METHODS): natural | at | saat | trades | sa_trades
  # Which experiment of the paper this run is (configs/paper.py sets it; the report groups by it).
  c.experiment = ml_collections.ConfigDict()
  c.experiment.row = ""  # an id of saat_jax.paper.ROWS, e.g. saat_up_e14_r1.7; '' for other runs
  c.experiment.label = ""  # the run's name in reports and plots, e.g. 'SAAT_up (eps_max=14, rho=1.7)'

  # The data set, where it comes from, and its augmentation (saat_jax.data).
  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"  # cifar10 | cifar100 | digits (scikit-learn's 8x8 digits, for CPU runs)
  # A local CIFAR archive or folder (--config.data.data_dir=...); None: with source auto, the
  # official archive, downloaded once into the cache (saat_jax.data.download).
  c.data.data_dir = ml_collections.config_dict.placeholder(str)
  # auto: data_dir if given, else the official archive | local: data_dir | download | tfds
  c.data.source = "auto"
  c.data.download_url = ml_collections.config_dict.placeholder(str)  # None: the official address
  c.data.download_md5 = ml_collections.config_dict.placeholder(str)  # None: the official archive's
  c.data.cache_dir = ml_collections.config_dict.placeholder(str)  # None: $SAAT_JAX_CACHE or ~/.cache/saat_jax
  c.data.num_train = 0  # > 0: train on the first N training examples only (quick runs)
  c.data.val_size = 0  # > 0 holds out training examples to choose `best` (robust_overfitting)
  c.data.augment = True  # random crop after padding + horizontal flip, on the device
  c.data.pad = 4  # pixels of padding before the random 32x32 crop
  c.data.pad_mode = "reflect"  # reflect (Rice et al., the released SAAT code) | zero (torchvision)
  c.data.flip = True  # random horizontal flips (with augment)

  # The network (saat_jax.models).
  c.model = ml_collections.ConfigDict()
  c.model.name = "preact_resnet18"  # preact_resnet18 | resnet18 | wrn34_<x> (e.g. wrn34_10) | small_cnn
  c.model.normalization = "cifar10"  # none | cifar10 | cifar100: input mean/std inside the model, as the released code
  c.model.kwargs = ml_collections.ConfigDict()  # passed to the model, e.g. small_cnn's width
  # Compute dtype: float32 | bfloat16 (mixed precision: parameters, optimizer state, BatchNorm
  # statistics, losses and the attacks' inputs and perturbations stay float32; saat_jax.models).
  c.model.dtype = "float32"

  # The sections the training methods own (config.at, config.saat, config.trades, config.sa_trades,
  # and any registered since): each method's defaults and their comments are in its file in
  # saat_jax/methods/ (saat_jax.methods.MethodDef).
  for section, defaults in method_sections().items():
    c[section] = defaults

  # AWP (Wu et al. 2020; csdongxian/AWP): gamma 0 is off; AWP-AT: gamma 0.01, proxy lr 0.01, no
  # warm-up; AWP-TRADES: gamma 5e-3, proxy lr = the lr (0.1), 9 epochs without AWP (the reference's
  # epoch >= 10, counted from 1).
  c.awp = ml_collections.ConfigDict()
  c.awp.gamma = 0.0  # the weight perturbation's size relative to each weight's norm; 0: no AWP
  c.awp.proxy_lr = 0.01  # the proxy SGD step that finds the perturbation
  c.awp.warmup = 0  # epochs without AWP first

  # EMA of the weights (beyond the paper; Gowal et al. 2020).
  c.ema = ml_collections.ConfigDict()
  c.ema.decay = 0.0  # 0 is off, e.g. 0.999 per step

  # train: the attack sees BatchNorm on batch statistics, running statistics untouched;
  # train_update: and every attack pass updates them (the PyTorch code's side effect); eval.
  c.attack_bn = "train"

  c.num_epochs = 200  # epochs; a finished run resumes for more when this is raised
  c.batch_size = 128  # the global batch, split over every device
  # SGD, momentum 0.9, weight decay 5e-4 (added to the gradient as torch.optim.SGD), lr 0.1 divided
  # by 10 at epochs 100 and 150 of 200.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1  # the initial learning rate
  c.optim.momentum = 0.9  # SGD momentum (0: none)
  c.optim.weight_decay = 5e-4  # L2, added to the gradient
  c.optim.lr_milestones = (100, 150)  # in epochs (fractions allowed)
  c.optim.lr_decay = 0.1  # the lr is multiplied by this at each milestone

  # Per-epoch evaluation: natural and PGD-20 (eps 8/255, alpha 2/255, random start).
  c.eval = ml_collections.ConfigDict()
  c.eval.eps = 8 / 255  # the test budget
  c.eval.alpha = 2 / 255  # PGD's step size
  c.eval.steps = 20  # PGD steps (PGD-20, which selects `best`)
  c.eval.batch_size = 500  # the evaluation's global batch, split over every device
  c.eval.num_test = 0  # 0: the full test set
  c.eval.select_best_on = "test"  # test (as the paper and Rice et al.) | val (needs data.val_size)
  c.eval.best_weights = "raw"  # raw | ema (needs ema.decay): whose PGD-20 accuracy picks `best`
  # First N training images (no augmentation) evaluated every epoch: training robust accuracy, for
  # the robust generalisation gap of Figure 3(d).
  c.eval.train_subset = 1000
  # Evaluate (test, val, trainsub) every N epochs and always at the last one; epochs in between
  # record no test metrics and cannot become `best`. 1: every epoch, as the paper.
  c.eval.every = 1
  # The per-epoch evaluators, as big_vision's config.evals: {name: {type: ..., <settings>}}, types of
  # saat_jax.evaluators (robustness, autoattack, sweep, or one added by register_evaluator). A
  # setting an entry leaves out is read from eval (eps, alpha, steps, batch_size), else the type's
  # default; each yields <split>_<name> records (test_natural_accuracy) on test, val and trainsub.
  c.evals = ml_collections.ConfigDict()
  # Natural and PGD-<eval.steps> accuracy with eval's eps, alpha and batch_size: test_natural_accuracy,
  # test_pgd_accuracy (which selects `best`), val_..., trainsub_..., ema_...
  c.evals.robustness = ml_collections.ConfigDict()
  c.evals.robustness.type = "robustness"  # natural + PGD-k (saat_jax.evaluators.builtin)

  c.progress = True  # a progress bar per epoch (process 0)
  c.check_every = 20  # steps between NaN checks / progress updates
  # The input path (results identical either way; tests/test_device_data.py): the uint8 training set
  # kept on the devices and each batch gathered there (one small index array per step crosses from
  # the host).
  c.data_on_device = False
  # Steps run in one jitted lax.scan (the epoch's remainder in one shorter dispatch); results agree
  # to float32 rounding.
  c.steps_per_dispatch = 1
  # A checkpoint of the position inside the epoch every N steps (0: only at SIGTERM and at epoch
  # ends), for epochs longer than the time a preemption gives.
  c.checkpoint_every_steps = 0
  # Resuming a work dir with a config that changes the training trajectory (method, lr, data, ...)
  # is refused unless this is True; the change is then recorded in <workdir>/configs.jsonl.
  c.allow_config_change = False
  return c


def paper_config(row: str = "saat_up_e14_r1.7") -> ml_collections.ConfigDict:
  """The run of the paper's experiment ``row`` (a key of :data:`saat_jax.paper.ROWS`).

  :func:`base_config` (Sec. 4.1) with the row's method, model, data set and budgets. Where the
  paper is silent this follows the authors' released code, csdongxian/AWP and yaodongyu/TRADES;
  ``configs/paper.py``'s docstring lists each choice. An unknown row raises ``ValueError`` with
  the close matches (:func:`saat_jax.paper.get_row`).
  """
  r = get_row(row)
  c = base_config()
  c.experiment.row = r.id
  c.experiment.label = r.label
  c.method = r.method
  c.model.name = r.model
  c.data.name = r.dataset
  c.model.normalization = r.dataset
  if r.method == "at":
    eps = (r.train_eps_255 or 8.0) / 255
    c.at.eps, c.at.alpha = eps, eps / 4  # Figure 1(b): step N/4 /255 (8 -> 2/255, as AT)
  m = method_def(r.method)
  if m.uses_sa_pgd:
    c.saat.eps_max = r.eps_max_255 / 255
    c.saat.rho = r.rho
    # SAAT_up: the released code's PGD-10 warm start; SAAT_down and the sweeps: Algorithm 1.
    c.saat.start = "pgd" if "_up" in r.id else "zero"
  if m.family == "TRADES":
    c.attack_bn = "eval"
    if r.awp:
      c.trades.eps, c.trades.alpha = 8 / 255, 2 / 255  # csdongxian/AWP trades_AWP/train_trades_cifar.py
  if r.awp:
    if m.family == "TRADES":
      # trades_AWP/train_trades_cifar.py: --awp-warmup 10, `for epoch in range(1, epochs + 1)` and
      # `if epoch >= args.awp_warmup`: AWP from the 10th epoch on, i.e. 9 epochs without it
      # (awp.warmup counts the epochs without AWP).
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 5e-3, c.optim.lr, 9
    else:
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 0.01, 0.01, 0
  return c


def saat_digits_config() -> ml_collections.ConfigDict:
  """SAAT (Algorithm 1's start) on scikit-learn's 8x8 digits with a small CNN (``configs/saat_digits.py``).

  Not an experiment of the paper: a minute-long CPU run of the same pipeline. Digits are
  high-contrast images, so the budgets are larger than CIFAR's: eps_max 64/255 by tau 8/255 with
  K = 3 steps of alpha 8/255, rho 1.0; AT and evaluation at 32/255. No augmentation (flipping a
  digit changes its class).
  """
  config = base_config()
  config.method = "saat"
  config.data.name = "digits"
  # Digits come with scikit-learn: no data_dir. A str placeholder (None), so that
  # --config.data.data_dir=... still parses (training then says it is ignored).
  config.data.data_dir = config_dict.placeholder(str)
  config.data.augment = False
  config.model.name = "small_cnn"
  config.model.normalization = "none"
  config.saat.rho = 1.0
  config.saat.eps_max = 64 / 255
  config.saat.tau = 8 / 255
  config.saat.k = 3
  config.saat.alpha = 8 / 255
  config.at.eps = 32 / 255
  config.at.alpha = 8 / 255
  config.num_epochs = 15
  config.batch_size = 64
  config.optim.lr = 0.05
  config.optim.lr_milestones = (10, 13)
  config.eval.eps = 32 / 255
  config.eval.alpha = 8 / 255
  config.eval.steps = 20
  config.eval.batch_size = 400
  return config


# The methods of configs/digits.py; each robust one also as awp_<method>.
DIGITS_METHODS = ("natural", "at", "saat_down", "saat_up", "trades", "sa_trades_up")


def digits_config(method: str = "saat_up") -> ml_collections.ConfigDict:
  """``method`` (:data:`DIGITS_METHODS` or ``awp_<method>``) on digits (``configs/digits.py:<method>``).

  :func:`saat_digits_config` with every CIFAR budget scaled by 4 (8/255 -> 32/255, steps 2/255 ->
  8/255): SAAT_down grows from 0 to 32/255 with rho 1.5; SAAT_up and SA-TRADES_up start at the
  32/255 attack and grow by 8/255 to 56/255 (CIFAR's 14/255) with rho 1.7; AWP with the paper's
  gammas (0.01 for AT/SAAT, 5e-3 for TRADES with a 2-epoch warm-up, scaled from 10 of 200). An
  unknown method raises ``ValueError`` listing the known ones.
  """
  base = method[len("awp_"):] if method.startswith("awp_") else method
  known = DIGITS_METHODS + tuple(f"awp_{m}" for m in DIGITS_METHODS[1:])
  if base not in DIGITS_METHODS or method == "awp_natural":
    raise ValueError(f"configs/digits.py: unknown method {method!r}; use one of {', '.join(known)}")
  c = saat_digits_config()
  c.experiment.label = f"digits {method}"
  c.at.eps, c.at.alpha = 32 / 255, 8 / 255
  c.trades.eps, c.trades.alpha, c.trades.steps = 32 / 255, 8 / 255, 10
  c.saat.tau = c.saat.alpha = c.saat.start_alpha = 8 / 255
  c.saat.start_eps = 32 / 255
  c.method = {"saat_down": "saat", "saat_up": "saat", "sa_trades_up": "sa_trades"}.get(base, base)
  if base == "saat_down":
    c.saat.eps_max, c.saat.rho, c.saat.start = 32 / 255, 1.5, "zero"
  elif base in ("saat_up", "sa_trades_up"):
    c.saat.eps_max, c.saat.rho, c.saat.start = 56 / 255, 1.7, "pgd"
  trades_family = method_def(c.method).family == "TRADES"
  if trades_family:
    c.attack_bn = "eval"
  if method.startswith("awp_"):
    if trades_family:
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 5e-3, c.optim.lr, 2
    else:
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 0.01, 0.01, 0
  return c
