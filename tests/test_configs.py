"""The shipped configs load by path alone, as ``saat-train --config <path>`` loads them (issue 17 §1).

ml_collections' config_flags imports a config file by its path; the ``configs`` folder is no package
on ``sys.path`` outside the checkout, so a config may import only ``saat_jax`` (and ml_collections).
The subprocess below runs in an empty folder with a copy of ``saat_jax/`` as its only extra path
entry (the repository root would make ``configs`` importable as a namespace package).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saat_jax import config_base
from saat_jax.paper import ROWS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
DIGITS_METHODS = config_base.DIGITS_METHODS + tuple(f"awp_{m}" for m in config_base.DIGITS_METHODS[1:])
PAPER_ROWS = ("at", "saat_up_e14_r1.7", "saat_down", "awp_trades", "cifar100_awp_saat_up", "fig1b_at_e16",
              "fig3e_wrn34_10_saat")

# Loads each config string argv[1:] through config_flags, as saat_jax/main.py does; prints their
# to_dict() and the errors of the strings after "--bad".
_LOADER = textwrap.dedent("""
    import json, sys
    from absl import flags
    from ml_collections import config_flags
    import saat_jax
    try:
      import configs
      found = getattr(configs, "__path__", None) or configs.__file__
    except ImportError:
      found = None
    cut = sys.argv.index("--bad")
    good, bad = sys.argv[1:cut], sys.argv[cut + 1:]
    fv = flags.FlagValues()
    for i, _ in enumerate(good):
      config_flags.DEFINE_config_file(f"c{i}", None, "a config", flag_values=fv)
    fv(["prog"] + [f"--c{i}={s}" for i, s in enumerate(good)])
    errors = []
    for s in bad:
      one = flags.FlagValues()
      config_flags.DEFINE_config_file("config", None, "a config", flag_values=one)
      try:
        one(["prog", f"--config={s}"])
        errors.append(None)
      except Exception as e:  # absl wraps the config's ValueError
        errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"saat_jax": saat_jax.__file__, "configs_importable": str(found) if found else None,
                      "configs": [fv[f"c{i}"].value.to_dict() for i in range(len(good))], "errors": errors}))
""")


def _algorithm1():
  c = config_base.paper_config("saat_up_e14_r1.7")
  c.experiment.row, c.experiment.label = "", "SAAT_up (eps_max=14, rho=1.7), Algorithm 1 start"
  c.saat.start = "zero"
  return c


# What each file of configs/ must give without an argument.
FILE_CONFIGS = {
    "at_cifar10.py": lambda: config_base.paper_config("at"),
    "digits.py": lambda: config_base.digits_config("saat_up"),
    "paper.py": lambda: config_base.paper_config("saat_up_e14_r1.7"),
    "saat_cifar10.py": lambda: config_base.paper_config("saat_up_e14_r1.7"),
    "saat_cifar10_algorithm1.py": _algorithm1,
    "saat_digits.py": config_base.saat_digits_config,
}


def _json(d):
  return json.loads(json.dumps(d))


def test_every_shipped_config_loads_by_path_outside_the_checkout(tmp_path):
  assert sorted(FILE_CONFIGS) == CONFIG_FILES  # a new config file needs its expected value here
  site, clone, cwd = tmp_path / "site", tmp_path / "clone", tmp_path / "cwd"
  shutil.copytree(ROOT / "saat_jax", site / "saat_jax", ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copytree(ROOT / "configs", clone / "configs", ignore=shutil.ignore_patterns("__pycache__"))
  cwd.mkdir()
  cfg = clone / "configs"
  good = ([str(cfg / f) for f in CONFIG_FILES] + [f"{cfg / 'digits.py'}:{m}" for m in DIGITS_METHODS]
          + [f"{cfg / 'paper.py'}:{r}" for r in PAPER_ROWS])
  bad = [f"{cfg / 'paper.py'}:saat_up_e14_r17", f"{cfg / 'digits.py'}:mart"]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PYTHONPATH"] = str(site)
  proc = subprocess.run([sys.executable, "-c", _LOADER, *good, "--bad", *bad], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert Path(out["saat_jax"]).is_relative_to(site), out["saat_jax"]  # this checkout's code, copied
  assert out["configs_importable"] is None, out["configs_importable"]  # the isolation holds

  # Each by-path load equals the library builder it names (and so the checkout's own configs).
  expected = ([FILE_CONFIGS[f]() for f in CONFIG_FILES] + [config_base.digits_config(m) for m in DIGITS_METHODS]
              + [config_base.paper_config(r) for r in PAPER_ROWS])
  assert len(out["configs"]) == len(good) == len(expected)
  for s, got, c in zip(good, out["configs"], expected):
    assert got == _json(c.to_dict()), s
  by_string = dict(zip(good, out["configs"]))
  assert by_string[f"{cfg / 'paper.py'}:fig1b_at_e16"]["at"]["eps"] == pytest.approx(16 / 255)
  assert by_string[str(cfg / "saat_cifar10.py")]["experiment"]["row"] == "saat_up_e14_r1.7"
  assert by_string[f"{cfg / 'digits.py'}:awp_trades"]["awp"]["gamma"] == 5e-3
  assert all(c["data"]["data_dir"] is None for c in out["configs"])  # no location of this checkout

  # An unknown row or method is still a ValueError listing the known names.
  row_error, method_error = out["errors"]
  assert row_error is not None and "unknown paper row 'saat_up_e14_r17'" in row_error, row_error
  assert "saat_up_e14_r1.7" in row_error
  assert method_error is not None and "unknown method 'mart'" in method_error, method_error
  assert ", ".join(DIGITS_METHODS) in method_error


def test_configs_import_only_saat_jax_and_ml_collections():
  for f in CONFIG_FILES:
    text = (ROOT / "configs" / f).read_text()
    imports = [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert all(m.split(".")[0] in ("saat_jax", "ml_collections", "__future__") for m in imports), (f, imports)


def test_paper_config_covers_every_row_and_names_no_data_location():
  for row in ROWS:
    c = config_base.paper_config(row)
    assert c.experiment.row == row and c.data.data_dir is None and c.data.source == "auto"
