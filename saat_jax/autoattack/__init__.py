"""AutoAttack in JAX: APGD-CE, APGD-DLR, APGD-T, FAB(-T) and Square, and their ensemble run.

``autoattack(logits_fn, x, y, eps=8/255)`` evaluates a model as ``pyautoattack`` 0.2.0's
``AutoAttack(...).run_standard_evaluation`` does (versions ``standard``, ``plus``, ``rand``,
``custom``; norms ``Linf`` and ``L2``), with the self-checks of :mod:`saat_jax.autoattack.checks`.
The single attacks are importable too.
"""

from saat_jax.autoattack.apgd import (apgd_attack, apgd_targeted_attack, checkpoint_schedule, ce_loss,
                                      dlr_loss, dlr_targeted_loss)
from saat_jax.autoattack.checks import CheckWarning, VerificationError
from saat_jax.autoattack.core import (ATTACKS, NORMS, VERSION_ATTACKS, VERSIONS, AutoAttackResult,
                                      attack_settings, autoattack)


def __getattr__(name):
  # FAB and Square are imported lazily, so that APGD works even while they are being changed.
  if name == "fab_attack":
    from saat_jax.autoattack.fab import fab_attack
    return fab_attack
  if name == "square_attack":
    from saat_jax.autoattack.square import square_attack
    return square_attack
  raise AttributeError(f"module 'saat_jax.autoattack' has no attribute {name!r}")


__all__ = ["autoattack", "AutoAttackResult", "attack_settings", "apgd_attack", "apgd_targeted_attack",
           "fab_attack", "square_attack", "checkpoint_schedule", "ce_loss", "dlr_loss",
           "dlr_targeted_loss", "ATTACKS", "NORMS", "VERSIONS", "VERSION_ATTACKS", "CheckWarning",
           "VerificationError"]
