"""``python -m saat_jax.report RUN_DIR ... --out DIR``: see :mod:`saat_jax.report`."""

from saat_jax.report.cli import main

raise SystemExit(main())
