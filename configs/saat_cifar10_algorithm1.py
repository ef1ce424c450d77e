"""SAAT_up (eps_max 14/255, rho 1.7) with SA-PGD exactly as Algorithm 1 is written.

Start x' = x, eps = 0; an example already at loss >= rho is left unperturbed; the budget grows by
tau = 2/255 to 14/255 (7 stages) with K = 3 steps of alpha 2/255 each. The paper's Table 1 numbers
come from the released code's variant, ``configs/saat_cifar10.py`` (PGD-10 warm start at 8/255).

  python launch.py --config configs/saat_cifar10_algorithm1.py --workdir runs/saat_alg1
"""

from saat_jax.config_base import paper_config


def get_config():
  c = paper_config("saat_up_e14_r1.7")
  c.experiment.row = ""  # not the paper's run: the report lists it on its own
  c.experiment.label = "SAAT_up (eps_max=14, rho=1.7), Algorithm 1 start"
  c.saat.start = "zero"
  return c
