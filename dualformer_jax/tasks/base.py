"""The small interface every planning task implements.

A task turns a spec (a maze, a Sokoban level) into token sequences through
A*, and judges a model's response by replaying its plan under the task's own
rules. Everything downstream (datasets, dropping, training, sampling,
evaluation) sees only these methods and string tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np

# Clause keywords shared by all tasks: trace dropping finds clauses by them.
CREATE, CLOSE, PLAN = "create", "close", "plan"


@dataclasses.dataclass(frozen=True)
class Tokens:
  """One task as string tokens: encoder prompt, A* trace, optimal plan."""
  prompt: list[str]
  trace: list[str]
  plan: list[str]


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What a response holds. Never raised from: garbage gives malformed=True."""
  correct: bool  # a legal plan that solves the task
  plan_len: int | None  # moves in the plan, when it parsed
  trace_len: int  # tokens before the first `plan` token (or all, if none)
  plan: tuple | None  # the plan's cells, hashable (for diversity)
  malformed: bool  # no parsable plan at all
  trace_clauses: int = 0  # `create` / `close` steps in the trace: its length in search steps


class Task(Protocol):
  """What datasets, the trace CLI and evaluation need from a task."""

  name: str

  def vocabulary(self) -> list[str]:
    """All task tokens (no pad/bos/eos), in a fixed order."""

  def sample_group(self, rng: np.random.Generator,
                   keep: Callable[[str], bool] | None = None) -> list[Any]:
    """Specs sharing one layout (maze walls / Sokoban level); may be empty.

    `keep(layout_key)` is asked as soon as the layout is drawn; a rejected
    layout gives [] at once (dataset shards own disjoint layouts, so most
    draws are rejected). Specs may still prove unsolvable in `solve_tokens`.
    """

  def layout_key(self, spec: Any) -> str:
    """A string identifying the spec's layout: splits never share one."""

  def solve_tokens(self, spec: Any, seed: int | None = None) -> Tokens:
    """Runs A* (deterministic when seed is None) and tokenizes.

    Raises Unsolvable (or astar.SearchLimit) when there is no plan.
    """

  def spec_from_json(self, obj: dict) -> Any:
    """Parses the trace CLI's input format; ValueError names a bad field."""

  def spec_to_json(self, spec: Any) -> dict:
    """The inverse of spec_from_json."""

  def check(self, prompt: Sequence[str], response: Sequence[str]) -> Verdict:
    """Replays the response's plan on the prompt's task."""


class Unsolvable(ValueError):
  """The goal cannot be reached from the start."""
