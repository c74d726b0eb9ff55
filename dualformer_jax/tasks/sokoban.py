"""Sokoban: game rules, heuristic, A* tokens and the plan checker (levels: sokoban_level.py).

Cells are (x, y) with y the row from the top, so `up` is y - 1 (as in the
reference code, whose child order up, down, left, right we keep). Inside A*
a game state is one int, `boxes_mask << wbits | worker`, over cell indices
`x + width * y`: hashing, comparing and expanding it touches no objects, and
the heuristic is cached per box mask. Deterministic ties go to the smallest
state int (the reference hashes a board string, which is salted per process,
so its order cannot be reproduced anyway).

Tokens (PAPER.md): the prompt is sokoban_level.prompt_tokens; trace clauses
`create|close worker x y (box x y)* cG cH` list only boxes off docks; the
plan is `plan x y` per worker cell.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Callable, ClassVar, Sequence

import numpy as np

from dualformer_jax.tasks import astar as astar_lib
from dualformer_jax.tasks.base import CLOSE, CREATE, PLAN, Tokens, Unsolvable, Verdict
from dualformer_jax.tasks.parsing import is_int, judge
from dualformer_jax.tasks.sokoban_level import (  # noqa: F401 (MAX_SIDE: the level's limit, here too)
    BOX, DOCK, MAX_SIDE, WALL, WORKER, Cell, SokobanSpec, _border, parse_level, prompt_tokens,
    render_level, spec_from_prompt)

KEYWORDS = (WORKER, BOX, DOCK, WALL, CREATE, CLOSE, PLAN)
MOVES = ("up", "down", "left", "right")  # the A* child order
_DELTAS = ((0, -1), (0, 1), (-1, 0), (1, 0))  # per MOVES entry


class CostOverflow(Unsolvable):
  """A g or h above `max_cost` has no token; the level is skipped like SearchLimit."""


# ----------------------------------------------------------------- game rules


class _Board:
  """A level's fixed part (walls, docks) compiled into flat per-cell tables.

  nbr[d][c]: the cell one step from c in direction d, -1 for a wall;
  moves[c]: (n, n2) for every direction whose first cell n is no wall, n2
  the cell beyond (-1 for a wall), in MOVES order; dead[c]: a box at c can
  never move again (a wall left or right, and above or below), which makes
  a state dead when that box is off a dock.
  """

  def __init__(self, spec: SokobanSpec):
    w, h = spec.width, spec.height
    n = w * h
    self.width = w
    self.wbits = max(1, (n - 1).bit_length())
    self.wmask = (1 << self.wbits) - 1
    wall = [False] * n
    for x, y in spec.walls:
      wall[x + w * y] = True

    def step(c: int, dx: int, dy: int) -> int:
      x, y = c % w + dx, c // w + dy
      if not (0 <= x < w and 0 <= y < h) or wall[x + w * y]:
        return -1
      return x + w * y

    self.nbr = [[step(c, dx, dy) for c in range(n)] for dx, dy in _DELTAS]
    self.moves = [tuple((nb[c], nb[nb[c]]) for nb in self.nbr if nb[c] >= 0)
                  for c in range(n)]
    dock_cells = [x + w * y for x, y in spec.docks]
    self.docks = dock_cells
    self.dock_mask = sum(1 << c for c in dock_cells)
    up, down, left, right = self.nbr
    self.dead = [(left[c] < 0 or right[c] < 0) and (up[c] < 0 or down[c] < 0) for c in range(n)]
    # dock_dist[c][i]: Manhattan distance from c to docks[i].
    self.dock_dist = [tuple(abs(c % w - d % w) + abs(c // w - d // w) for d in dock_cells)
                      for c in range(n)]
    self.x_tok = [str(c % w) for c in range(n)]
    self.y_tok = [str(c // w) for c in range(n)]
    self.xy_key = [f"{c % w}-{c // w}" for c in range(n)]
    self._h: dict[int, float] = {}
    self._box_tok: dict[int, tuple[str, ...]] = {}

  def cell(self, xy: Cell) -> int:
    return xy[0] + self.width * xy[1]

  def encode(self, worker: Cell, boxes: Sequence[Cell]) -> int:
    return (sum(1 << self.cell(b) for b in boxes) << self.wbits) | self.cell(worker)

  def decode(self, s: int) -> tuple[Cell, tuple[Cell, ...]]:
    w = self.width
    c = s & self.wmask
    return (c % w, c // w), tuple((b % w, b // w) for b in _bits(s >> self.wbits))

  def step(self, s: int, d: int) -> int | None:
    """The state after one worker move in direction d, or None when illegal."""
    nb = self.nbr[d]
    n = nb[s & self.wmask]
    if n < 0:
      return None
    m = s >> self.wbits
    bit = 1 << n
    if m & bit:  # a push: the cell beyond must hold neither wall nor box
      n2 = nb[n]
      if n2 < 0 or m >> n2 & 1:
        return None
      m = m ^ bit | 1 << n2
    return m << self.wbits | n

  def children(self, s: int) -> list[int]:
    """Every legal step() in MOVES order; inlined because A* calls it per expansion."""
    wbits = self.wbits
    m = s >> wbits
    out = []
    for n, n2 in self.moves[s & self.wmask]:
      bit = 1 << n
      if not m & bit:
        out.append(m << wbits | n)
      elif n2 >= 0 and not m >> n2 & 1:
        out.append((m ^ bit | 1 << n2) << wbits | n)
    return out

  def is_goal(self, s: int) -> bool:
    return not (s >> self.wbits) & ~self.dock_mask

  def heuristic(self, s: int) -> float:
    """Sum over off-dock boxes of the distance to the nearest open dock; inf if one is dead."""
    m = s >> self.wbits
    h = self._h.get(m)
    if h is None:
      h = 0
      open_docks = [i for i, d in enumerate(self.docks) if not m >> d & 1]
      for b in _bits(m & ~self.dock_mask):
        if self.dead[b]:
          h = math.inf
          break
        row = self.dock_dist[b]
        h += min(row[i] for i in open_docks)
      self._h[m] = h
    return h

  def state_tokens(self, s: int) -> tuple[str, ...]:
    """`worker x y` and a `box x y` per off-dock box, sorted by "x-y"."""
    m = (s >> self.wbits) & ~self.dock_mask
    boxes = self._box_tok.get(m)
    if boxes is None:
      boxes = ()
      for b in sorted(_bits(m), key=self.xy_key.__getitem__):
        boxes += (BOX, self.x_tok[b], self.y_tok[b])
      self._box_tok[m] = boxes
    c = s & self.wmask
    return (WORKER, self.x_tok[c], self.y_tok[c]) + boxes


def _bits(m: int) -> list[int]:
  """Indices of the set bits of m, lowest first."""
  out = []
  while m:
    low = m & -m
    out.append(low.bit_length() - 1)
    m ^= low
  return out


def heuristic(spec: SokobanSpec) -> float:
  """The A* heuristic of the level's current state (PAPER.md); math.inf when dead."""
  board = _Board(spec)
  return board.heuristic(board.encode(spec.worker, spec.boxes))


