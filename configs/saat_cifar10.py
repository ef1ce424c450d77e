"""The paper's headline row: SAAT_up, eps_max 14/255, rho 1.7 (Table 1; Tables 2-3's SAAT_up).

PreAct ResNet-18 on CIFAR-10, as the authors' released ``SAAT/main.py`` produces it (default run
name ``..._max14_min17``): PGD-10 at 8/255 (alpha 2/255, random start), then the budget grows by
tau = 2/255 through stages 10, 12, 14/255 with K = 3 steps of alpha 2/255, each example stopping
when its cross-entropy reaches rho = 1.7; normalisation inside the model; random crops after
reflect padding and flips (Rice et al.); lr 0.1 / 10 at epochs 100 and 150 of 200; `best` by test
PGD-20. Paper: best 76.37 / 56.31 / 48.86, last 76.38 / 53.86 / 47.17 (Natural / PGD-20 / AA).

One difference from the release, on purpose: its loop re-tests every example after each step
(``index = where(loss < rho)``), so an example that reached rho is attacked again if a later step
of the others' batch-statistics pass drops its loss below rho; here an example that reaches rho
stops for good, as Algorithm 1 line 12 says. The release also takes a weight-gradient backward pass
per attack step and 14 extra forward passes for its stopping tests; that changes its cost
(benchmarks/train_throughput.py), not its examples.

Same as ``configs/paper.py:saat_up_e14_r1.7``. For SA-PGD exactly as Algorithm 1 is written (start
x' = x, eps = 0), see ``configs/saat_cifar10_algorithm1.py``.

  python launch.py --config configs/saat_cifar10.py --workdir runs/saat
"""

from saat_jax.config_base import paper_config


def get_config():
  return paper_config("saat_up_e14_r1.7")
