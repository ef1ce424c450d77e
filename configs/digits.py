"""Every training method on scikit-learn's 8x8 digits: ``--config configs/digits.py:<method>``.

Minute-long CPU runs of the paper's methods with a small CNN, to see them work end to end:

  python launch.py --config configs/digits.py:saat_up --workdir runs/digits/saat_up
  python launch.py --config configs/digits.py:awp_trades --workdir runs/digits/awp_trades

Methods: ``natural``, ``at``, ``saat_down``, ``saat_up``, ``trades``, ``sa_trades_up``, and
``awp_<method>`` for each robust one. Digits are high-contrast images, so every CIFAR budget is
scaled by 4 (the AT/evaluation budget 8/255 becomes 32/255, steps 2/255 become 8/255): SAAT_down
grows from 0 to 32/255 with rho 1.5; SAAT_up and SA-TRADES_up start at the 32/255 attack and grow
by 8/255 to 56/255 (CIFAR's 14/255) with rho 1.7. AWP uses the paper's gammas (0.01 for AT/SAAT,
5e-3 for TRADES, with a 2-epoch warm-up for the latter, scaled from 10 of 200). No augmentation.
"""

from configs import saat_digits

METHODS = ("natural", "at", "saat_down", "saat_up", "trades", "sa_trades_up")


def get_config(method: str = "saat_up"):
  base = method[len("awp_"):] if method.startswith("awp_") else method
  known = METHODS + tuple(f"awp_{m}" for m in METHODS[1:])
  if base not in METHODS or method == "awp_natural":
    raise ValueError(f"configs/digits.py: unknown method {method!r}; use one of {', '.join(known)}")
  c = saat_digits.get_config()
  c.experiment.label = f"digits {method}"
  c.at.eps, c.at.alpha = 32 / 255, 8 / 255
  c.trades.eps, c.trades.alpha, c.trades.steps = 32 / 255, 8 / 255, 10
  c.saat.tau = c.saat.alpha = c.saat.start_alpha = 8 / 255
  c.saat.start_eps = 32 / 255
  c.method = {"saat_down": "saat", "saat_up": "saat", "sa_trades_up": "sa_trades"}.get(base, base)
  if base == "saat_down":
    c.saat.eps_max, c.saat.rho, c.saat.start = 32 / 255, 1.5, "zero"
  elif base in ("saat_up", "sa_trades_up"):
    c.saat.eps_max, c.saat.rho, c.saat.start = 56 / 255, 1.7, "pgd"
  if c.method in ("trades", "sa_trades"):
    c.attack_bn = "eval"
  if method.startswith("awp_"):
    if c.method in ("trades", "sa_trades"):
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 5e-3, c.optim.lr, 2
    else:
      c.awp.gamma, c.awp.proxy_lr, c.awp.warmup = 0.01, 0.01, 0
  return c
