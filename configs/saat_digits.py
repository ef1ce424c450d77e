"""SAAT on scikit-learn's 8x8 digits with a small CNN: trains and evaluates in about a minute on CPU.

Not an experiment of the paper: a smoke-sized run of the same pipeline. SA-PGD variant: Algorithm 1
(start x' = x, eps = 0). Digits are large-contrast images, so budgets are larger than CIFAR's:
eps_max 64/255 by tau 8/255 with K = 3 steps of alpha 8/255, rho 1.0; evaluation PGD-20 at 32/255.
No crop/flip augmentation (flipping digits changes their class).

  python launch.py --config configs/saat_digits.py --workdir runs/digits
  python launch.py --config configs/saat_digits.py --config.method=natural --workdir runs/digits_nat
"""

from saat_jax.config_base import saat_digits_config


def get_config():
  return saat_digits_config()
