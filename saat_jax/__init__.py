"""saat_jax: Strength-Adaptive Adversarial Training (SAAT) in JAX/Flax.

Modules follow the paper (../shared/paper/saat-paper.md):

- ``saat_jax.attack``: SA-PGD (Algorithm 1) and Madry PGD (Eq. 4).
- ``saat_jax.losses``: per-example losses used by the attacks and training.
- ``saat_jax.models``: PreAct ResNet-18, Wide ResNet-34-x, ResNet-18 and a small CNN.
- ``saat_jax.data``: CIFAR-10/100 and digits readers, the decoded-array cache, on-device
  augmentation.
- ``saat_jax.train``: the training step and loop (Algorithm 2, Section 4.1).
- ``saat_jax.autoattack``: AutoAttack (APGD-CE, APGD-T, FAB-T, Square) in JAX.
- ``saat_jax.evaluators``: natural / PGD-k / AutoAttack accuracy and the robustness disparity RD
  (Sec. 3.1), used by training's per-epoch evaluation and by ``saat_jax.evaluate``.
- ``saat_jax.run_state``: a run's model spec and keys, and its weights restored for evaluation.
- ``saat_jax.evaluate``: the evaluation CLI, Natural / PGD-20 / AA tables and the eps sweep.
"""

__version__ = "0.1.0"