def replay_states(spec: SokobanSpec, plan: Sequence[Cell]
                  ) -> tuple[list[tuple[Cell, tuple[Cell, ...]]], int | None]:
  """(worker, boxes) at each plan cell the rules allow, and the index of the first refused cell.

  The one statement of the plan rule, for the checker and the pictures alike:
  cell 0 must be the worker's own cell, and each later cell one legal move (a
  step, or a push of a box into a cell free of walls and boxes) from the one
  before. The index is None when every cell is allowed (also for no plan).
  """
  board = _Board(spec)
  s = board.encode(spec.worker, spec.boxes)
  states = [s]
  bad = None
  if plan and tuple(plan[0]) != spec.worker:
    bad = 0
  else:
    for i in range(1, len(plan)):
      (x0, y0), (x1, y1) = plan[i - 1], plan[i]
      delta = (x1 - x0, y1 - y0)
      s = board.step(s, _DELTAS.index(delta)) if delta in _DELTAS else None
      if s is None:
        bad = i
        break
      states.append(s)
  return [board.decode(t) for t in states], bad


def replay(spec: SokobanSpec, plan: Sequence[Cell]) -> bool:
  """True when the cells are legal moves from the worker (replay_states) that solve the level."""
  states, bad = replay_states(spec, plan)
  return bool(plan) and bad is None and set(states[-1][1]) <= set(spec.docks)


