"""Generic A* that records its search dynamics: every create, every close, the plan.

Tasks pass plain functions over hashable, compact states (ints, tuples), so
the inner loop touches no objects. Every move costs 1 (maze and Sokoban).

Rules (those of the reference implementation, pinned by tests/fixtures):
  * the open node with the smallest f = g + h is expanded (closed) next; ties:
    deterministic -> the smallest `tie_key(state)`; nondeterministic -> random;
  * a child reached with g no better than a known g (open or closed) is
    skipped; a cheaper path to an open node, or to a closed one, (re)opens it
    and is logged as a new `create`; h is fixed per state, so comparing g is
    comparing f;
  * a child whose heuristic is infinite (a dead Sokoban state) is never opened;
  * the search ends when the goal is closed; the plan follows parent links.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from typing import Callable, Hashable, Sequence

from dualformer_jax.tasks.base import Unsolvable

# Event kinds of SearchResult.events (ints; the tasks map them to their `create` /
# `close` tokens, tasks/base.py).
EVENT_CREATE, EVENT_CLOSE = 0, 1


class SearchLimit(Unsolvable):
  """A* closed more nodes than allowed; the task is skipped, not solved."""


@dataclasses.dataclass(frozen=True)
class SearchResult:
  events: list[tuple[int, Hashable, int, int]]  # (EVENT_CREATE|EVENT_CLOSE, state, g, h) in order
  plan: list[tuple[Hashable, int, int]]  # (state, g, h) from start to goal


def astar(start: Hashable,
          is_goal: Callable[[Hashable], bool],
          children: Callable[[Hashable], Sequence[Hashable]],
          heuristic: Callable[[Hashable], float],
          tie_key: Callable[[Hashable], object],
          seed: int | None = None,
          max_expansions: int | None = None) -> SearchResult:
  """Runs A*; `seed=None` is deterministic, an int gives a reproducible random run.

  Raises Unsolvable when the open set empties, SearchLimit past max_expansions.
  """
  rng = None if seed is None else random.Random(seed)
  h0 = heuristic(start)
  if h0 == math.inf:
    raise Unsolvable("the start state is already dead (infinite heuristic)")
  g_of = {start: 0}
  h_of = {start: h0}
  parent = {start: None}
  events = [(EVENT_CREATE, start, 0, h0)]
  # Entries (f, tie, g, state); tie is unique per state (or a random float),
  # so the state itself is never compared. An entry is stale when a cheaper
  # path to its state was found later: its g no longer equals g_of[state].
  heap = [(h0, tie_key(start) if rng is None else rng.random(), 0, start)]
  push, pop = heapq.heappush, heapq.heappop
  expansions = 0
  while heap:
    _, _, g, s = pop(heap)
    if g_of[s] != g:
      continue
    events.append((EVENT_CLOSE, s, g, h_of[s]))
    if is_goal(s):
      plan = []
      while s is not None:
        plan.append((s, g_of[s], h_of[s]))
        s = parent[s]
      plan.reverse()
      return SearchResult(events, plan)
    expansions += 1
    if max_expansions is not None and expansions > max_expansions:
      raise SearchLimit(f"A* closed more than {max_expansions} nodes")
    kids = children(s)
    if rng is not None:
      kids = list(kids)
      rng.shuffle(kids)
    g1 = g + 1
    for c in kids:
      old = g_of.get(c)
      if old is not None and old <= g1:
        continue
      h = h_of.get(c)
      if h is None:
        h = h_of[c] = heuristic(c)
      if h == math.inf:
        continue
      g_of[c] = g1
      parent[c] = s
      events.append((EVENT_CREATE, c, g1, h))
      push(heap, (g1 + h, tie_key(c) if rng is None else rng.random(), g1, c))
  raise Unsolvable("the goal cannot be reached from the start")
