"""The comparison report: table rows and figures from a hand-written summary."""

import json
import os
import subprocess
import sys

import pytest

from dualformer_jax.eval.metrics import METRIC_KEYS
from dualformer_jax.experiments import report


def metrics(**kw):
  m = dict.fromkeys(METRIC_KEYS, 0.0)
  m.update(num_tasks=200, num_samples=64, slow_share=None, mean_trace_len_correct=None)
  m.update(kw)
  return m


SUMMARY = {
    "task": "maze",
    "reference": {"complete_trace_len_mean": 200.0},
    "models": {
        "solution_only": {"fast": metrics(**{"1_optimal": 0.25, "3_optimal": 0.1})},
        "complete_trace": {"slow": metrics(**{"1_optimal": 0.5, "mean_trace_len": 210.0})},
        "dualformer": {"fast": metrics(**{"1_optimal": 0.4}),
                       "slow": metrics(**{"1_optimal": 0.6, "mean_trace_len": 100.0,
                                          "mean_trace_clauses": 20.0}),
                       "auto": metrics(**{"1_optimal": 0.55, "mean_trace_len": 80.0,
                                          "slow_share": 0.75})}},
}


def test_markdown_has_one_row_per_model_and_mode():
  lines = report.markdown(SUMMARY).splitlines()
  assert lines[0].startswith("| model | mode | 1-Solved-64 | 1-Optimal-64 |")
  rows = [l for l in lines[2:] if l.startswith("| ")]
  assert [r.split(" | ")[:2] for r in rows] == [
      ["| Solution-Only", "fast"], ["| Complete-Trace", "slow"], ["| Dualformer", "fast"],
      ["| Dualformer", "slow"], ["| Dualformer", "auto"]]
  cells = [c.strip() for c in rows[3].split("|")[1:-1]]
  assert cells[3] == "60.0%" and cells[8:10] == ["100.0", "20.0"]  # trace tokens, clauses
  assert cells[10:12] == ["-52%", "-50%"]  # vs Complete-Trace's 210 tokens, vs A*'s 200
  assert [c.strip() for c in rows[4].split("|")[1:-1]][12] == "75.0%"
  assert [c.strip() for c in rows[0].split("|")[1:-1]][8:12] == ["0.0", "0.0", "-", "-"]
  old = {**SUMMARY, "models": {"dualformer": {"slow": {
      k: v for k, v in SUMMARY["models"]["dualformer"]["slow"].items()
      if "clauses" not in k}}}}  # a summary written before clauses were counted
  assert [c.strip() for c in report.markdown(old).splitlines()[2].split("|")[1:-1]][9] == "-"
  assert "200 unseen test tasks x 64 responses" in report.markdown(SUMMARY)


def test_write_report_draws_every_figure(tmp_path):
  paths = report.write_report(str(tmp_path), SUMMARY)  # no run directories: empty loss plot
  assert [os.path.basename(p) for p in paths] == [
      "results.md", "optimal.png", "reasoning_length.png", "loss.png"]
  for p in paths:
    assert os.path.getsize(p) > 0


SWEEP = {"num_train": [1000, 3000], "points": {
    "1000": {"models": {"solution_only": {"fast": metrics(**{"1_optimal": 0.2, "swc": 0.1})},
                        "dualformer": {"fast": metrics(**{"1_optimal": 0.5}),
                                       "slow": metrics(**{"1_optimal": 0.6})},
                        "searchformer_r1": {"slow": metrics(**{"1_optimal": 0.45,
                                                               "mean_trace_clauses": 9.0})}},
             "selected_step": {"solution_only": 750, "dualformer": 3000,
                               "searchformer_r1": 500}},
    "3000": {"models": {"solution_only": {"fast": metrics(**{"1_optimal": 0.7})},
                        "dualformer": {"fast": metrics(**{"1_optimal": 0.65}),
                                       "slow": metrics(**{"1_optimal": 0.75})}},
             "selected_step": {"solution_only": 3000, "dualformer": 3000}}}}


def test_the_sweep_table_has_a_row_per_point_model_and_mode(tmp_path):
  lines = report.sweep_markdown(SWEEP).splitlines()
  rows = [[c.strip() for c in l.split("|")[1:-1]] for l in lines[2:] if l.startswith("| ")]
  assert [r[:3] for r in rows] == [
      ["1,000", "Solution-Only", "fast"], ["1,000", "Dualformer", "fast"],
      ["1,000", "Dualformer", "slow"], ["1,000", "Searchformer r1", "slow"],
      ["3,000", "Solution-Only", "fast"], ["3,000", "Dualformer", "fast"],
      ["3,000", "Dualformer", "slow"]]
  assert rows[0][3] == "20.0%" and rows[0][5] == "0.100" and rows[0][8] == "750"
  assert rows[3][7] == "9.0" and "k-Optimal-64" in lines[-1]
  paths = report.write_sweep_report(str(tmp_path), SWEEP)
  assert [os.path.basename(p) for p in paths] == ["sweep.md", "sweep.png"]
  assert all(os.path.getsize(p) > 0 for p in paths)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("module,flag", [("dualformer_jax.experiments.report", "--workdir"),
                                         ("dualformer_jax.experiments.compare", "--models"),
                                         ("dualformer_jax.experiments.sweep", "--workdir"),
                                         ("dualformer_jax.experiments.tune", "--workdir"),
                                         ("dualformer_jax.show_data", "--num")])
def test_entry_points_answer_help(module, flag):
  """One CLI style (absl flags): each entry point lists its flags under --help."""
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert "Traceback" not in out.stderr, out.stderr  # absl's --help exits with status 1
  assert f"{flag}:" in out.stdout and "python -m" in out.stdout  # the docstring, then flags


def test_report_cli_rewrites_the_report(tmp_path):
  (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
  out = subprocess.run([sys.executable, "-m", "dualformer_jax.experiments.report",
                        f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "results.md").exists() and (tmp_path / "optimal.png").exists()
  missing = subprocess.run([sys.executable, "-m", "dualformer_jax.experiments.report",
                            f"--workdir={tmp_path / 'none'}"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 1 and missing.stderr.startswith("error: ")
