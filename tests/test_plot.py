"""``python -m saat_jax.plot``: the figures of runs that are finished or still training, and its errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from saat_jax import plot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tiny_runs):
  """The folder of the shared tiny runs, with its saat_up and at runs trained (lr /10 after epoch 2)."""
  tiny_runs["saat_up"], tiny_runs["at"]
  return tiny_runs.root


def records(run_dir):
  return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_each_run_gets_curves_loss_lr_and_budget(runs, tmp_path, capsys):
  out = tmp_path / "figs"
  assert plot.main(["--workdir", str(runs / "saat_up"), str(runs / "at"), "--out", str(out)]) == 0
  for name in ("curves.png", "loss_lr.png", "budget.png"):
    assert (out / "saat_up" / name).stat().st_size > 10_000
  # AT has no SA-PGD budget to draw; the comparison overlays both runs
  assert sorted(p.name for p in (out / "at").iterdir()) == ["curves.png", "loss_lr.png"]
  assert (out / "compare.png").stat().st_size > 10_000
  assert str(out / "compare.png") in capsys.readouterr().out


@pytest.mark.slow
def test_the_figures_show_the_runs_numbers(runs, tmp_path):
  """What is drawn is the metrics: loss, learning rate (the /10 at the milestone), accuracies."""
  run = plot.load(str(runs / "saat_up"))
  recs = records(runs / "saat_up")
  data = plot.plot_loss_lr(run, str(tmp_path / "loss_lr.png"))
  assert data["train_loss"] == [r["train_loss"] for r in recs]
  assert data["lr"] == [r["lr"] for r in recs]
  assert data["lr"][2] == pytest.approx(data["lr"][0] / 10)  # milestone at epoch 2: lr /10 in epoch 3
  cmp = plot.plot_compare([run, plot.load(str(runs / "at"))], str(tmp_path / "compare.png"))
  np.testing.assert_allclose(cmp["saat_up/test_pgd_accuracy"], [100 * r["test_pgd_accuracy"] for r in recs])
  assert len(cmp) == 5 and cmp["labels"] == ["digits saat_up", "digits at"]  # the configs' labels, not folders


@pytest.mark.slow
def test_default_output_is_the_runs_plots_folder_and_a_running_run_plots(runs, tmp_path):
  """A run still training (its metrics so far, no eval.json) plots into <workdir>/plots."""
  run = tmp_path / "running"
  shutil.copytree(runs / "saat_up", run)
  (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records(run)[:1]) + "\n")
  assert plot.main(["--workdir", str(run)]) == 0
  assert {p.name for p in (run / "plots").iterdir()} == {"curves.png", "loss_lr.png", "budget.png"}


@pytest.mark.parametrize("make,match", [
    (lambda d: None, "is not a directory"),
    (lambda d: d.mkdir(), "has no metrics.jsonl: nothing to plot"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"), (d / "metrics.jsonl").write_text("")),
     "has no epoch yet"),
])
def test_nothing_to_plot_is_a_clear_error(tmp_path, capsys, make, match):
  d = tmp_path / "run"
  make(d)
  assert plot.main(["--workdir", str(d)]) == 2
  assert match in capsys.readouterr().err
  assert not (d / "plots").exists()


def test_the_loss_lr_legend_is_under_the_panels(runs, tmp_path, monkeypatch):
  """One legend under the figure: the learning rate's twin axis cannot draw across it."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  from saat_jax import report

  figs, real = [], report.save_figure
  monkeypatch.setattr(report, "save_figure", lambda fig, path: (real(fig, path), figs.append(fig)))
  plot.plot_loss_lr(plot.load(str(runs / "saat_up")), str(tmp_path / "loss_lr.png"))
  (fig,) = figs
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  top = fig.legends[0].get_window_extent(renderer).y1
  assert len(fig.axes) == 3 and all(ax.get_legend() is None and top <= ax.get_window_extent(renderer).y0
                                    for ax in fig.axes)
  texts = [t.get_text() for t in fig.legends[0].get_texts()]
  assert texts[:3] == ["training loss (outer loss, adversarial inputs)", "learning rate", "seconds per epoch: training"]
