"""Maze task: N x N grids with walls, 4-neighbour moves of cost 1, Manhattan heuristic.

Inside A* a cell is the int `s = x + y * width`. For x < width the reference
tie key `x + 100000 * y` orders cells exactly as `s` does, so the identity is
the deterministic tie key. Children come in the reference order up (y+1),
down (y-1), left (x-1), right (x+1); with both rules the generic A* in
tasks/astar.py reproduces the reference traces in tests/fixtures.

Tokens (PAPER.md): prompt `start x y goal x y wall x y ...` (walls row-major),
trace `create x y cG cH` / `close x y cG cH`, plan `plan x y` per cell.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import operator
from typing import Callable, Sequence

import numpy as np

from dualformer_jax.tasks import astar as astar_lib
from dualformer_jax.tasks.parsing import clean_tokens, is_int, json_cell, judge, number
from dualformer_jax.tasks.base import CLOSE, CREATE, PLAN, Tokens, Verdict

START, GOAL, WALL = "start", "goal", "wall"
KEYWORDS = (START, GOAL, WALL, CREATE, CLOSE, PLAN)

Cell = tuple[int, int]  # (x, y)
# spec_from_json refuses wider or taller grids: a typo like width=10**9 should be
# an error line, not the trace CLI running out of memory.
MAX_SIDE = 1000
# Manhattan rows kept per grid shape, in cells (~32 MB of list slots): every goal
# of a 30x30 grid fits; huge CLI grids start over instead of growing forever.
_MANHATTAN_CACHE_CELLS = 4_000_000


@dataclasses.dataclass(frozen=True)
class MazeSpec:
  """One maze task. `walls` are sorted row-major (by x + y * width).

  The constructor trusts its caller (it sits on the generator's hot path);
  sample_group, spec_from_json and spec_from_prompt build validated specs.
  """
  width: int
  height: int
  start: Cell
  goal: Cell
  walls: tuple[Cell, ...]


class _Grid:
  """Per-(width, height) tables shared by every spec of that shape.

  cand[s]: in-grid neighbours of s in the reference child order; x_tok/y_tok:
  coordinate tokens of s; wall_tok[s]: the prompt group `wall x y`.
  Manhattan rows are built lazily per goal cell.
  """

  def __init__(self, width: int, height: int):
    self.width, self.height = width, height
    n = width * height
    self.x_tok = [str(s % width) for s in range(n)]
    self.y_tok = [str(s // width) for s in range(n)]
    self.wall_tok = [(WALL, self.x_tok[s], self.y_tok[s]) for s in range(n)]
    self.plan_tok = [(PLAN, self.x_tok[s], self.y_tok[s]) for s in range(n)]
    self.cand = []
    for s in range(n):
      x, y = s % width, s // width
      kids = []
      if y + 1 < height:
        kids.append(s + width)
      if y > 0:
        kids.append(s - width)
      if x > 0:
        kids.append(s - 1)
      if x + 1 < width:
        kids.append(s + 1)
      self.cand.append(tuple(kids))
    self._manhattan: dict[int, list[int]] = {}

  def manhattan(self, goal: int) -> list[int]:
    row = self._manhattan.get(goal)
    if row is None:
      w = self.width
      gx, gy = goal % w, goal // w
      n = w * self.height
      if (len(self._manhattan) + 1) * n > _MANHATTAN_CACHE_CELLS:
        self._manhattan.clear()
      row = [abs(s % w - gx) + abs(s // w - gy) for s in range(n)]
      self._manhattan[goal] = row
    return row


class MazeTask:
  """The maze task of PAPER.md behind the Task protocol of tasks/base.py.

  Specs of any width x height are solved, tokenized and (de)serialized (the
  trace CLI takes them as they come); the vocabulary and `check` assume
  grids of at most `size` x `size`, and `check` reads a prompt as a
  `size` x `size` grid, since the prompt does not state its dimensions.
  """

  name = "maze"

  def __init__(self, size: int, min_wall_frac: float = 0.3, max_wall_frac: float = 0.5,
               pairs_per_layout: int = 4, min_plan_len: int = -1):
    if size < 2:
      raise ValueError(f"maze size={size!r}: must be >= 2")
    if not 0.0 <= min_wall_frac <= max_wall_frac < 1.0:
      raise ValueError(f"maze wall fractions ({min_wall_frac!r}, {max_wall_frac!r}): "
                       "need 0 <= min_wall_frac <= max_wall_frac < 1")
    if pairs_per_layout < 1:
      raise ValueError(f"maze pairs_per_layout={pairs_per_layout!r}: must be >= 1")
    self.size = size
    self.min_wall_frac = min_wall_frac
    self.max_wall_frac = max_wall_frac
    self.pairs_per_layout = pairs_per_layout
    self.min_plan_len = size if min_plan_len < 0 else min_plan_len
    self._grids: dict[tuple[int, int], _Grid] = {}
    self._cost_tok: list[str] = []

  @classmethod
  def from_config(cls, task_cfg) -> "MazeTask":
    """From `config.task` (min_plan_len=-1 means the grid size, as config.min_plan_len)."""
    return cls(size=task_cfg.size, min_wall_frac=task_cfg.min_wall_frac,
               max_wall_frac=task_cfg.max_wall_frac, pairs_per_layout=task_cfg.pairs_per_layout,
               min_plan_len=task_cfg.min_plan_len)

  # ---------------------------------------------------------------- vocabulary

  def max_cost(self) -> int:
    """Bounds every g (<= cells - 1) and h (<= 2 (size - 1)) of a size x size maze."""
    return max(self.size * self.size - 1, 2 * (self.size - 1))

  def vocabulary(self) -> list[str]:
    return (list(KEYWORDS) + [str(i) for i in range(self.size)]
            + [f"c{i}" for i in range(self.max_cost() + 1)])

  # ----------------------------------------------------------------- generator

  def sample_group(self, rng: np.random.Generator,
                   keep: Callable[[str], bool] | None = None) -> list[MazeSpec]:
    """One random wall layout and up to `pairs_per_layout` start/goal pairs on it.

    Pairs that are unsolvable or whose shortest plan is shorter than
    `min_plan_len` are dropped, so the list may be short or empty. A layout
    whose key `keep` rejects gives [] before any search.
    """
    n_side = self.size
    n = n_side * n_side
    lo = int(round(self.min_wall_frac * n))
    hi = int(round(self.max_wall_frac * n))
    num_walls = int(rng.integers(lo, hi + 1))
    perm = rng.permutation(n)
    wall_cells = np.sort(perm[:num_walls])
    free = perm[num_walls:]
    if len(free) < 2:
      return []
    grid = self._grid(n_side, n_side)
    blocked = bytearray(n)
    for s in wall_cells.tolist():
      blocked[s] = 1
    walls = tuple((s % n_side, s // n_side) for s in wall_cells.tolist())
    if keep is not None and not keep(_walls_key(n_side, n_side, walls)):
      return []
    specs, seen = [], set()
    for _ in range(self.pairs_per_layout):
      a, b = rng.choice(len(free), size=2, replace=False).tolist()
      s0, s1 = int(free[a]), int(free[b])
      if (s0, s1) in seen:
        continue
      seen.add((s0, s1))
      dist = _bfs_distance(grid.cand, blocked, s0, s1)
      if dist is None or dist < self.min_plan_len:
        continue
      specs.append(MazeSpec(n_side, n_side, (s0 % n_side, s0 // n_side),
                            (s1 % n_side, s1 // n_side), walls))
    return specs

  def layout_key(self, spec: MazeSpec) -> str:
    """A content hash of the grid shape and walls (stable across processes)."""
    return _walls_key(spec.width, spec.height, spec.walls)

  # ------------------------------------------------------------ solve, tokens

  def solve_tokens(self, spec: MazeSpec, seed: int | None = None) -> Tokens:
    """A* (deterministic when seed is None) on the spec, tokenized as PAPER.md."""
    w = spec.width
    grid = self._grid(w, spec.height)
    cost = self._costs(w * spec.height + w + spec.height)
    xt, yt, cand = grid.x_tok, grid.y_tok, grid.cand
    blocked = bytearray(w * spec.height)
    s0 = spec.start[0] + spec.start[1] * w
    s1 = spec.goal[0] + spec.goal[1] * w
    prompt = [START, xt[s0], yt[s0], GOAL, xt[s1], yt[s1]]
    wall_tok = grid.wall_tok
    for x, y in spec.walls:
      s = x + y * w
      blocked[s] = 1
      prompt += wall_tok[s]

    def children(s: int) -> list[int]:
      return [c for c in cand[s] if not blocked[c]]

    result = astar_lib.astar(s0, s1.__eq__, children, grid.manhattan(s1).__getitem__,
                             operator.index, seed=seed)
    kw = (CREATE, CLOSE)  # indexed by astar.EVENT_CREATE (0) / EVENT_CLOSE (1)
    trace = []
    add = trace.extend
    for kind, s, g, h in result.events:
      add((kw[kind], xt[s], yt[s], cost[g], cost[h]))
    plan_tok = grid.plan_tok
    plan = []
    for s, _, _ in result.plan:
      plan += plan_tok[s]
    return Tokens(prompt, trace, plan)

  def _grid(self, width: int, height: int) -> _Grid:
    grid = self._grids.get((width, height))
    if grid is None:
      grid = self._grids[(width, height)] = _Grid(width, height)
    return grid

  def _costs(self, count: int) -> list[str]:
    """Cost tokens c0..c{count-1} at least (grown on demand, then reused)."""
    if len(self._cost_tok) < count:
      self._cost_tok = [f"c{i}" for i in range(max(count, self.max_cost() + 1))]
    return self._cost_tok

  # ---------------------------------------------------------------------- JSON

  def spec_from_json(self, obj: dict) -> MazeSpec:
    """`{"width", "height", "start": [x, y], "goal": [x, y], "walls": [[x, y], ...]}`.

    Any width/height up to MAX_SIDE is accepted (see the class docstring); walls may
    come in any order and are stored row-major. ValueError names the bad field.
    """
    if not isinstance(obj, dict):
      raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for field in ("width", "height", "start", "goal", "walls"):
      if field not in obj:
        raise ValueError(f"missing field {field!r}")
    unknown = sorted(set(obj) - {"width", "height", "start", "goal", "walls"})
    if unknown:
      raise ValueError(f"unknown fields {unknown}")
    width, height = obj["width"], obj["height"]
    for field, v in (("width", width), ("height", height)):
      if not is_int(v) or not 1 <= v <= MAX_SIDE:
        raise ValueError(f"{field}={v!r}: must be an integer in [1, {MAX_SIDE}]")
    start = json_cell(obj["start"], "start", width, height)
    goal = json_cell(obj["goal"], "goal", width, height)
    if not isinstance(obj["walls"], list):
      raise ValueError(f"walls={obj['walls']!r}: must be a list of [x, y]")
    walls = [json_cell(c, f"walls[{i}]", width, height) for i, c in enumerate(obj["walls"])]
    return _make_spec(width, height, start, goal, walls)

  def spec_to_json(self, spec: MazeSpec) -> dict:
    return {"width": spec.width, "height": spec.height, "start": list(spec.start),
            "goal": list(spec.goal), "walls": [list(c) for c in spec.walls]}

  # ------------------------------------------------------------------- checker

  def spec_from_prompt(self, prompt: Sequence[str]) -> MazeSpec:
    """Parses `start x y goal x y wall x y ...` as a size x size maze.

    pad and bos are dropped and everything from the first `eos` on ignored.
    ValueError says what is wrong (never another exception, whatever the input).
    """
    toks = clean_tokens(prompt)
    if len(toks) < 6 or len(toks) % 3:
      raise ValueError(f"a maze prompt has 6 + 3k tokens, got {len(toks)}")
    cells = []
    for i in range(0, len(toks), 3):
      head = toks[i]
      want = START if i == 0 else GOAL if i == 3 else WALL
      if head != want:
        raise ValueError(f"token {i} is {head!r}, expected {want!r}")
      x, y = number(toks[i + 1]), number(toks[i + 2])
      if x is None or y is None or x >= self.size or y >= self.size:
        raise ValueError(f"tokens {i + 1}, {i + 2} ({toks[i + 1]!r}, {toks[i + 2]!r}) "
                         f"are not coordinates of a {self.size}x{self.size} maze")
      cells.append((x, y))
    return _make_spec(self.size, self.size, cells[0], cells[1], cells[2:])

  def check(self, prompt: Sequence[str], response: Sequence[str]) -> Verdict:
    """Replays the response's plan on the prompt's maze; never raises.

    The response is the decoder output; pad and bos are dropped and tokens
    from the first `eos` on ignored. Its plan is the `plan x y` groups from the first
    `plan` token to the end; anything else there (trailing garbage, a clause,
    a non-coordinate) makes it malformed. A plan is correct when it starts at
    start, ends at goal and every move goes to a free 4-neighbour in the grid.
    """
    return judge(prompt, response, self.spec_from_prompt, is_valid_path)


def _walls_key(width: int, height: int, walls: Sequence[Cell]) -> str:
  text = f"{width}x{height}:" + ";".join(f"{x},{y}" for x, y in walls)
  return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def is_valid_path(spec: MazeSpec, plan: Sequence[Cell]) -> bool:
  """Start to goal through free in-grid cells, each move to a 4-neighbour."""
  if not plan or tuple(plan[0]) != spec.start or tuple(plan[-1]) != spec.goal:
    return False
  walls = set(spec.walls)
  for x, y in plan:
    if not (0 <= x < spec.width and 0 <= y < spec.height) or (x, y) in walls:
      return False
  return all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(plan, plan[1:]))


def _bfs_distance(cand: list[tuple[int, ...]], blocked: bytearray, start: int,
                  goal: int) -> int | None:
  dist = {start: 0}
  queue = collections.deque([start])
  while queue:
    s = queue.popleft()
    if s == goal:
      return dist[s]
    d = dist[s] + 1
    for c in cand[s]:
      if not blocked[c] and c not in dist:
        dist[c] = d
        queue.append(c)
  return None


def _make_spec(width: int, height: int, start: Cell, goal: Cell,
               walls: Sequence[Cell]) -> MazeSpec:
  """Checks the cells against each other and sorts the walls row-major."""
  wall_set = set(walls)
  if len(wall_set) != len(walls):  # counted once each: list.count per wall is quadratic
    dup = sorted(c for c, k in collections.Counter(walls).items() if k > 1)
    raise ValueError(f"duplicate walls {dup[:10]}{' ...' if len(dup) > 10 else ''}")
  if start == goal:
    raise ValueError(f"start == goal == {start}")
  for name, cell in (("start", start), ("goal", goal)):
    if cell in wall_set:
      raise ValueError(f"{name} {cell} is on a wall")
  ordered = tuple(sorted(wall_set, key=lambda c: c[0] + c[1] * width))
  return MazeSpec(width, height, start, goal, ordered)
