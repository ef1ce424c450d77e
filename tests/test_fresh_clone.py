"""The README's promise on a researcher's own machine: a fresh clone with no ``../shared`` beside it,
installed, its console script run from another directory, trains the headline config.

The clone is of the committed tree (``git clone`` of this checkout), installed into a folder of its
own (``pip install --target``, no network: the dependencies are this environment's). The data comes
the way it comes to a user -- the official archive, downloaded into the user cache and checksum-
checked -- except that the "official" address is a local HTTP server holding a tiny archive in the
official format (``data.download_url`` / ``data.download_md5``, see tests/conftest.py). Uncommitted
changes are not in the clone: commit before relying on this test locally (CI runs on a clean clone).
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

# Every shipped config, as a user names it (config strings of the families included).
SHIPPED = ["saat_cifar10.py", "at_cifar10.py", "saat_cifar10_algorithm1.py", "saat_digits.py", "paper.py",
           "paper.py:awp_trades", "paper.py:cifar100_saat_up", "paper.py:fig3a_r1.4", "paper.py:wrn34_10_at",
           *(f"digits.py:{m}" for m in ("natural", "at", "saat_down", "saat_up", "trades", "sa_trades_up",
                                        "awp_at", "awp_saat_down", "awp_saat_up", "awp_trades", "awp_sa_trades_up"))]


@pytest.fixture(scope="module")
def installed_clone(tmp_path_factory):
  """``(clone, site, env)``: a clone of this checkout with no ``../shared`` beside it, installed into
  ``site``, and the environment that runs its console scripts from elsewhere."""
  if shutil.which("git") is None or not (ROOT / ".git").exists():
    pytest.skip("needs git and a git checkout to clone")
  pytest.importorskip("setuptools", reason="the build backend (the [test] extra installs it)")
  base = tmp_path_factory.mktemp("fresh")
  clone, site = base / "clone", base / "site"
  subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
  assert not (clone.parent / "shared").exists()
  subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(clone)], check=True, cwd=base, timeout=300)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "XLA_FLAGS", "SAAT_JAX_CACHE")}
  env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu", SAAT_JAX_CACHE=str(base / "cache"))
  (base / "elsewhere").mkdir()
  return clone, site, env


def saat_train(installed_clone, *args, timeout=120):
  clone, site, env = installed_clone
  return subprocess.run([str(site / "bin" / "saat-train"), *map(str, args)], cwd=clone.parent / "elsewhere",
                        env=env, capture_output=True, text=True, timeout=timeout)


# Each shipped config through the installed saat-train's own main() in one process (one start of
# Python and JAX instead of 20: 3 s instead of 60-90 s): absl parses the flags again for each.
_HELP_OF_EACH = textwrap.dedent("""
    import contextlib, io, json, sys
    from absl import flags
    from saat_jax import main as cli
    results = {"module": cli.__file__, "runs": []}
    for spec in sys.argv[1:]:
      out, err, code = io.StringIO(), io.StringIO(), None
      flags.FLAGS.unparse_flags()
      sys.argv = ["saat-train", "--config", spec, "--config_help"]
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
          cli.main()
        except SystemExit as e:
          code = e.code
      results["runs"].append([code, out.getvalue(), err.getvalue()])
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_the_installed_command_loads_every_shipped_config_from_another_directory(installed_clone):
  clone, site, env = installed_clone
  # the console script itself: the headline config and --help
  proc = saat_train(installed_clone, "--config", clone / "configs" / "saat_cifar10.py", "--config_help")
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
  assert "experiment.row   = 'saat_up_e14_r1.7'" in proc.stdout and "shared" not in proc.stdout
  headline = proc.stdout
  proc = saat_train(installed_clone, "--help")
  assert "--config: Path to an experiment config" in proc.stdout and "Traceback" not in proc.stderr
  # every shipped config through the installed package's main(), from the same other directory
  specs = [f"{clone / 'configs'}/{spec}" for spec in SHIPPED]
  proc = subprocess.run([sys.executable, "-c", _HELP_OF_EACH, *specs], cwd=clone.parent / "elsewhere", env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(proc.stdout.splitlines()[-1])
  assert Path(got["module"]).is_relative_to(site)  # the installed copy, not this checkout
  for spec, (code, out, err) in zip(SHIPPED, got["runs"], strict=True):
    assert code == 0 and "Traceback" not in err, (spec, code, err)
    assert "num_epochs" in out and "shared" not in out, spec  # no neighbour folder named
  outs = dict(zip(SHIPPED, (run[1] for run in got["runs"])))
  assert outs["saat_cifar10.py"] == headline  # the same text as the console script's
  for m in ("natural", "at", "trades"):  # each config of a family was loaded, not the first one again
    assert f"method                 = '{m}'" in outs[f"digits.py:{m}"], m
  assert len(set(outs.values())) >= len(SHIPPED) - 2, "configs printed the same help"


@pytest.mark.slow
def test_a_fresh_clone_trains_the_headline_config_with_the_official_archive(installed_clone, cifar_server):
  clone, site, env = installed_clone
  server, served = cifar_server
  workdir = clone.parent / "elsewhere" / "runs" / "saat"
  proc = saat_train(installed_clone, "--config", clone / "configs" / "saat_cifar10.py", "--workdir", "runs/saat",
                    f"--config.data.download_url={served['cifar10'].url}",
                    f"--config.data.download_md5={served['cifar10'].md5}",
                    # one step of 16 of the archive's 20 images, evaluated on its 10 test images
                    "--config.num_epochs=1", "--config.batch_size=16", "--config.eval.batch_size=10",
                    "--config.eval.train_subset=10", "--config.progress=False", timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr
  assert server.requests.count("/cifar-10-python.tar.gz") == 1  # downloaded once, into the user cache
  assert list((Path(env["SAAT_JAX_CACHE"]) / "downloads").glob("cifar-10-python*.tar.gz"))
  (record,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert record["step"] == 1 and record["data_format"] == "cifar10-python"
  assert record["evaluated"] and 0 <= record["test_pgd_accuracy"] <= record["test_natural_accuracy"] <= 1
  config = json.loads((workdir / "config.json").read_text())
  assert config["experiment"]["row"] == "saat_up_e14_r1.7" and config["model"]["name"] == "preact_resnet18"
  assert config["saat"]["start"] == "pgd" and config["data"]["pad_mode"] == "reflect"
  assert "done: 1 of 1 epochs" in proc.stdout and "best: epoch 1" in proc.stdout
