"""The trace CLI: one JSON answer per input line, errors as lines, order kept."""

import io
import json
import os
import pathlib
import subprocess
import sys
import time

from dualformer_jax import trace_cli
from dualformer_jax.tasks.maze import MazeTask
from dualformer_jax.tasks.sokoban import SokobanTask

REPO = pathlib.Path(__file__).resolve().parents[1]

GOOD = {"width": 4, "height": 3, "start": [0, 0], "goal": [3, 2], "walls": [[1, 1], [2, 1]]}
UNSOLVABLE = {"width": 3, "height": 3, "start": [0, 0], "goal": [0, 2],
              "walls": [[0, 1], [1, 1], [2, 1]]}
FIXTURE = {"width": 3, "height": 3, "start": [0, 0], "goal": [0, 2], "walls": [[0, 1], [1, 1]]}


def run_cli(stdin: str, *flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "dualformer_jax.trace_cli", *flags],
                        input=stdin, capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=120, check=False)


def test_cli_answers_every_line_in_order():
  lines = [
      json.dumps(GOOD),
      "{not json",
      json.dumps({**GOOD, "width": -1}),
      json.dumps(UNSOLVABLE),
      "",
      "[1, 2]",
      json.dumps({k: v for k, v in GOOD.items() if k != "goal"}),
      json.dumps(FIXTURE),
  ]
  proc = run_cli("\n".join(lines) + "\n", "--task=maze")
  assert proc.returncode == 0, proc.stderr
  out = [json.loads(line) for line in proc.stdout.splitlines()]
  assert len(out) == len(lines)
  task = MazeTask(4)
  for i in (0, 7):
    toks = task.solve_tokens(task.spec_from_json(json.loads(lines[i])))
    assert out[i] == {"prompt": toks.prompt, "reasoning": toks.trace, "plan": toks.plan}
  assert out[7]["plan"] == ["plan", "0", "0", "plan", "1", "0", "plan", "2", "0", "plan", "2", "1",
                            "plan", "2", "2", "plan", "1", "2", "plan", "0", "2"]
  assert "invalid JSON" in out[1]["error"]
  assert "width=-1" in out[2]["error"]
  assert "unsolvable" in out[3]["error"]
  assert "blank line" in out[4]["error"]
  assert "JSON object" in out[5]["error"]
  assert "missing field 'goal'" in out[6]["error"]


def test_cli_last_line_without_newline_and_empty_input():
  proc = run_cli(json.dumps(FIXTURE), "--task=maze")
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout.splitlines()) == 1 and "reasoning" in json.loads(proc.stdout)
  proc = run_cli("", "--task=maze")
  assert proc.returncode == 0 and proc.stdout == ""


def test_run_in_process_counts_errors():
  task = trace_cli.make_cli_task("maze", size=5)
  assert isinstance(task, MazeTask) and task.size == 5
  out = io.StringIO()
  errors = trace_cli.run(task, [json.dumps(GOOD) + "\n", "\n", json.dumps(UNSOLVABLE)], out)
  answers = [json.loads(line) for line in out.getvalue().splitlines()]
  assert errors == 2 and len(answers) == 3
  assert answers[0]["prompt"][:6] == ["start", "0", "0", "goal", "3", "2"]
  assert answers[0]["reasoning"][:5] == ["create", "0", "0", "c0", "c5"]


def test_cli_sokoban_through_the_generic_task():
  lines = [json.dumps({"level": ["#####", "#@$.#", "#####"]}),  # push right once
           json.dumps({"level": ["#####", "#@.$#", "#####"]}),  # box in a corner: dead
           json.dumps({"level": "#####"}),
           "not json"]
  proc = run_cli("\n".join(lines) + "\n", "--task=sokoban")
  assert proc.returncode == 0, proc.stderr
  out = [json.loads(line) for line in proc.stdout.splitlines()]
  assert len(out) == len(lines)
  task = SokobanTask()
  toks = task.solve_tokens(task.spec_from_json(json.loads(lines[0])))
  assert out[0] == {"prompt": toks.prompt, "reasoning": toks.trace, "plan": toks.plan}
  assert out[0]["plan"] == ["plan", "1", "1", "plan", "2", "1"]
  assert "unsolvable" in out[1]["error"]
  assert "level" in out[2]["error"]
  assert "invalid JSON" in out[3]["error"]


def test_cli_answers_hostile_lines_and_goes_on():
  """Deep nesting, a 5,000-digit integer and a non-UTF-8 byte each cost one error line."""
  lines = [b"[" * 100_000 + b"]" * 100_000,
           b'{"width": ' + b"9" * 5000 + b"}",
           b'{"width": 3\xff}',
           json.dumps(FIXTURE).encode()]
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "dualformer_jax.trace_cli", "--task=maze"],
                        input=b"\n".join(lines) + b"\n", capture_output=True, cwd=REPO, env=env,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
  assert len(out) == len(lines)
  assert "nested too deeply" in out[0]["error"]
  assert "digits" in out[1]["error"]
  assert "not UTF-8" in out[2]["error"]
  assert out[3]["plan"][:3] == ["plan", "0", "0"]


def test_huge_inputs_get_a_quick_error_line():
  """Duplicate walls are found in linear time, and Sokoban levels are capped before any
  table is built (before: 14 s for 30k walls; 50 s and 4.5 GB for a 1500x1500 level)."""
  walls = [[5, 5]] * 30_000
  start = time.perf_counter()
  out = trace_cli.answer_line(MazeTask(10), json.dumps(
      {"width": 300, "height": 300, "start": [0, 0], "goal": [1, 1], "walls": walls}))
  assert "duplicate walls [(5, 5)]" in out["error"]
  out = trace_cli.answer_line(SokobanTask(), json.dumps({"level": ["#" * 1500] * 1500}))
  assert "1500x1500 level: at most" in out["error"]
  assert time.perf_counter() - start < 5.0
