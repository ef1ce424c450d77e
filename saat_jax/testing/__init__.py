"""Reference implementations in PyTorch, for tests and benchmarks only (they need torch).

* :mod:`saat_jax.testing.torch_reference`: the reference architectures (Rice et al.'s PreAct
  ResNet-18, the AutoAttack examples' ResNet-18, TRADES / RobustBench's Wide ResNet, the small CNN)
  and a normalising wrapper, to compare the Flax models, imports and exports with; defined once,
  in the public :mod:`saat_jax.models.torch_nets` that loads exports.
* :mod:`saat_jax.testing.autoattack_reference`: runs the authors' ``pyautoattack`` and reads its log.

Nothing in the training or evaluation path imports this package; ``pip install saat_jax[torch]``
provides what it needs.
"""
