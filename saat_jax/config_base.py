"""The default run configuration: the training recipe of Sec. 4.1 (after Rice et al. 2020).

Experiment configs in ``configs/`` start from :func:`base_config` and change what their
experiment changes. Budgets are in pixel units of [0, 1] images (8/255).
"""

from __future__ import annotations

import ml_collections

def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "saat"  # natural | at | saat | trades | sa_trades (saat_jax.methods)
  # Which experiment of the paper this run is (configs/paper.py sets it; the report groups by it).
  c.experiment = ml_collections.ConfigDict(dict(row="", label=""))

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  # A CIFAR archive or folder; None: the experiment config says where (configs/paper.py), or
  # --config.data.data_dir=..., or data.source=download. The library knows no location.
  c.data.data_dir = ml_collections.config_dict.placeholder(str)
  c.data.source = "auto"  # auto / local (data_dir) | download (official archive, cached) | tfds
  c.data.download_url = ml_collections.config_dict.placeholder(str)  # None: the official address
  c.data.cache_dir = ml_collections.config_dict.placeholder(str)
  c.data.num_train = 0  # > 0: train on the first N training examples only (quick runs)
  c.data.val_size = 0  # > 0 holds out training examples to choose `best` (robust_overfitting)
  c.data.augment = True  # random crop with 4 px padding + horizontal flip, on device
  c.data.pad = 4
  c.data.pad_mode = "reflect"  # reflect (Rice et al., the released SAAT code) | zero (torchvision)
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "preact_resnet18"
  c.model.normalization = "cifar10"  # inside the model, as the released SAAT code
  c.model.kwargs = ml_collections.ConfigDict()
  # Compute dtype: float32 | bfloat16 (mixed precision: parameters, optimizer state, BatchNorm
  # statistics, losses and the attacks' inputs and perturbations stay float32; saat_jax.models).
  c.model.dtype = "float32"

  # Standard AT: PGD-10, eps 8/255, alpha 2/255, uniform random start (Madry et al.; Rice et al.).
  c.at = ml_collections.ConfigDict(dict(eps=8 / 255, alpha=2 / 255, steps=10))

  # SA-PGD (Algorithm 1) and its hyper-parameters from Sec. 4.1.
  c.saat = ml_collections.ConfigDict()
  c.saat.rho = 1.5
  c.saat.eps_max = 14 / 255
  c.saat.tau = 2 / 255
  c.saat.k = 3
  c.saat.alpha = 2 / 255
  c.saat.start = "zero"  # zero: Algorithm 1 (x' = x, eps = 0) | pgd: the released code's warm start
  c.saat.start_eps = 8 / 255
  c.saat.start_alpha = 2 / 255
  c.saat.start_steps = 10

  # TRADES (Zhang et al. 2019; yaodongyu/TRADES train_trades_cifar10.py): beta 6, PGD on the KL with
  # eps 0.031, step 0.007, 10 steps, BatchNorm in eval mode during the attack (attack_bn='eval').
  c.trades = ml_collections.ConfigDict(dict(beta=6.0, eps=0.031, alpha=0.007, steps=10))
  # SA-TRADES (our design, see saat_jax/methods/trades.py): SA-PGD's schedule (config.saat) driving
  # TRADES' KL ascent; an example stops when stop_loss (ce: l(f(x'), y) as Eq. 5 | kl) reaches rho.
  c.sa_trades = ml_collections.ConfigDict(dict(stop_loss="ce"))

  # AWP (Wu et al. 2020; csdongxian/AWP): gamma 0 is off; AWP-AT: gamma 0.01, proxy lr 0.01, no
  # warm-up; AWP-TRADES: gamma 5e-3, proxy lr = the lr (0.1), warm-up 10 epochs.
  c.awp = ml_collections.ConfigDict(dict(gamma=0.0, proxy_lr=0.01, warmup=0))

  # EMA of the weights (beyond the paper; Gowal et al. 2020): 0 is off, e.g. 0.999 per step.
  c.ema = ml_collections.ConfigDict(dict(decay=0.0))

  # train: the attack sees BatchNorm on batch statistics, running statistics untouched;
  # train_update: and every attack pass updates them (the PyTorch code's side effect); eval.
  c.attack_bn = "train"

  # SGD, momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at epochs 100 and 150 of 200.
  c.num_epochs = 200
  c.batch_size = 128
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.lr_milestones = (100, 150)  # in epochs (fractions allowed)
  c.optim.lr_decay = 0.1

  # Per-epoch evaluation: natural and PGD-20 (eps 8/255, alpha 2/255, random start).
  c.eval = ml_collections.ConfigDict()
  c.eval.eps = 8 / 255
  c.eval.alpha = 2 / 255
  c.eval.steps = 20
  c.eval.batch_size = 500
  c.eval.num_test = 0  # 0: the full test set
  c.eval.select_best_on = "test"  # test (as the paper and Rice et al.) | val (needs data.val_size)
  c.eval.best_weights = "raw"  # raw | ema (needs ema.decay): whose PGD-20 accuracy picks `best`
  # First N training images (no augmentation) evaluated every epoch: training robust accuracy, for
  # the robust generalisation gap of Figure 3(d).
  c.eval.train_subset = 1000
  # Evaluate (test, val, trainsub) every N epochs and always at the last one; epochs in between
  # record no test metrics and cannot become `best`. 1: every epoch, as the paper.
  c.eval.every = 1

  c.progress = True
  c.check_every = 20  # steps between NaN checks / progress updates
  # The input path (results identical either way; tests/test_device_data.py): the uint8 training set
  # kept on the devices and each batch gathered there (one small index array per step crosses from
  # the host), and steps_per_dispatch steps run in one jitted lax.scan (the epoch's remainder in
  # one shorter dispatch).
  c.data_on_device = False
  c.steps_per_dispatch = 1
  # A checkpoint of the position inside the epoch every N steps (0: only at SIGTERM and at epoch
  # ends), for epochs longer than the time a preemption gives.
  c.checkpoint_every_steps = 0
  # Resuming a work dir with a config that changes the training trajectory (method, lr, data, ...)
  # is refused unless this is True; the change is then recorded in <workdir>/configs.jsonl.
  c.allow_config_change = False
  return c
