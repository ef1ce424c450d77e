"""The PyTorch reference architectures, for the tests and benchmarks (needs torch).

They are defined once, in the public :mod:`saat_jax.models.torch_nets` (the modules that load an
export); this module keeps the names the tests and benchmarks import:

* ``TorchResNet18``: the AutoAttack examples' ``resnet.py`` ResNet-18 (after kuangliu);
* ``TorchPreActResNet18``: Rice et al. (2020) ``preactresnet.py``, with the final ``bn``;
* ``TorchWideResNet``: TRADES / Rice et al. ``wideresnet.py`` (RobustBench's format), optionally
  with TRADES' unused ``sub_block1``;
* ``TorchSmallCNN``: saat_jax's small CNN;
* ``Normalized``: a normalising wrapper for a network of one's own; ``build_torch_model``: a module by name.

They serve the tests (same logits as the imported Flax models) and the benchmarks (the reference
AutoAttack attacks them while the JAX one attacks the imported Flax model).
"""

from saat_jax.models.torch_nets import (Normalized, TorchPreActResNet18, TorchResNet18, TorchSmallCNN,  # noqa: F401
                                        TorchWideResNet, build, build_torch_model)
