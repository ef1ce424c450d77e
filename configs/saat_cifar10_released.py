"""SAAT_up on CIFAR-10 as the authors' released ``SAAT/main.py`` runs it (Table 1 came from it).

SA-PGD variant: released. PGD-10 at 8/255 (alpha 2/255, uniform random start), then the budget grows
from 8/255 by tau = 2/255 to eps_max = 14/255 (stages 10, 12, 14), K = 3 masked steps per stage,
rho = 1.7; lr / 10 at 50% and / 100 at 75% of training (the same epochs, 100 and 150, for 200).
Differences kept from this project's defaults, and why: the attack's BatchNorm passes do not update
running statistics (the PyTorch code let them), and an example that reaches rho stays stopped
(Algorithm 1 line 12; the released loop re-tests every example after each step).
"""

from saat_jax.config_base import base_config


def get_config():
  config = base_config()
  config.method = "saat"
  config.saat.rho = 1.7
  config.saat.eps_max = 14 / 255
  config.saat.start = "pgd"
  config.saat.start_eps = 8 / 255
  config.saat.start_alpha = 2 / 255
  config.saat.start_steps = 10
  config.optim.lr_milestones = (100, 150)
  return config
