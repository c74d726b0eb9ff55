"""JSON lines of task specs in, JSON lines of token sequences out (deterministic A*).

  echo '{"width": 3, "height": 3, "start": [0, 0], "goal": [2, 2], "walls": []}' \\
    | python -m dualformer_jax.tasks.trace_cli --task=maze
  python -m dualformer_jax.tasks.trace_cli --task=sokoban < levels.jsonl > traces.jsonl

Input, one object per line: maze `{"width", "height", "start": [x, y],
"goal": [x, y], "walls": [[x, y], ...]}` (any width and height); Sokoban
`{"level": ["#######", "#  .  #", ...]}`. Output, one line per input line,
in order: `{"prompt": [...], "reasoning": [...], "plan": [...]}` (string
tokens; reasoning is the A* trace), or `{"error": "..."}` for a line that is
not JSON, has a bad field or has no solution; the command then goes on. A
blank line also gets an error line, so output line i always answers input
line i.
"""

from __future__ import annotations

import json
import sys
from typing import Iterable, TextIO

from absl import app
from absl import flags

from dualformer_jax import config as config_lib
from dualformer_jax.tasks import base

_TASK = flags.DEFINE_enum("task", "maze", list(config_lib.TASKS), "Task of the input lines.")
_SIZE = flags.DEFINE_integer(
    "size", None, "config.task.size (default: base_config's). Maze lines carry their own "
    "width and height; a Sokoban task may bound its levels by it.")
_MAX_EXPANSIONS = flags.DEFINE_integer(
    "max_expansions", None, "Sokoban: give up on a level after this many A* expansions "
    "(default: config.task.max_expansions).")


def make_cli_task(name: str, size: int | None = None,
                  max_expansions: int | None = None) -> base.Task:
  """The task from the base config, with the CLI's overrides."""
  c = config_lib.base_config()
  c.task.name = name
  if size is not None:
    c.task.size = size
  if max_expansions is not None:
    c.task.max_expansions = max_expansions
  return base.make_task(c.task)


def answer_line(task: base.Task, line: str) -> dict:
  """One output object for one input line; every failure becomes {"error": ...}."""
  if not line.strip():
    return {"error": "blank line"}
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    return {"error": f"invalid JSON: {e}"}
  if not isinstance(obj, dict):
    return {"error": f"expected a JSON object, got {type(obj).__name__}"}
  try:
    spec = task.spec_from_json(obj)
  except (ValueError, TypeError, KeyError) as e:  # a task's parser should say ValueError
    return {"error": f"bad {task.name} spec: {e}"}
  try:
    toks = task.solve_tokens(spec, seed=None)
  except base.Unsolvable as e:  # includes astar.SearchLimit
    return {"error": f"unsolvable: {e}"}
  return {"prompt": toks.prompt, "reasoning": toks.trace, "plan": toks.plan}


def run(task: base.Task, lines: Iterable[str], out: TextIO) -> int:
  """Answers every line; returns the number of error lines."""
  errors = 0
  for line in lines:
    result = answer_line(task, line)
    errors += "error" in result
    out.write(json.dumps(result) + "\n")
    out.flush()  # a caller feeding lines one by one sees each answer at once
  return errors


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; input is read from stdin")
  run(make_cli_task(_TASK.value, _SIZE.value, _MAX_EXPANSIONS.value), sys.stdin, sys.stdout)


if __name__ == "__main__":
  app.run(main)
