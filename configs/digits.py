"""Every training method on scikit-learn's 8x8 digits: ``--config configs/digits.py:<method>``.

Minute-long CPU runs of the paper's methods with a small CNN, to see them work end to end:

  python launch.py --config configs/digits.py:saat_up --workdir runs/digits/saat_up
  python launch.py --config configs/digits.py:awp_trades --workdir runs/digits/awp_trades

Methods: ``natural``, ``at``, ``saat_down``, ``saat_up``, ``trades``, ``sa_trades_up``, and
``awp_<method>`` for each robust one. Digits are high-contrast images, so every CIFAR budget is
scaled by 4 (the AT/evaluation budget 8/255 becomes 32/255, steps 2/255 become 8/255): SAAT_down
grows from 0 to 32/255 with rho 1.5; SAAT_up and SA-TRADES_up start at the 32/255 attack and grow
by 8/255 to 56/255 (CIFAR's 14/255) with rho 1.7. AWP uses the paper's gammas (0.01 for AT/SAAT,
5e-3 for TRADES, with a 2-epoch warm-up for the latter, scaled from 10 of 200). No augmentation.
"""

from saat_jax.config_base import DIGITS_METHODS, digits_config

METHODS = DIGITS_METHODS


def get_config(method: str = "saat_up"):
  return digits_config(method)
