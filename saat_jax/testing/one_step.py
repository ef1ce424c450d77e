"""One training step whose SA-PGD decisions are far from their thresholds, for the tests that compare
one step across layouts (1 vs 4 devices, 2 processes x 2 devices vs 1 x 4).

The configs are overrides of ``saat_jax.config_base.saat_digits_config()`` (small_cnn, which has
BatchNorm, on 8x8 digits) on the training digits ``OFFSET .. OFFSET + BATCH`` (8 per device on 4
devices). tests/test_parallel.py checks that their losses and input gradients keep their margins,
so that last-bit differences of the reductions cannot flip a decision.
"""

# The first BATCH training digits from OFFSET, split 8 per device on 4 devices.
OFFSET, BATCH = 96, 32
# Overrides of saat_digits_config() (configs/saat_digits.py).
CONFIGS = {
    # SA-PGD, Algorithm 1: budgets 8, 16, 24/255, K=2 steps each. With rho=2.6 the batch mixes
    # examples done at line 4 (clean loss >= rho: 4), stopping at 8/255 (2) and 16/255 (2), and
    # exhausting eps_max unsatisfied (24).
    "saat": {"method": "saat", "saat.rho": 2.6, "saat.eps_max": 24 / 255, "saat.tau": 8 / 255,
             "saat.k": 2, "saat.alpha": 8 / 255},
    # Standard AT: PGD-3 at 16/255 with a random start.
    "at": {"method": "at", "at.eps": 16 / 255, "at.alpha": 8 / 255, "at.steps": 3},
    # TRADES' outer loss (its three train-mode passes through BatchNorm) with the attack's start
    # only: KL-ascent steps start where the KL's gradient nearly vanishes, so their signs are not
    # a tight quantity across reduction orders (tests/test_parallel.py's margin check refuses them).
    "trades": {"method": "trades", "attack_bn": "eval", "trades.eps": 16 / 255, "trades.steps": 0},
    # AWP on AT: the proxy step, the rescaled perturbation and the step at the perturbed weights.
    "awp_at": {"method": "at", "at.eps": 16 / 255, "at.alpha": 8 / 255, "at.steps": 3, "awp.gamma": 0.01},
}
