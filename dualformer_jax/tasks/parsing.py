"""Never-raising token parsing shared by the tasks' checkers and JSON readers."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from dualformer_jax.data.vocab import strip_specials
from dualformer_jax.tasks.base import CLOSE, CREATE, PLAN, Verdict

Cell = tuple[int, int]


def is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def json_cell(v: Any, field: str, width: int, height: int) -> Cell:
  """`[x, y]` from a JSON task spec; ValueError names the field."""
  if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(c) for c in v)):
    raise ValueError(f"{field}={v!r}: must be [x, y] with integer coordinates")
  x, y = int(v[0]), int(v[1])
  if not (0 <= x < width and 0 <= y < height):
    raise ValueError(f"{field}={v!r}: outside the {width}x{height} grid")
  return (x, y)


def clean_tokens(tokens: Any) -> list:
  """The tokens as `vocab.strip_specials` reads them, anything not a str replaced by None."""
  try:
    return strip_specials(t if isinstance(t, str) else None for t in tokens)
  except TypeError:  # not iterable at all
    return []


def number(tok: Any) -> int | None:
  """A coordinate token ("0", "17": ASCII digits, no leading zero), else None.

  The length cap keeps int() away from its digit limit: garbage never raises.
  """
  if (isinstance(tok, str) and 0 < len(tok) <= 6 and tok.isascii() and tok.isdigit()
      and (tok == "0" or tok[0] != "0")):
    return int(tok)
  return None


def _index(toks: list, tok: str, stop: int) -> int:
  try:
    return toks.index(tok, 0, stop)
  except ValueError:
    return stop


def parse_plan(response: Sequence[Any]) -> tuple[int, int, tuple[Cell, ...] | None]:
  """(trace tokens, trace clauses, plan cells) of a decoder response; cells None when malformed.

  pad and bos are dropped and tokens from `eos` on ignored (clean_tokens). The trace is everything before the first
  `plan` token; its clauses are its `create` / `close` tokens (the search
  steps PAPER.md counts). The plan is the `plan x y` groups from the first
  `plan` token to the end; anything else there (trailing garbage, a clause, a
  non-coordinate) or no plan at all makes it malformed.
  """
  toks = clean_tokens(response)  # only str or None left, so list.index is safe (and fast)
  n_trace = _index(toks, PLAN, len(toks))
  n_clauses = sum(t == CREATE or t == CLOSE for t in toks[:n_trace])
  body = toks[n_trace:]
  if not body or len(body) % 3:
    return n_trace, n_clauses, None
  cells = []
  for i in range(0, len(body), 3):
    x, y = number(body[i + 1]), number(body[i + 2])
    if body[i] != PLAN or x is None or y is None:
      return n_trace, n_clauses, None
    cells.append((x, y))
  return n_trace, n_clauses, tuple(cells)


def judge(prompt: Any, response: Any, spec_from_prompt: Callable[[Any], Any],
          plan_is_legal: Callable[[Any, tuple[Cell, ...]], bool]) -> Verdict:
  """The Verdict of a response, given the task's prompt parser and plan rule."""
  n_trace, n_clauses, plan = parse_plan(response)
  if plan is None:
    return Verdict(correct=False, plan_len=None, trace_len=n_trace, plan=None, malformed=True,
                   trace_clauses=n_clauses)
  try:
    spec = spec_from_prompt(prompt)
  except ValueError:
    spec = None
  correct = spec is not None and plan_is_legal(spec, plan)
  return Verdict(correct=correct, plan_len=len(plan) - 1, trace_len=n_trace, plan=plan,
                 malformed=False, trace_clauses=n_clauses)
