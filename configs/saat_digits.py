"""SAAT on scikit-learn's 8x8 digits with a small CNN: trains and evaluates in about a minute on CPU.

Not an experiment of the paper: a smoke-sized run of the same pipeline. SA-PGD variant: Algorithm 1
(start x' = x, eps = 0). Digits are large-contrast images, so budgets are larger than CIFAR's:
eps_max 64/255 by tau 8/255 with K = 3 steps of alpha 8/255, rho 1.0; evaluation PGD-20 at 32/255.
No crop/flip augmentation (flipping digits changes their class).

  python launch.py --config configs/saat_digits.py --workdir runs/digits
  python launch.py --config configs/saat_digits.py --config.method=natural --workdir runs/digits_nat
"""

from ml_collections import config_dict

from saat_jax.config_base import base_config


def get_config():
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
