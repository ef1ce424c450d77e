"""The PGD-10 AT baseline (first row of Table 1): PreAct ResNet-18, eps 8/255, alpha 2/255.

  python launch.py --config configs/at_cifar10.py --workdir runs/at
"""

from saat_jax.config_base import base_config


def get_config():
  config = base_config()
  config.method = "at"
  return config
