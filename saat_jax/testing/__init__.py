"""Helpers for tests and benchmarks only: reference implementations in PyTorch, tiny CIFAR archives.

* :mod:`saat_jax.testing.torch_reference`: the reference architectures (Rice et al.'s PreAct
  ResNet-18, the AutoAttack examples' ResNet-18, TRADES / RobustBench's Wide ResNet) and a
  normalising wrapper, to compare the Flax models, imports and exports with.
* :mod:`saat_jax.testing.autoattack_reference`: runs the authors' ``pyautoattack`` and reads its log.
* :mod:`saat_jax.testing.cifar_archive`: tiny archives in the official CIFAR format and a local
  HTTP server for them, to test the download path offline (numpy only, no torch).

Nothing in the training or evaluation path imports this package; ``pip install saat_jax[torch]``
provides what the first two need.
"""
