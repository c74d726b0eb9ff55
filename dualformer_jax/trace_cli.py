"""JSON lines of task specs in, JSON lines of token sequences out (deterministic A*).

  echo '{"width": 3, "height": 3, "start": [0, 0], "goal": [2, 2], "walls": []}' \\
    | python -m dualformer_jax.trace_cli --task=maze
  python -m dualformer_jax.trace_cli --task=sokoban < levels.jsonl > traces.jsonl

Input, one object per line: maze `{"width", "height", "start": [x, y],
"goal": [x, y], "walls": [[x, y], ...]}` (any width and height); Sokoban
`{"level": ["#######", "#  .  #", ...]}`. Output, one line per input line,
in order: `{"prompt": [...], "reasoning": [...], "plan": [...]}` (string
tokens; reasoning is the A* trace), or `{"error": "..."}` for a line that is
not JSON, has a bad field or has no solution; the command then goes on. A
blank line also gets an error line, so output line i always answers input
line i. Hostile input is bounded: lines over MAX_LINE_BYTES, bytes that are
not UTF-8, nesting too deep for the parser and integers too long to convert
each get an error line; grids are capped by the tasks (maze.MAX_SIDE,
sokoban.MAX_SIDE / MAX_BOXES).
"""

from __future__ import annotations

import json
import sys
from typing import BinaryIO, Iterable, TextIO

from absl import app
from absl import flags

from dualformer_jax import config as config_lib
from dualformer_jax.tasks import TASKS, base, make_task

_TASK = flags.DEFINE_enum("task", "maze", list(TASKS), "Task of the input lines.")
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
  return make_task(c.task)


# A 1000x1000 maze with every cell listed is ~12 MB of JSON; longer lines are refused.
MAX_LINE_BYTES = 32 << 20


def answer_line(task: base.Task, line: str | bytes) -> dict:
  """One output object for one input line; every failure becomes {"error": ...}."""
  if len(line) > MAX_LINE_BYTES:
    return {"error": f"line of {len(line)} bytes, longer than {MAX_LINE_BYTES}"}
  if isinstance(line, bytes):
    try:
      line = line.decode("utf-8")
    except UnicodeDecodeError as e:
      return {"error": f"not UTF-8: byte {line[e.start]:#04x} at offset {e.start}"}
  if not line.strip():
    return {"error": "blank line"}
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    return {"error": f"invalid JSON: {e}"}
  except RecursionError:
    return {"error": "invalid JSON: nested too deeply"}
  except ValueError as e:  # e.g. an integer of thousands of digits
    return {"error": f"invalid JSON: {str(e)[:200]}"}
  if not isinstance(obj, dict):
    return {"error": f"expected a JSON object, got {type(obj).__name__}"}
  try:
    spec = task.spec_from_json(obj)
  except (ValueError, TypeError, KeyError, RecursionError) as e:  # parsers say ValueError
    return {"error": f"bad {task.name} spec: {str(e)[:500]}"}
  try:
    toks = task.solve_tokens(spec, seed=None)
  except base.Unsolvable as e:  # includes astar.SearchLimit
    return {"error": f"unsolvable: {e}"}
  except MemoryError:
    return {"error": "out of memory solving this task"}
  return {"prompt": toks.prompt, "reasoning": toks.trace, "plan": toks.plan}


def run(task: base.Task, lines: Iterable[str | bytes], out: TextIO) -> int:
  """Answers every line (str, or bytes decoded here line by line); returns the error lines."""
  errors = 0
  for line in lines:
    try:
      result = answer_line(task, line)
    except Exception as e:  # a bug on one line must not leave the later lines unanswered
      result = {"error": f"internal error ({type(e).__name__}: {str(e)[:200]})"}
    errors += "error" in result
    out.write(json.dumps(result) + "\n")
    out.flush()  # a caller feeding lines one by one sees each answer at once
  return errors


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; input is read from stdin")
  # Bytes, decoded per line: one non-UTF-8 byte must cost one error line, not the stream.
  stdin: BinaryIO = sys.stdin.buffer
  run(make_cli_task(_TASK.value, _SIZE.value, _MAX_EXPANSIONS.value), stdin, sys.stdout)


if __name__ == "__main__":
  app.run(main)
