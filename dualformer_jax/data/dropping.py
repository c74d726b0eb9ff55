"""Structured trace dropping (PAPER.md, "Structured trace dropping"): levels 0-4.

A trace is a run of clauses. A clause starts with a keyword token (`create`
or `close`) and ends with its two cost tokens (`cG cH`); whatever lies
between (maze `x y`, Sokoban `worker x y box x y ...`) is never looked at, so
every task with this grammar shares this code.

  level 0  the complete trace
  level 1  every `close` clause removed
  level 2  level 1, and the two cost tokens of every clause removed
  level 3  level 2, and each `create` clause dropped with probability `create_drop_rate`
  level 4  the empty trace

The plan is not an argument: nothing here can touch it. Everything is a pure
function of its inputs; randomness comes from the caller's np.random.Generator.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dualformer_jax.tasks.base import CLOSE, CREATE

NUM_LEVELS = 5
COMPLETE, NO_CLOSE, NO_COST, SPARSE_CREATE, EMPTY = range(NUM_LEVELS)
# How a level is chosen for each draw (config.data.trace_mode).
TRACE_MODES = ("dualformer", "complete", "solution_only", "fixed_level")
_COSTS_PER_CLAUSE = 2


class TraceFormatError(ValueError):
  """A trace that is not a run of `keyword ... cost cost` clauses."""


@dataclasses.dataclass(frozen=True, eq=False)
class TraceGrammar:
  """The token ids that delimit clauses.

  is_cost: bool[V] lookup, True at the ids of cost tokens; used only to check
  that every clause really ends with two costs (a malformed trace fails loudly
  instead of being silently mangled).
  """
  create_id: int
  close_id: int
  is_cost: np.ndarray  # bool [V]

  @classmethod
  def from_vocab(cls, vocab) -> "TraceGrammar":
    """Builds the grammar of a data.vocab.Vocab: costs are the tokens `c<k>`."""
    is_cost = np.array([len(t) > 1 and t[0] == "c" and t[1:].isdigit() for t in vocab.tokens])
    return cls(create_id=vocab.id(CREATE), close_id=vocab.id(CLOSE), is_cost=is_cost)


def clause_bounds(trace: np.ndarray, grammar: TraceGrammar) -> tuple[np.ndarray, np.ndarray]:
  """Start (inclusive) and end (exclusive) positions of every clause of `trace`.

  Raises TraceFormatError when the trace does not start with a keyword, or a
  clause is shorter than keyword + two costs or does not end with two costs.
  """
  # trace: int [L] -> starts, ends: int [C]
  if trace.ndim != 1:
    raise TraceFormatError(f"a trace is a 1-D id array, got shape {trace.shape}")
  n = trace.shape[0]
  starts = np.flatnonzero((trace == grammar.create_id) | (trace == grammar.close_id))
  if n == 0:
    return starts, starts
  if starts.size == 0 or starts[0] != 0:
    raise TraceFormatError(
        f"a trace must start with a create/close keyword, got id {int(trace[0])} at position 0")
  ends = np.append(starts[1:], n)
  sizes = ends - starts
  costs = trace[np.concatenate([ends - 2, ends - 1])]  # [2C] must all be cost ids
  if (sizes.min() >= 1 + _COSTS_PER_CLAUSE and 0 <= costs.min()
      and costs.max() < grammar.is_cost.size and grammar.is_cost[costs].all()):
    return starts, ends  # the common case: one cheap check, details only on failure
  short = np.flatnonzero(sizes < 1 + _COSTS_PER_CLAUSE)
  if short.size:
    i = short[0]
    raise TraceFormatError(f"clause at position {int(starts[i])} has {int(sizes[i])} tokens; "
                           f"a clause needs a keyword and {_COSTS_PER_CLAUSE} cost tokens")
  for pos in np.sort(np.concatenate([ends - 2, ends - 1])):
    tok = int(trace[pos])
    if not 0 <= tok < grammar.is_cost.size:
      raise TraceFormatError(f"trace id {tok} at position {pos} is outside the vocabulary")
    if not grammar.is_cost[tok]:
      raise TraceFormatError(f"a clause does not end with two cost tokens: id {tok} at "
                             f"position {pos}")
  return starts, ends


def drop_trace(trace: np.ndarray, level: int, grammar: TraceGrammar,
               rng: np.random.Generator | None = None,
               create_drop_rate: float = 0.3) -> np.ndarray:
  """The trace kept at `level` (0-4). Level 0 returns `trace` itself (not a copy).

  rng is needed for level 3 only (one uniform draw per create clause).
  """
  # trace: int [L] -> int [L'] with L' <= L
  if level not in range(NUM_LEVELS):
    raise ValueError(f"drop level {level!r} is not one of 0..{NUM_LEVELS - 1}")
  if not 0.0 <= create_drop_rate <= 1.0:
    raise ValueError(f"create_drop_rate={create_drop_rate!r} must be in [0, 1]")
  starts, ends = clause_bounds(trace, grammar)  # validates every level's input alike
  if level == COMPLETE:
    return trace
  if level == EMPTY:
    return trace[:0]
  keep_clause = trace[starts] == grammar.create_id  # [C]: D1, drop every close
  if level == SPARSE_CREATE:
    if rng is None:
      raise ValueError("level 3 drops create clauses at random: pass an np.random.Generator")
    creates = np.flatnonzero(keep_clause)
    keep_clause[creates[rng.random(creates.size) < create_drop_rate]] = False  # D3
  keep = np.repeat(keep_clause, ends - starts)  # [L]
  if level >= NO_COST:  # D2: the last two tokens of every clause
    keep[ends - 1] = False
    keep[ends - 2] = False
  return trace[keep]


def check_level_probs(level_probs: Sequence[float]) -> np.ndarray:
  """Five non-negative probabilities summing to 1, as float64 [5]; ValueError otherwise."""
  probs = np.asarray(level_probs, dtype=np.float64)
  if probs.shape != (NUM_LEVELS,) or (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-6:
    raise ValueError(f"level_probs={tuple(level_probs)!r}: need {NUM_LEVELS} non-negative "
                     "numbers that sum to 1")
  return probs


def draw_level(rng: np.random.Generator, mode: str, level_probs: Sequence[float],
               fixed_level: int) -> int:
  """The drop level of one draw under config.data.trace_mode `mode`.

  dualformer: level ~ Cat(p0..p4); complete: 0; solution_only: 4;
  fixed_level: `fixed_level`. Only dualformer consumes randomness.
  """
  return LevelSampler(mode, level_probs, fixed_level)(rng)


def eval_level(mode: str, fixed_level: int) -> int:
  """The one level a run trained under trace_mode `mode` is scored on (its eval loss)."""
  if mode == "solution_only":
    return EMPTY
  return fixed_level if mode == "fixed_level" else COMPLETE


class LevelSampler:
  """draw_level with the arguments checked once, for the per-example hot path."""

  def __init__(self, mode: str, level_probs: Sequence[float], fixed_level: int):
    if mode not in TRACE_MODES:
      raise ValueError(f"trace_mode={mode!r}: expected one of {TRACE_MODES}")
    if mode == "fixed_level" and fixed_level not in range(NUM_LEVELS):
      raise ValueError(f"fixed_level={fixed_level!r} is not one of 0..{NUM_LEVELS - 1}")
    self.mode = mode
    self._const = {"complete": COMPLETE, "solution_only": EMPTY,
                   "fixed_level": fixed_level}.get(mode)
    if self._const is None:
      probs = check_level_probs(level_probs)
      self._cdf = np.cumsum(probs)
      self._last = int(np.flatnonzero(probs)[-1])  # the last level with any mass

  def __call__(self, rng: np.random.Generator) -> int:
    if self._const is not None:
      return int(self._const)
    level = int(np.searchsorted(self._cdf, rng.random() * self._cdf[-1], side="right"))
    return min(level, self._last)  # float round-off must not pick a level of mass 0
