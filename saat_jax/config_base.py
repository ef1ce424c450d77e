"""The default run configuration: the training recipe of Sec. 4.1 (after Rice et al. 2020).

Experiment configs in ``configs/`` start from :func:`base_config` and change what their
experiment changes. Budgets are in pixel units of [0, 1] images (8/255).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "saat"  # natural | at | saat

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.data_dir = "../shared/data/cifar10-jpeg.tar.gz"
  c.data.source = "auto"  # auto (a local archive/folder) | tfds
  c.data.cache_dir = ml_collections.config_dict.placeholder(str)
  c.data.num_train = 0  # > 0: train on the first N training examples only (quick runs)
  c.data.val_size = 0  # > 0 holds out training examples to choose `best` (robust_overfitting)
  c.data.augment = True  # random crop with 4 px padding + horizontal flip, on device
  c.data.pad = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "preact_resnet18"
  c.model.normalization = "cifar10"  # inside the model, as the released SAAT code
  c.model.kwargs = ml_collections.ConfigDict()

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

  c.attack_bn = "train"  # the attack sees BatchNorm on batch statistics (running stats untouched)

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

  c.progress = True
  c.check_every = 20  # steps between NaN checks / progress updates
  return c
