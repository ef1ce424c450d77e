"""Train from a config: ``python launch.py --config configs/saat_digits.py --workdir runs/digits``.

The same as the ``saat-train`` console script: the flags and the code are in saat_jax/main.py.
"""

from saat_jax.main import main, run

__all__ = ["main", "run"]  # `launch.run` stays importable

if __name__ == "__main__":
  main()
