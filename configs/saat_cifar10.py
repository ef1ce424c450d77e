"""SAAT_up on CIFAR-10 with PreAct ResNet-18: eps_max 14/255, rho 1.7 (best CIFAR-10 row of Table 1).

SA-PGD variant: Algorithm 1 exactly as the paper states it (start x' = x, eps = 0; tau = alpha =
2/255, K = 3). For the authors' released variant (PGD-10 warm start at 8/255, budget grown from
8/255), use ``configs/saat_cifar10_released.py``.

  python launch.py --config configs/saat_cifar10.py --workdir runs/saat
"""

from saat_jax.config_base import base_config


def get_config():
  config = base_config()
  config.method = "saat"
  config.saat.rho = 1.7
  config.saat.eps_max = 14 / 255
  config.saat.start = "zero"
  return config
