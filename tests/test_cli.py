"""The training command as a user types it: every mistake is one line and exit status 2, signals
before training leave the work dir free, ``--config_help`` documents the keys.

Each case runs ``python -m saat_jax.main`` (what ``saat-train`` and ``launch.py`` call) in a
subprocess from a temporary directory, with the configs given by absolute path."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def train_cmd(*args, cwd, timeout=120):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-m", "saat_jax.main", *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def one_line_error(proc):
  """The error line of a refused command; asserts exit 2, no traceback and nothing else on stderr
  than the error and the usage line."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("usage: saat-train"), lines
  return lines[0]


@pytest.mark.parametrize("args, expected", [
    # a config path with a typo: the closest config beside it
    (["--config", CONFIGS / "saat_cifar.py"], f"{CONFIGS / 'saat_cifar.py'}: no such file (did you mean "
                                                f"{CONFIGS / 'saat_cifar10.py'}"),
    # a relative path that does not exist from here: says from where it was looked for
    (["--config", "configs/saat_cifar10.py"], "configs/saat_cifar10.py (from {cwd}): no such file; the folder "
                                              "configs does not exist either"),
    (["--config", CONFIGS], f"{CONFIGS}: a folder, not a config file; the configs there: at_cifar10.py, digits.py"),
    # an override of a key the config lacks: one line with the closest key
    (["--config", CONFIGS / "saat_digits.py", "--config.num_epoch=2"],
     f"--config.num_epoch: the config {CONFIGS / 'saat_digits.py'} has no key 'num_epoch'; did you mean "
     f"--config.num_epochs? (--config_help lists them)"),
    (["--config", CONFIGS / "saat_digits.py", "--config.optim.lrr=0.1"], "has no key 'optim.lrr'; did you mean "
                                                                         "--config.optim.lr?"),
    (["--config", CONFIGS / "saat_digits.py", "--config.num_epochs=abc"], "--config.num_epochs=abc: invalid literal"),
    # the config's own ValueError, without ml_collections' traceback around it
    (["--config", f"{CONFIGS / 'digits.py'}:foo"], f"--config={CONFIGS / 'digits.py'}:foo: configs/digits.py: "
                                                   f"unknown method 'foo'; use one of natural, at, saat_down"),
    (["--config", f"{CONFIGS / 'paper.py'}:nope"], "unknown paper row 'nope'"),
])
def test_a_mistyped_command_is_one_line_and_writes_nothing(tmp_path, args, expected):
  proc = train_cmd(*args, "--workdir", tmp_path / "run", cwd=tmp_path)
  assert expected.format(cwd=tmp_path) in one_line_error(proc)
  assert not (tmp_path / "run").exists()


def test_missing_flags_are_one_line(tmp_path):
  line = one_line_error(train_cmd("--config", CONFIGS / "saat_digits.py", cwd=tmp_path))
  assert line == "error: --workdir must have a value: the run's folder for checkpoints and metrics, e.g. --workdir runs/x"
  assert "--config must have a value" in one_line_error(train_cmd("--workdir", tmp_path / "run", cwd=tmp_path))


def test_config_help_lists_every_key_with_its_value_and_meaning(tmp_path):
  proc = train_cmd("--config", f"{CONFIGS / 'digits.py'}:saat_up", "--config.num_epochs=3", "--config-help",
                   cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  # values of this config with the override applied, budgets also in /255
  assert re.search(r"\n  num_epochs +?= 3 +# epochs; a finished run resumes", out)
  assert re.search(r"\n  saat.eps_max +?= 0.219608 \(56/255\) +# the largest budget\n", out)
  assert re.search(r"\n  saat.rho +?= 1.7 +# an example stops once its loss", out)
  # meanings from base_config's comments, and section headings
  assert "# reflect (Rice et al., the released SAAT code) | zero (torchvision)" in out
  assert "[saat]" in out and "[eval]" in out
  from ml_collections import ConfigDict

  from saat_jax.config_help import load_config

  def keys(c, prefix=""):
    for k, v in c.items():
      yield from keys(v, f"{prefix}{k}.") if isinstance(v, ConfigDict) else [f"{prefix}{k}"]

  for key in keys(load_config(f"{CONFIGS / 'digits.py'}:saat_up")):
    assert f"  {key} " in out, key


def _signal_before_training(tmp_path, signum):
  """Start a digits run, send ``signum`` as soon as it holds the work dir's lock (while it loads the
  data, builds the model and compiles), and return the finished process."""
  workdir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.Popen([sys.executable, "-m", "saat_jax.main", "--config", str(CONFIGS / "saat_digits.py"),
                           "--config.progress=False", "--workdir", str(workdir)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not (workdir / ".lock").exists():
      assert proc.poll() is None and time.time() < deadline, proc.communicate()
      time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out, err, workdir


@pytest.mark.parametrize("signum, code, message", [
    (signal.SIGTERM, 143, "stopped by SIGTERM before training started (nothing was lost; the work dir is free)"),
    (signal.SIGINT, 130, "interrupted before training started: run the same command to start (or resume) the run"),
])
@pytest.mark.slow
def test_a_signal_before_training_starts_exits_with_a_message_and_frees_the_work_dir(tmp_path, signum, code, message):
  rc, out, err, workdir = _signal_before_training(tmp_path, signum)
  assert rc == code, (rc, err)
  assert message in err and "Traceback" not in err, err
  assert not (workdir / ".lock").exists()
  assert "epoch   1" not in out  # it really stopped before the first epoch


def test_every_key_of_the_recipe_is_documented():
  """--config_help prints base_config's comments: a key added without one would be listed bare."""
  from saat_jax.config_base import base_config
  from saat_jax.config_help import flat_keys, key_comments

  comments = key_comments()
  assert [k for k in flat_keys(base_config()) if not comments.get(k)] == []
  assert comments["saat.rho"] == "an example stops once its loss l(f(x'), y) >= rho (Eq. 5)"
  assert comments["optim.lr"] == "the initial learning rate"  # not the section's comment above it
  assert comments["optim"].startswith("SGD, momentum 0.9")
