"""The paper's experiments as data (saat_jax.paper) and the report of runs (saat_jax.report)."""

import json
import os
import re
from pathlib import Path

import pytest

from saat_jax import paper, report
from saat_jax.paper import FIGURES, ROWS, TABLES
from saat_jax.report import ReportError, main, report_runs

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper" / "saat-paper.md"

# --------------------------------------------------------------------------------------------
# saat_jax.paper
# --------------------------------------------------------------------------------------------


def test_tables_rows_exist_and_counts():
  for t, ids in TABLES.items():
    missing = [i for i in ids if i not in ROWS]
    assert not missing, (t, missing)
    assert len(ids) == len(set(ids)), t
    assert all(t in ROWS[i].paper for i in ids)
  # Table 1 prints 32 lines, SAAT_up (14, 1.5) twice: 31 distinct rows. Tables 2/3: 16 rows each.
  assert len(TABLES["table1"]) == 31
  assert TABLES["table2"] == TABLES["table3"] and len(TABLES["table2"]) == 16
  # 31 + 12 Table-2/3-only rows + figure sweeps 8 + 12 + 13 + 5 + 5
  assert len(ROWS) == 31 + 12 + 8 + 12 + 13 + 5 + 5
  for fig in FIGURES.values():
    for _, rid in fig.rows:
      assert ROWS[rid].paper == {}


def test_paper_numbers_and_shared_rows():
  r = ROWS["saat_up_e14_r1.7"]
  assert r.paper["table1"] == {"best": (76.37, 56.31, 48.86), "last": (76.38, 53.86, 47.17)}
  assert r.paper["table2"] == {"best": (76.37, 56.31, 48.86), "last": None}
  assert r.paper["table3"] == {"best": None, "last": (76.38, 53.86, 47.17)}
  assert (r.method, r.eps_max_255, r.rho, r.awp, r.dataset, r.model) == ("saat", 14, 1.7, False, "cifar10",
                                                                         "preact_resnet18")
  assert r.label == "SAAT_up (eps_max=14, rho=1.7)"
  assert ROWS["awp_saat_up_e9_r1.7"].paper["table2"]["best"] == (79.49, 56.25, 50.67)
  assert ROWS["at"].train_eps_255 == 8 and ROWS["at"].rho is None
  assert ROWS["saat_down"].eps_max_255 == 8 and ROWS["saat_down"].rho == 1.5
  assert ROWS["cifar100_at"].paper["table3"]["last"] == (56.75, 21.12, 19.35)
  assert ROWS["wrn34_10_awp_saat_up"].model == "wrn34_10" and ROWS["wrn34_10_awp_saat_up"].awp
  assert ROWS["sa_trades_up"].method == "sa_trades" and ROWS["awp_trades"].train_eps_255 == 8
  assert ROWS["fig3a_r1.4"].eps_max_255 == 128 and ROWS["fig3a_r1.4"].rho == 1.4
  assert [x for x, _ in FIGURES["fig3a"].rows][-1] == 2.2 and ROWS["fig3b_e0"].eps_max_255 == 0
  assert ROWS["fig1b_at_e16"].train_eps_255 == 16 and ROWS["fig2_wrn34_7_at"].model == "wrn34_7"


def test_get_row_suggests_close_ids():
  assert paper.get_row("at") is ROWS["at"]
  with pytest.raises(ValueError, match=r"did you mean 'saat_up_e14_r1\.7'.*saat_jax\.paper\.ROWS"):
    paper.get_row("saat_up_e14_r17")


@pytest.mark.skipif(not PAPER_MD.exists(), reason="paper text not present")
def test_transcription_matches_paper_text():
  """Every number of Tables 1-3 as the paper's text prints it."""
  text = PAPER_MD.read_text()
  nums = lambda line: tuple(float(v) for v in line.split("\t")[-6:]) if line.count("\t") >= 6 else None
  t1 = [line for line in text.splitlines() if re.fullmatch(r"[^\t]+(\t\d+\.\d\d){6}", line)]
  assert len(t1) == 32
  expected = [(r.paper["table1"]["best"] + r.paper["table1"]["last"]) for r in (ROWS[i] for i in TABLES["table1"])]
  printed = list(dict.fromkeys(nums(line) for line in t1))  # drops the repeated row
  assert printed == expected
  t23 = [line for line in text.splitlines() if re.fullmatch(r"CIFAR100?\t[^\t]+\t[^\t]+\t[^\t]+(\t\d+\.\d\d){3}", line)]
  assert len(t23) == 32
  got = [tuple(float(v) for v in line.split("\t")[-3:]) for line in t23]
  assert got[:16] == [ROWS[i].paper["table2"]["best"] for i in TABLES["table2"]]
  assert got[16:] == [ROWS[i].paper["table3"]["last"] for i in TABLES["table3"]]


