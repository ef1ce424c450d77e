"""The PGD-10 AT baseline (first row of Table 1): PreAct ResNet-18, eps 8/255, alpha 2/255.

Same as ``configs/paper.py:at``. Paper: best 82.02 / 52.59 / 48.23, last 83.89 / 45.28 / 42.88.

  python launch.py --config configs/at_cifar10.py --workdir runs/at
"""

from saat_jax.config_base import paper_config


def get_config():
  return paper_config("at")
