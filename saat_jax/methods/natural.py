"""Natural training (Eq. 1): no adversary, the cross-entropy of the clean batch."""

from __future__ import annotations

from saat_jax.methods.base import Method, MethodDef, fixed_budget, register


def natural(config) -> Method:
  del config

  def adversary(net, x, y, key):
    return fixed_budget(x, net.batch_stats, eps=0.0, steps=0)

  return Method("natural", adversary)


NATURAL = register(MethodDef("natural", natural))
