"""notebooks/quickstart.ipynb: committed without outputs, and it runs end to end on CPU.

The run overrides the notebook's parameters the way papermill does: a cell inserted after the one
tagged ``parameters`` (fewer epochs and evaluation points, a temporary work dir).
"""

import json
import os
import re
from pathlib import Path

import pytest

from saat_jax.testing import processes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

nbformat = pytest.importorskip("nbformat")


def test_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, "the notebook has no code cell"
  for i, cell in enumerate(code):
    assert cell.outputs == [] and cell.execution_count is None, (
        f"code cell {i} holds outputs; strip them before committing (e.g. jupyter nbconvert "
        f"--clear-output --inplace {NOTEBOOK.relative_to(ROOT)})")
  assert "widgets" not in nb.metadata


def test_notebook_parameters_cell_sets_what_the_run_overrides():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  names = {line.split("=")[0].strip() for line in params[0].source.splitlines()
           if "=" in line and not line.lstrip().startswith("#")}
  assert {"REPO_URL", "WORKDIR", "DIGITS_EPOCHS", "EVAL_POINTS", "RUN_CIFAR"} <= names
  assert nb.cells.index(params[0]) == 1  # the first code cell, right after the title


def test_notebook_trains_the_shipped_configs_and_suggests_only_commands_that_exist():
  """The notebook builds its runs from the library functions that configs/saat_digits.py and
  configs/saat_cifar10.py return (not a copy of their settings), and every flag it mentions exists."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  source = "\n".join(c.source for c in nb.cells)
  assert "saat_digits_config()" in source and 'paper_config("saat_up_e14_r1.7")' in source
  assert "return saat_digits_config()" in (ROOT / "configs" / "saat_digits.py").read_text()
  assert 'return paper_config("saat_up_e14_r1.7")' in (ROOT / "configs" / "saat_cifar10.py").read_text()
  assert "def digits_config" not in source  # no hand-written copy of a config
  from saat_jax.evaluate import eval_config

  for flag in re.findall(r"--eval\.(\w+)", source):
    assert flag in eval_config(), flag
  assert "--num-test" not in source and "--num_test" not in source
  assert "colab.research.google.com/github/" in source


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  workdir = tmp_path / "runs"
  overrides = (f"WORKDIR = {str(workdir)!r}\nDIGITS_EPOCHS = 2\nDIGITS_NUM_TRAIN = 256\n"
               f"EVAL_POINTS = 24\nRUN_CIFAR = True  # on CPU the notebook must skip it itself")
  nb.cells.insert(at + 1, nbformat.v4.new_code_cell(overrides))
  # The kernel imports this checkout (no install), on one CPU device, with its caches in tmp.
  monkeypatch.setenv("PYTHONPATH", str(ROOT))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("SAAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("XLA_FLAGS", processes.xla_flags())  # the tests' compile settings, no forced device count
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error

  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
  assert "saat_jax from " + str(ROOT / "saat_jax") in text  # the install cell saw it importable
  assert "running on the CPU" in text
  assert "skipped: the CIFAR-10 run needs a GPU or TPU (this runtime: cpu)" in text
  assert "epoch 2: natural" in text and "PGD-20" in text

  ev = json.loads((workdir / "digits" / "eval.json").read_text())
  best = ev["checkpoints"]["best"]
  assert best["num_test"] == 24
  for attack in ("natural", "pgd20", "aa"):
    assert 0.0 <= best[attack] <= 1.0
  assert best["aa"] <= best["pgd20"] + 1 / 24 and best["pgd20"] <= best["natural"]
  assert best["natural"] > 0.5  # two epochs on digits learn something
  for figure in ("curves_digits.png", "budget_digits.png"):
    assert (workdir / "report" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
  shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
           if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert len(shown) == 2
  assert not os.path.exists(tmp_path / "runs" / "cifar10")