# --------------------------------------------------------------------------------------------
# Synthetic run directories
# --------------------------------------------------------------------------------------------


def make_run(root, name, *, row="", seed=0, dataset="cifar10", method="saat", rho=1.7, eps_max=14,
             model="preact_resnet18", num_epochs=4, n_records=None, base=0.6, trainsub=True, evals=(),
             data_format=None, label=None):
  """A run dir as launch.py and saat_jax.evaluate write it; ``evals``: [(file name, dict), ...]."""
  d = Path(root) / name
  d.mkdir(parents=True)
  config = {"seed": seed, "method": method, "num_epochs": num_epochs,
            "experiment": {"row": row, **({"label": label} if label is not None else {})},
            "data": {"name": dataset}, "model": {"name": model},
            "saat": {"rho": rho, "eps_max": eps_max / 255}, "at": {"eps": 8 / 255},
            "eval": {"eps": 8 / 255, "alpha": 2 / 255}}
  (d / "config.json").write_text(json.dumps(config))
  lines, best, best_pgd = [], 0, -1
  for e in range(num_epochs if n_records is None else n_records):
    pgd = base / 2 + 0.05 * e - (0.08 if e == num_epochs - 1 else 0)  # robust overfitting at the end
    if pgd > best_pgd:
      best, best_pgd = e, pgd
    r = {"epoch": e, "lr": 0.1, "train_loss": 1.5, "train_accuracy": 0.4 + 0.02 * e,
         "attack_eps_mean": 3.0 + e, "attack_eps_q10": 0.0, "attack_eps_q25": 1.0 + e,
         "attack_eps_q50": 2.0 + e, "attack_eps_q75": 4.0 + e, "attack_eps_q90": 6.0 + e,
         "attack_steps_mean": 4.0 + e, "attack_frac_satisfied": 0.9 - 0.05 * e,
         "test_natural_accuracy": base + 0.03 * e, "test_pgd_accuracy": pgd, "best_epoch": best}
    if data_format is not None:
      r["data_format"] = data_format
    if trainsub:
      r["trainsub_natural_accuracy"] = base + 0.05 * e
      r["trainsub_pgd_accuracy"] = pgd + 0.02 * e * rho
    lines.append(json.dumps(r))
  (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  for i, (fname, ev) in enumerate(evals):
    (d / fname).write_text(json.dumps(ev))
    os.utime(d / fname, (1_000_000 + i, 1_000_000 + i))  # later files are newer
  return str(d)


def eval_json(best, last, sweep_drop=None):
  """``best``/``last``: (natural, pgd20, aa) fractions; ``sweep_drop``: accuracy lost per 1/255."""
  def ck(vals, epoch):
    c = {"epoch": epoch, "num_test": 10000, **dict(zip(("natural", "pgd20", "aa"), vals))}
    if sweep_drop is not None:
      eps = [0, 2, 4, 8]
      c["sweep"] = {"eps_255": eps, "accuracy": [vals[0] - sweep_drop * e for e in eps]}
      c["rd"] = sweep_drop
    return c
  return {"workdir": "x", "eps_255": 8.0, "alpha_255": 2.0, "sweep_attack": "pgd",
          "checkpoints": {"best": ck(best, 3), "last": ck(last, 4)}}


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  dirs = []
  for seed, nat in enumerate((0.76, 0.77, 0.78)):  # Best Natural 76, 77, 78 -> 77.00 ± 1.00
    evals = [("eval.json", eval_json((nat, 0.56, 0.48), (0.75, 0.53, 0.47), sweep_drop=0.02))]
    if seed == 0:  # a later AA evaluation of the last checkpoint overrides eval.json's
      evals.append(("eval_aa.json", {"eps_255": 8.0, "checkpoints": {"last": {"epoch": 4, "aa": 0.44}}}))
    dirs.append(make_run(root, f"saat_s{seed}", row="saat_up_e14_r1.7", seed=seed, evals=evals))
  for seed in (0, 1):  # no eval.json: Natural/PGD-20 from metrics.jsonl, AA '–'
    dirs.append(make_run(root, f"at_s{seed}", row="at", method="at", seed=seed, base=0.6 + 0.02 * seed))
  for rho in (1.0, 1.4):
    dirs.append(make_run(root, f"rho{rho}", row=f"fig3a_r{rho:.1f}", rho=rho, eps_max=128,
                         evals=[("eval.json", eval_json((0.8, 0.5, 0.45), (0.8, 0.5, 0.45), 0.03 * rho))]))
  for x, drop in ((1, 0.01), (3, 0.015)):
    dirs.append(make_run(root, f"wrn{x}", row=f"fig3e_wrn34_{x}_saat", rho=1.5, eps_max=128, model=f"wrn34_{x}",
                         trainsub=False, evals=[("eval.json", eval_json((0.7, 0.5, 0.4), (0.7, 0.5, 0.4), drop))]))
  dirs.append(make_run(root, "unfinished", row="at", method="at", n_records=2))
  out = tmp_path_factory.mktemp("report") / "out"
  logs = []
  r = report_runs(dirs, str(out), log=logs.append)
  return r, out, logs


def _row(r, table, rid):
  return next(x for x in r["tables"][table]["rows"] if x["id"] == rid)


@pytest.mark.slow
def test_mean_std_and_paper_values(rep):
  r, out, _ = rep
  row = _row(r, "table1", "saat_up_e14_r1.7")
  cell = row["cells"]["best"]["natural"]
  assert cell["mean"] == pytest.approx(77.0) and cell["std"] == pytest.approx(1.0) and cell["n"] == 3
  assert cell["paper"] == 76.37
  assert row["text"]["best"]["natural"] == "77.00 ± 1.00 (76.37)"
  assert row["text"]["best"]["pgd20"] == "56.00 ± 0.00 (56.31)"
  # the newer eval_aa.json overrides seed 0's last AA: (44 + 47 + 47) / 3
  assert row["cells"]["last"]["aa"]["mean"] == pytest.approx(46.0)
  assert row["cells"]["best"]["rd"]["mean"] == pytest.approx(2.0)  # 0.02 per 1/255 -> 2 % per 1/255
  assert row["text"]["last"]["natural"].endswith("(76.38)")
  # AT: no eval.json -> from metrics.jsonl; best = record at best_epoch (epoch 2), last = final record
  at = _row(r, "table1", "at")
  assert at["cells"]["best"]["natural"]["values"] == pytest.approx([66.0, 68.0])
  assert at["cells"]["last"]["pgd20"]["values"] == pytest.approx([(0.3 + 0.15 - 0.08) * 100, (0.31 + 0.15 - 0.08) * 100])
  assert at["text"]["best"]["aa"] == "– (48.23)"
  assert r["runs"]["at_s0"]["checkpoints"]["best"]["epoch"] == 3
  # the same row also appears in Tables 2 (best only) and 3 (last only)
  assert r["tables"]["table2"]["kinds"] == ["best"] and r["tables"]["table3"]["kinds"] == ["last"]
  assert _row(r, "table3", "saat_up_e14_r1.7")["text"]["last"]["pgd20"] == "53.00 ± 0.00 (53.86)"


@pytest.mark.slow
def test_markdown_latex_json_written(rep):
  r, out, _ = rep
  md = (out / "table.md").read_text()
  tex = (out / "table.tex").read_text()
  assert "| SAAT_up (eps_max=14, rho=1.7) | 3 | 77.00 ± 1.00 (76.37) |" in md
  assert "## Table 1" in md and "## Table 2" in md and "Fig. 3(a)" in md and "sample standard deviation" in md
  assert r"SAAT$_{\mathrm{up}}$ ($\epsilon_{\max}$=14, $\rho$=1.7) & 3 & 77.00 $\pm$ 1.00 (76.37)" in tex
  assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == len(r["tables"])
  assert "-- (48.23)" in tex
  saved = json.loads((out / "report.json").read_text())
  assert saved["tables"]["table1"]["rows"][0]["id"] == "at"  # the paper's order
  assert set(saved["tables"]) == {"table1", "table2", "table3", "fig3a", "fig3e"}


@pytest.mark.slow
def test_figures_exist_and_are_images(rep):
  from PIL import Image

  r, out, _ = rep
  names = ["curves_saat_s0.png", "curves_at_s1.png", "budget_saat_s1.png", "gen_gap.png", "rd_capacity.png",
           "acc_vs_eps.png", "acc_vs_eps_fig3a.png", "sweep_fig3e.png"]
  for name in names:
    p = out / name
    assert p.exists(), name
    assert p.stat().st_size > 8000, name
    with Image.open(p) as im:
      assert im.size[0] > 400 and im.size[1] > 300
  assert not (out / "budget_at_s0.png").exists()  # AT has no SA-PGD budget
  assert r["figures"]["rd_capacity.png"]
  gap = r["figures"]["gen_gap.png"]
  (series,) = gap.values()
  assert sorted(series) == ["1", "1.4"]  # Fig. 3(a) runs at eps_max 128 differing in rho
  assert series["1.4"]["last"]["mean"] == pytest.approx(100 * 0.02 * 3 * 1.4)


def test_unfinished_run_is_skipped_and_named(rep):
  r, out, logs = rep
  (skipped,) = r["skipped_runs"]
  assert skipped["dir"].endswith("unfinished") and "2 of 4 epochs" in skipped["reason"]
  assert any("unfinished" in line and "2 of 4 epochs" in line for line in logs)
  assert "unfinished" not in r["runs"]


def test_no_finished_run_errors_and_writes_nothing(tmp_path, capsys):
  a = make_run(tmp_path, "a", n_records=1)
  b = make_run(tmp_path, "b", n_records=3)
  out = tmp_path / "out"
  assert main([a, b, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "error: no finished run" in err and a in err and b in err and "1 of 4 epochs" in err
  assert not out.exists()


def test_mixed_datasets_error(tmp_path):
  a = make_run(tmp_path, "c10", method="at")
  b = make_run(tmp_path, "digits", dataset="digits", method="at")
  out = tmp_path / "out"
  with pytest.raises(ReportError, match=r"different data sets.*cifar10: .*c10.*digits: .*digits"):
    report_runs([a, b], str(out), log=lambda s: None)
  assert not out.exists()
  # a run whose data set is not its paper row's is reported without the paper's numbers
  c = make_run(tmp_path, "digits_tagged", dataset="digits", row="at", method="at")
  logs = []
  r = report_runs([b, c], str(out), log=logs.append)
  assert list(r["tables"]) == ["runs"] and any("paper row 'at' is a cifar10 row" in s for s in logs)


def test_damaged_or_missing_files_error(tmp_path, capsys):
  a = make_run(tmp_path, "a")
  with open(os.path.join(a, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 4, "test_nat\n')
  out = tmp_path / "out"
  assert main([a, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert f"{os.path.join(a, 'metrics.jsonl')} is damaged at line 5" in err
  b = make_run(tmp_path, "b")
  os.remove(os.path.join(b, "config.json"))
  with pytest.raises(ReportError, match=re.escape(os.path.join(b, "config.json")) + " is missing"):
    report_runs([b], str(out), log=lambda s: None)
  c = make_run(tmp_path, "c", evals=[("eval.json", {"checkpoints": {"best": {"natural": 76.4}}})])
  with pytest.raises(ReportError, match=r"eval\.json: checkpoints\.best\.natural = 76\.4 is not a fraction"):
    report_runs([c], str(out), log=lambda s: None)
  for name, columns, checkpoint, message in (
      ("e", ["fgsm"], {"fgsm": 0.3}, r"eval\.json is damaged: 'columns' must map each key to its header"),
      ("f", {"fgsm": "FGSM"}, {"fgsm": 30.0}, r"checkpoints\.best\.fgsm = 30\.0 is not a fraction")):
    e = make_run(tmp_path, name, evals=[("eval.json", {"columns": columns, "checkpoints": {"best": checkpoint}})])
    with pytest.raises(ReportError, match=message):
      report_runs([e], str(out), log=lambda s: None)
  d = make_run(tmp_path, "d", row="saat_up_e14_r17")
  with pytest.raises(ReportError, match=r"experiment\.row: .*did you mean 'saat_up_e14_r1\.7'"):
    report_runs([d], str(out), log=lambda s: None)
  assert not out.exists()


def test_cli_on_a_folder_of_runs(tmp_path, capsys):
  root = tmp_path / "runs"
  make_run(root, "x/s0", method="at", trainsub=False)
  make_run(root, "x/s1", method="at", seed=1, trainsub=False)
  out = tmp_path / "out"
  assert main([str(root), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "## Runs not tied to a paper row" in printed and "| at (eps=8), preact_resnet18 | cifar10 | 2 |" in printed
  assert "acc_vs_eps.png: no eval.json sweep" in printed  # a skipped figure is listed, not drawn
  assert not (out / "acc_vs_eps.png").exists() and (out / "curves_s1.png").exists()
  saved = json.loads((out / "report.json").read_text())
  assert "gen_gap.png" in saved["skipped_figures"]


def test_format_cell_marks_missing_seeds():
  assert report.format_cell(report.summarize([48.0]), 48.86, 3) == "48.00 [n=1] (48.86)"
  assert report.format_cell(report.summarize([]), None, 3) == "–"
  assert report.summarize([1.0, 2.0, 3.0])["std"] == pytest.approx(1.0)  # ddof=1


def test_eval_at_another_eps_is_left_out(tmp_path):
  ev16 = eval_json((0.5, 0.2, 0.1), (0.5, 0.2, 0.1), sweep_drop=0.01)
  ev16["eps_255"] = 16.0
  a = make_run(tmp_path, "a", evals=[("eval.json", eval_json((0.7, 0.4, 0.3), (0.7, 0.4, 0.3))),
                                     ("eval_eps16.json", ev16),
                                     ("eval_ema.json", {**eval_json((0.9,) * 3, (0.9,) * 3), "weights": "ema"})])
  logs = []
  r = report_runs([a], str(tmp_path / "out"), log=logs.append)
  best = r["runs"]["a"]["checkpoints"]["best"]
  assert best["natural"]["value"] == pytest.approx(70.0) and best["natural"]["source"] == "eval.json"
  assert best["rd"]["value"] == pytest.approx(1.0) and best["rd"]["source"] == "eval_eps16.json"
  assert any("eval_eps16.json" in s and "eps 16/255" in s for s in logs)
  assert any("eval_ema.json evaluates the ema weights" in s for s in logs)  # the run reports raw weights


def test_runs_evaluated_every_other_epoch_are_reported(tmp_path):
  """eval.every > 1 leaves epochs without test metrics ("evaluated": false): still a finished run."""
  import json
  from saat_jax.report import report_runs
  run = tmp_path / "run"
  run.mkdir()
  cfg = {"seed": 0, "method": "at", "num_epochs": 3, "data": {"name": "digits"}, "model": {"name": "small_cnn"},
         "at": {"eps": 32 / 255}, "eval": {"eps": 32 / 255}, "experiment": {"row": "", "label": ""}}
  (run / "config.json").write_text(json.dumps(cfg))
  recs = [{"epoch": 0, "best_epoch": -1, "evaluated": False, "train_accuracy": 0.5},
          {"epoch": 1, "best_epoch": 1, "evaluated": True, "train_accuracy": 0.6,
           "test_natural_accuracy": 0.9, "test_pgd_accuracy": 0.7},
          {"epoch": 2, "best_epoch": 1, "evaluated": True, "train_accuracy": 0.7,
           "test_natural_accuracy": 0.92, "test_pgd_accuracy": 0.65}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  out = report_runs([str(run)], str(tmp_path / "out"))
  assert (tmp_path / "out" / "curves_run.png").stat().st_size > 5000
  text = (tmp_path / "out" / "table.md").read_text()
  assert "70.00" in text and "65.00" in text  # best PGD-20 at epoch 2, last at epoch 3
  assert out


def test_a_run_trained_on_after_its_evaluation_shows_its_new_last_epoch(tmp_path):
  """eval.json measured 'last' at epoch 3, then the run went on to 4 epochs (num_epochs 3 -> 4): the
  report says last epoch 4, takes Natural/PGD-20 from metrics.jsonl's epoch 4, marks the older AA and
  RD (†) beside the cells and in a note, and warns with the command that measures them again."""
  ev = eval_json((0.7, 0.4, 0.3), (0.71, 0.41, 0.31), sweep_drop=0.02)
  ev["checkpoints"]["last"]["epoch"] = 3  # the best (epoch 3) is still current
  a = make_run(tmp_path, "a", evals=[("eval.json", ev)])
  logs = []
  r = report_runs([a], str(tmp_path / "out"), log=logs.append)
  last = r["runs"]["a"]["checkpoints"]["last"]
  assert last["epoch"] == 4 and r["runs"]["a"]["num_epochs"] == 4
  assert last["natural"] == {"value": pytest.approx(100 * (0.6 + 0.03 * 3)), "source": "metrics.jsonl",
                             "num_test": None}
  assert last["aa"] == {"value": pytest.approx(31.0), "source": "eval.json", "num_test": 10000, "measured_epoch": 3}
  assert last["rd"]["measured_epoch"] == 3 and "measured_epoch" not in r["runs"]["a"]["checkpoints"]["best"]["aa"]
  assert {(o["key"], o["shown"]) for o in last["older"]} == {("natural", "metrics.jsonl"), ("pgd20", "metrics.jsonl"),
                                                            ("aa", "marked"), ("sweep", "marked")}
  (row,) = r["tables"]["runs"]["rows"]
  assert row["text"]["last"]["aa"] == "31.00†" and row["text"]["best"]["aa"] == "30.00"
  assert row["text"]["last"]["rd"] == "2.00†"
  cmd = f"python -m saat_jax.evaluate --workdir {a} --eval.checkpoints=last --eval.sweep=0,2,4,8"
  (older,) = r["runs"]["a"]["older_evaluations"]
  assert older["command"] == cmd and older["marked"] == ["aa", "sweep"] and older["replaced"] == ["natural", "pgd20"]
  (warning,) = [s for s in logs if "trained on after" in s]
  assert warning.startswith(f"warning: {a}: eval.json measured the last checkpoint at epoch 3, but the run's last "
                            "checkpoint is now epoch 4")
  assert "AA/the eps sweep and its RD are shown marked † (older checkpoint)" in warning
  assert "Natural/PGD-20 are the epoch-4 numbers of metrics.jsonl" in warning and warning.endswith(cmd)
  md = (tmp_path / "out" / "table.md").read_text()
  assert "| 31.00† | 2.00† |" in md
  assert "† measured on an older checkpoint than the run's current one" in md
  assert "a last AA, RD (eval.json of epoch 3; the checkpoint is now epoch 4)" in md
  assert r"31.00$^\dagger$" in (tmp_path / "out" / "table.tex").read_text()


def test_an_older_checkpoints_numbers_do_not_override_the_current_ones(tmp_path):
  """eval files merge newest last, but a newer file's value of an older epoch (say one copied back)
  does not replace the value measured on the run's checkpoint now."""
  old = eval_json((0.5, 0.2, 0.1), (0.5, 0.2, 0.1))
  old["checkpoints"]["last"]["epoch"] = 2
  a = make_run(tmp_path, "a", evals=[("eval.json", eval_json((0.7, 0.4, 0.3), (0.7, 0.4, 0.3))),
                                     ("eval-old.json", old)])
  r = report_runs([a], str(tmp_path / "out"), log=lambda s: None)
  last = r["runs"]["a"]["checkpoints"]["last"]
  assert last["aa"] == {"value": pytest.approx(30.0), "source": "eval.json", "num_test": 10000}
  assert "older" not in last and r["runs"]["a"]["older_evaluations"] == []
  assert r["runs"]["a"]["checkpoints"]["best"]["aa"]["source"] == "eval-old.json"  # same epoch: newest wins


@pytest.mark.slow
def test_nested_runs_are_all_found_and_skipped_paths_said(tmp_path):
  """The README's layout: runs/digits is a run and holds runs/digits/<method>. Every run is found
  from the parent folder; `runs/digits/*` (a run's files and checkpoints/ among the runs) skips those
  paths with a reason each; paths holding no run at all are an error."""
  root = tmp_path / "runs"
  top = make_run(root, "digits", dataset="digits", method="saat", label="digits saat")
  (root / "digits" / "checkpoints" / "best" / "3").mkdir(parents=True)
  (root / "digits" / "plots").mkdir()
  at = make_run(root, "digits/at", dataset="digits", method="at", label="digits at")
  up = make_run(root, "digits/saat_up", dataset="digits", method="saat", label="digits saat_up")
  for paths in ([str(root)], [top]):
    r = report_runs(paths, str(tmp_path / "out"), log=lambda s: None)
    assert sorted(v["dir"] for v in r["runs"].values()) == sorted([top, at, up]) and r["skipped_paths"] == []
  logs = []
  r = report_runs(sorted(str(p) for p in (root / "digits").iterdir()), str(tmp_path / "out2"), log=logs.append)
  assert sorted(v["dir"] for v in r["runs"].values()) == [at, up]
  reasons = {os.path.basename(s["path"]): s["reason"] for s in r["skipped_paths"]}
  assert [s.get("of_run") for s in r["skipped_paths"]] == [None, top, top, None]  # sorted: checkpoints first
  assert reasons == {"config.json": f"a file of the run {top}, not a run directory",
                     "metrics.jsonl": f"a file of the run {top}, not a run directory",
                     "checkpoints": f"the checkpoint folder of the run {top}, not a run directory",
                     "plots": reasons["plots"]}
  assert reasons["plots"].startswith("no config.json in it or below it")
  assert f"warning: skipped {top}/checkpoints: the checkpoint folder of the run {top}, not a run directory" in logs
  assert (f"warning: skipped config.json, metrics.jsonl in {top}: files of the run {top}, not run directories (pass {top} "
          "itself to report that run)") in logs
  with pytest.raises(ReportError, match=r"plots holds no run: no config\.json in it or below it"):
    report_runs([str(root / "digits" / "plots")], str(tmp_path / "out3"), log=lambda s: None)
  with pytest.raises(ReportError, match=r"no run directory among the paths given: .*config\.json: a file of the run"):
    report_runs([top + "/config.json", top + "/plots"], str(tmp_path / "out3"), log=lambda s: None)
  with pytest.raises(ReportError, match=r"runs/nope does not exist"):
    report_runs([str(root / "nope"), at], str(tmp_path / "out3"), log=lambda s: None)
  assert not (tmp_path / "out3").exists()


def test_runs_on_jpeg_reencoded_data_are_marked(tmp_path):
  """metrics.jsonl records with data_format 'image-folder-jpeg' (the JPEG-q75 CIFAR copy): a ‡ beside
  the row's name, a footnote in Markdown and LaTeX, fields in report.json; other formats and records
  without the key: no mark."""
  a = make_run(tmp_path, "jpeg", row="at", method="at", data_format="image-folder-jpeg")
  b = make_run(tmp_path, "official", method="at", seed=1, data_format="cifar10-python")
  c = make_run(tmp_path, "old", method="trades", seed=2)
  r = report_runs([a, b, c], str(tmp_path / "out"), log=lambda s: None)
  note = "data: JPEG re-encoded, not the official CIFAR-10"
  assert r["runs"]["jpeg"]["data_format"] == "image-folder-jpeg" and r["runs"]["jpeg"]["data_note"] == note
  assert r["runs"]["official"]["data_note"] is None and r["runs"]["old"]["data_format"] is None
  at = _row(r, "table1", "at")
  assert at["lead"][0] == "AT ‡" and at["data_note"] == note
  assert r["tables"]["table1"]["notes"] == [f"‡ {note}: AT (jpeg)."] and at["data_note_runs"] == ["jpeg"]
  assert all("data_note" not in row for row in r["tables"]["runs"]["rows"]) and "notes" not in r["tables"]["runs"]
  md = (tmp_path / "out" / "table.md").read_text()
  assert "| AT ‡ | 1 |" in md and f"\n‡ {note}: AT (jpeg).\n" in md
  tex = (tmp_path / "out" / "table.tex").read_text()
  assert r"AT $^\ddagger$ & 1" in tex and r"\footnotesize $^\ddagger$ data: JPEG re-encoded" in tex


@pytest.fixture
def drawn(monkeypatch):
  """The figures the report saves, by file name (saved, so their layout is final)."""
  from saat_jax.report import figures

  out, real = {}, figures.save_figure

  def capture(fig, path):
    real(fig, path)
    out[os.path.basename(path)] = fig

  monkeypatch.setattr(figures, "save_figure", capture)
  return out


def _legend_below_every_axes(fig) -> bool:
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  canvas = FigureCanvasAgg(fig)  # the saved figure's canvas is gone with pyplot.close
  canvas.draw()
  renderer = canvas.get_renderer()
  top = fig.legends[0].get_window_extent(renderer).y1
  return all(ax.get_legend() is None and top <= ax.get_window_extent(renderer).y0 for ax in fig.axes)


METHODS11 = ("natural", "at", "saat_down", "saat_up", "trades", "sa_trades_up", "awp_at", "awp_saat_down",
             "awp_saat_up", "awp_trades", "awp_sa_trades_up")


@pytest.mark.slow
def test_eleven_runs_in_one_figure_are_told_apart_and_named_by_their_labels(tmp_path, drawn):
  """Every digits method in one acc_vs_eps figure: 11 curves of 11 different (marker, line style),
  legend entries by config.experiment.label (not the folder), the y axis naming the attack."""
  from saat_jax.report.figures import SWEEP_PGD_NOTE

  dirs = [make_run(tmp_path, f"runs/{m}", dataset="digits", method="at", model="small_cnn", label=f"digits {m}",
                   seed=0, evals=[("eval.json", eval_json((0.9 - 0.01 * i,) * 3, (0.9 - 0.01 * i,) * 3, 0.01))])
          for i, m in enumerate(METHODS11)]
  report_runs(dirs, str(tmp_path / "out"), log=lambda s: None)
  fig = drawn["acc_vs_eps.png"]
  for ax in fig.axes:
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 11
    # not told apart by colour alone (a colormap band): each curve its own marker or line style
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == 11
    assert sorted(line.get_label().split(" (RD")[0] for line in lines) == sorted(f"digits {m}" for m in METHODS11)
    assert ax.get_ylabel() == "accuracy under PGD (%)"
  assert fig.get_supxlabel() == SWEEP_PGD_NOTE
  assert drawn["curves_awp_at.png"].axes[0].get_title() == "digits awp_at, seed 0"


def test_the_budget_legend_is_outside_the_panels(tmp_path, drawn):
  """The SA-PGD budget figure's legend sits under both panels, so no curve (of the twin axis either)
  crosses it (it did inside the lower panel)."""
  a = make_run(tmp_path, "a", label="digits saat_up")
  report_runs([a], str(tmp_path / "out"), log=lambda s: None)
  fig = drawn["budget_a.png"]
  assert len(fig.axes) == 3 and _legend_below_every_axes(fig)
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      "q10-q90", "q25-q75", "median", "mean", "eps_max = 14/255", "loss >= rho reached (%)", "mean PGD steps"]


def test_runs_are_named_by_label_row_or_method_and_folders_break_ties(tmp_path):
  from saat_jax.report import load_run, run_labels

  dirs = [make_run(tmp_path, "x/s0", label="digits at", method="at"),
          make_run(tmp_path, "x/s1", label="digits at", method="at", seed=1),
          make_run(tmp_path, "copy/s1", label="digits at", method="at", seed=1),
          make_run(tmp_path, "row", row="saat_up_e14_r1.7"),
          make_run(tmp_path, "plain", method="trades")]
  runs = [load_run(d) for d in dirs]
  for r, name in zip(runs, ("s0", "s1", "copy_s1", "row", "plain")):
    r.name = name
  assert run_labels(runs) == ["digits at, seed 0", "digits at, seed 1 [s1]", "digits at, seed 1 [copy_s1]",
                              "SAAT_up (eps_max=14, rho=1.7)", "trades, preact_resnet18"]


def test_another_pgd_step_count_is_never_reported_as_pgd20(tmp_path):
  """An eval.json of --eval.steps=50 holds pgd50: the PGD-20 column keeps metrics.jsonl's PGD-20, and
  the PGD-50 number stays beside it under its own key, in report.json and as a column of its own."""
  ev = eval_json((0.7, 0.4, 0.3), (0.7, 0.4, 0.3))
  for ck in ev["checkpoints"].values():
    ck["pgd50"] = ck.pop("pgd20") - 0.05
  ev["pgd_steps"] = 50
  a = make_run(tmp_path, "a", evals=[("eval.json", ev)])
  r = report_runs([a], str(tmp_path / "out"), log=lambda s: None)
  last = r["runs"]["a"]["checkpoints"]["last"]
  assert last["pgd20"]["source"] == "metrics.jsonl" and last["pgd50"]["value"] == pytest.approx(35.0)
  assert last["aa"]["source"] == "eval.json"
  table = r["tables"]["runs"]
  assert table["metrics"]["last"] == ["natural", "pgd20", "aa", "pgd50"] and table["names"]["pgd50"] == "PGD-50"
  (row,) = table["rows"]
  assert row["text"]["last"]["pgd50"].startswith("35.0") and row["cells"]["last"]["pgd20"]["values"] != [35.0]
