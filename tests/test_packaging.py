"""The wheel: built from the sources, installed elsewhere, it imports and its console scripts resolve.

Catches what only shows outside the checkout: a subpackage left out of the wheel, a module that
reads files next to the repository, a console script naming a function that does not exist.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("data", "models", "methods", "autoattack", "evaluators")
SCRIPTS = {"saat-train": "saat_jax.main:main", "saat-evaluate": "saat_jax.evaluate:main"}

_PROBE = textwrap.dedent("""
    import importlib, importlib.metadata, json, sys
    import saat_jax
    subs = {s: importlib.import_module("saat_jax." + s).__file__ for s in sys.argv[1].split(",")}
    dist = importlib.metadata.distribution("saat_jax")
    scripts = {}
    for ep in dist.entry_points:
      if ep.group == "console_scripts":
        fn = ep.load()
        scripts[ep.name] = [ep.value, callable(fn), sys.modules[fn.__module__].__file__]
    print(json.dumps({"file": saat_jax.__file__, "subs": subs, "scripts": scripts}))
""")


@pytest.mark.slow
def test_wheel_installs_imports_and_resolves_console_scripts(tmp_path):
  pytest.importorskip("setuptools", reason="the build backend (the [test] extra installs it)")
  # Build from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / "saat_jax", src / "saat_jax", ignore=shutil.ignore_patterns("__pycache__"))
  dist, target, outside = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
  outside.mkdir()
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                 check=True, cwd=tmp_path, timeout=120)
  wheels = list(dist.glob("saat_jax-*.whl"))
  assert len(wheels) == 1, wheels
  subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheels[0])],
                 check=True, cwd=tmp_path, timeout=120)

  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PYTHONPATH"] = str(target)
  proc = subprocess.run([sys.executable, "-c", _PROBE, ",".join(SUBPACKAGES)], cwd=outside, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  found = json.loads(proc.stdout.strip().splitlines()[-1])
  assert Path(found["file"]).is_relative_to(target), found["file"]
  for sub, file in found["subs"].items():
    assert Path(file).is_relative_to(target / "saat_jax" / sub), (sub, file)
  assert {name: v[0] for name, v in found["scripts"].items()} == SCRIPTS
  for name, (_, is_callable, module_file) in found["scripts"].items():
    assert is_callable and Path(module_file).is_relative_to(target), (name, module_file)

  # The installed saat-train script lists its flags (launch.py's) in --help (absl exits 1 after
  # help), and refuses to start without a config.
  script = str(target / "bin" / "saat-train")
  proc = subprocess.run([script, "--help"], cwd=outside, env=env, capture_output=True, text=True,
                        timeout=120)
  assert "Traceback" not in proc.stderr, proc.stderr
  for flag in ("--config: Path to an experiment config", "--workdir:", "--[no]distributed:"):
    assert flag in proc.stdout, (flag, proc.stdout)
  proc = subprocess.run([script, "--workdir", str(tmp_path / "run")], cwd=outside, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "--config must have a value" in proc.stderr, proc.stderr