# ----------------------------------------------------------------------- task


@dataclasses.dataclass(frozen=True)
class SokobanTask:
  """The Sokoban task of PAPER.md behind the Task protocol of tasks/base.py.

  Levels of any size are solved, tokenized and (de)serialized (the trace CLI
  takes them as they come); the vocabulary covers coordinates 0..size-1 and
  costs c0..c{max_cost}. The generator fields only matter to sample_group.
  """
  size: int = 7  # grid side of generated levels, border included
  num_boxes: int = 2
  num_docks: int = 2
  num_interior_walls: int = 2
  box_border_margin: int = 2  # boxes at least this many cells from the border
  max_cost: int = 400  # largest cost token
  max_expansions: int | None = 20000  # A* gives up past this (astar.SearchLimit)
  name: ClassVar[str] = "sokoban"

  def __post_init__(self):
    rules = (("size", self.size, is_int(self.size) and self.size >= 3, "an integer >= 3"),
             ("max_cost", self.max_cost, is_int(self.max_cost) and self.max_cost >= 0,
              "an integer >= 0"),
             ("max_expansions", self.max_expansions,
              self.max_expansions is None or self.max_expansions >= 1, ">= 1 or None"),
             ("num_boxes", self.num_boxes, self.num_boxes >= 1, ">= 1"),
             ("num_docks", self.num_docks, self.num_docks >= self.num_boxes,
              f">= num_boxes={self.num_boxes}"),
             ("num_interior_walls", self.num_interior_walls, self.num_interior_walls >= 0, ">= 0"),
             ("box_border_margin", self.box_border_margin, self.box_border_margin >= 1, ">= 1"))
    for field, value, ok, want in rules:
      if not ok:
        raise ValueError(f"sokoban {field}={value!r}: must be {want}")
    object.__setattr__(self, "_cost_tok", [f"c{i}" for i in range(self.max_cost + 1)])

  @classmethod
  def from_config(cls, task_cfg) -> "SokobanTask":
    """From `config.task` (fields of config.base_config)."""
    return cls(size=task_cfg.size, num_boxes=task_cfg.num_boxes, num_docks=task_cfg.num_docks,
               num_interior_walls=task_cfg.num_interior_walls,
               box_border_margin=task_cfg.box_border_margin, max_cost=task_cfg.max_cost,
               max_expansions=task_cfg.max_expansions)

  def vocabulary(self) -> list[str]:
    return list(KEYWORDS) + [str(i) for i in range(self.size)] + list(self._cost_tok)

  # ----------------------------------------------------------------- generator

  def draw_level(self, rng: np.random.Generator) -> SokobanSpec | None:
    """A random level (not checked for solvability), or None when walls left no room for boxes.

    Order as the reference generator: interior walls, boxes (at least
    box_border_margin cells from the border), worker, docks; all distinct.
    """
    n, m = self.size, self.box_border_margin
    interior = [(x, y) for y in range(1, n - 1) for x in range(1, n - 1)]
    box_zone = [(x, y) for y in range(m, n - m) for x in range(m, n - m)]
    need = self.num_interior_walls + self.num_boxes + self.num_docks + 1
    if len(box_zone) < self.num_boxes or len(interior) < need:
      raise ValueError(
          f"sokoban size={n}, box_border_margin={m}: {len(box_zone)} box cells and "
          f"{len(interior)} free cells cannot hold {self.num_boxes} boxes and {need} objects")

    def take(pool: list[Cell], k: int) -> list[Cell]:
      picked = [pool[i] for i in rng.choice(len(pool), size=k, replace=False).tolist()]
      used.update(picked)
      return picked

    used: set[Cell] = set()
    walls = take(interior, self.num_interior_walls)
    zone = [c for c in box_zone if c not in used]
    if len(zone) < self.num_boxes:
      return None
    boxes = take(zone, self.num_boxes)
    worker = take([c for c in interior if c not in used], 1)[0]
    docks = take([c for c in interior if c not in used], self.num_docks)
    return SokobanSpec(n, n, tuple(_border(n, n)) + tuple(walls), tuple(boxes), tuple(docks),
                       worker)

  def sample_group(self, rng: np.random.Generator,
                   keep: Callable[[str], bool] | None = None) -> list[SokobanSpec]:
    """[one drawn level], unsolved (cheap); `solve_tokens` raises Unsolvable on a bad
    one. A level whose key `keep` rejects gives []."""
    spec = self.draw_level(rng)
    if spec is None or (keep is not None and not keep(self.layout_key(spec))):
      return []
    return [spec]

  def layout_key(self, spec: SokobanSpec) -> str:
    """The whole level: a Sokoban level has no parts to share between tasks."""
    return "|".join(render_level(spec))

  # -------------------------------------------------------------- solve, tokens

  def _search(self, board: _Board, spec: SokobanSpec, seed: int | None) -> astar_lib.SearchResult:
    # operator.index: the identity on ints, so ties go to the smallest state int.
    return astar_lib.astar(board.encode(spec.worker, spec.boxes), board.is_goal, board.children,
                           board.heuristic, operator.index, seed=seed,
                           max_expansions=self.max_expansions)

  def solve_tokens(self, spec: SokobanSpec, seed: int | None = None) -> Tokens:
    """A* (deterministic when seed is None) on the level, tokenized as PAPER.md.

    Raises Unsolvable, astar.SearchLimit, or CostOverflow (a cost above max_cost).
    """
    board = _Board(spec)
    result = self._search(board, spec, seed)
    cost = self._cost_tok
    kw = (CREATE, CLOSE)  # indexed by astar.EVENT_CREATE (0) / EVENT_CLOSE (1)
    trace = []
    add = trace.extend
    state_tokens = board.state_tokens
    try:
      for kind, s, g, h in result.events:
        trace.append(kw[kind])
        add(state_tokens(s))
        trace.append(cost[g])
        trace.append(cost[h])
    except IndexError:
      top = max(max(g, h) for _, _, g, h in result.events)
      raise CostOverflow(f"the A* trace has a cost {top} above max_cost={self.max_cost}") from None
    plan = []
    xt, yt, wmask = board.x_tok, board.y_tok, board.wmask
    for s, _, _ in result.plan:
      c = s & wmask
      plan += (PLAN, xt[c], yt[c])
    return Tokens(prompt_tokens(spec), trace, plan)

  # ---------------------------------------------------------------------- JSON

  def spec_from_json(self, obj: dict) -> SokobanSpec:
    """`{"level": ["#######", "#  .  #", ...]}` of any size; ValueError says what is wrong."""
    if not isinstance(obj, dict):
      raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"level"})
    if "level" not in obj or unknown:
      raise ValueError(f"expected exactly the field 'level', got fields {sorted(obj)}")
    try:
      return parse_level(obj["level"])
    except ValueError as e:
      raise ValueError(f"level: {e}") from None

  def spec_to_json(self, spec: SokobanSpec) -> dict:
    return {"level": render_level(spec)}

  # ------------------------------------------------------------------- checker

  def spec_from_prompt(self, prompt: Sequence[str]) -> SokobanSpec:
    """sokoban_level.spec_from_prompt (a Sokoban prompt states its size by its walls)."""
    return spec_from_prompt(prompt)

  def check(self, prompt: Sequence[str], response: Sequence[str]) -> Verdict:
    """Replays the response's plan on the prompt's level; never raises.

    The response is the decoder output; pad and bos are dropped and tokens
    from the first `eos` on ignored. Its plan is the `plan x y` groups from the first
    `plan` token to the end; anything else there (trailing garbage, a clause,
    a non-coordinate) makes it malformed. It is correct when it starts at
    the worker, each step moves to a 4-neighbour (pushing a box ahead
    legally, never into a wall) and all boxes are on docks at the end.
    """
    return judge(prompt, response, spec_from_prompt, replay)
