"""Sokoban levels: the spec, the text picture, and the prompt tokens both ways.

Cells are (x, y) with y the row from the top. The prompt (PAPER.md) is
`worker x y box x y ... dock x y ... wall x y ...`, each group sorted by the
string "x-y". Unlike the reference prompt, boxes already on a dock and the
docks under them are listed too, so the prompt describes any level exactly
(generated levels never start with a box on a dock, where both agree).
Game rules, A* and the checker live in sokoban.py.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from dualformer_jax.tasks.parsing import clean_tokens, is_int, json_cell, number

WORKER, BOX, DOCK, WALL = "worker", "box", "dock", "wall"
FLOOR_CH, WALL_CH, DOCK_CH = " ", "#", "."
WORKER_CH, WORKER_DOCK_CH, BOX_CH, BOX_DOCK_CH = "@", "+", "$", "*"
_SYMBOLS = FLOOR_CH + WALL_CH + DOCK_CH + WORKER_CH + WORKER_DOCK_CH + BOX_CH + BOX_DOCK_CH

Cell = tuple[int, int]  # (x, y)
# Levels larger or fuller than these are refused before any table is built: the
# A* tables grow with cells x docks, so a 1500x1500 level took 4.5 GB to fail.
# Reference levels are 7x7 to 10x10 with 1 to 4 boxes.
MAX_SIDE = 64
MAX_BOXES = 16


@dataclasses.dataclass(frozen=True)
class SokobanSpec:
  """One level. `walls` include the border; cell groups are stored sorted.

  Construction validates the level (ValueError names the bad field).
  """
  width: int
  height: int
  walls: tuple[Cell, ...]
  boxes: tuple[Cell, ...]
  docks: tuple[Cell, ...]
  worker: Cell

  def __post_init__(self):
    w, h = self.width, self.height
    for field, v in (("width", w), ("height", h)):
      if not is_int(v) or not 3 <= v <= MAX_SIDE:
        raise ValueError(f"{field}={v!r}: must be an integer in [3, {MAX_SIDE}]")
    for field in ("boxes", "docks"):
      if len(getattr(self, field)) > MAX_BOXES:
        raise ValueError(f"{field}: {len(getattr(self, field))} cells, at most {MAX_BOXES}")
    groups = {}
    for field in ("walls", "boxes", "docks"):
      cells = [json_cell(c, f"{field}[{i}]", w, h) for i, c in enumerate(getattr(self, field))]
      if len(set(cells)) != len(cells):  # counted once each: list.count per cell is quadratic
        dup = sorted(c for c, k in collections.Counter(cells).items() if k > 1)
        raise ValueError(f"{field}: duplicate cells {dup[:10]}")
      groups[field] = tuple(sorted(cells))
      object.__setattr__(self, field, groups[field])
    worker = json_cell(self.worker, "worker", w, h)
    object.__setattr__(self, "worker", worker)
    walls = set(groups["walls"])
    for c in _border(w, h):  # lazily: a garbage prompt may claim a huge grid
      if c not in walls:
        raise ValueError(f"walls: the border must be walls, {c} is not")
    for field in ("boxes", "docks"):
      on_wall = [c for c in groups[field] if c in walls]
      if on_wall:
        raise ValueError(f"{field}: {on_wall[0]} is on a wall")
    if worker in walls or worker in groups["boxes"]:
      raise ValueError(f"worker={worker}: on a wall or a box")
    if not groups["boxes"]:
      raise ValueError("boxes: a level needs at least one box")
    if len(groups["docks"]) < len(groups["boxes"]):
      raise ValueError(f"docks: {len(groups['docks'])} docks for {len(groups['boxes'])} boxes")


def _border(width: int, height: int):
  """The ring of border cells, each once."""
  for x in range(width):
    yield (x, 0)
    yield (x, height - 1)
  for y in range(1, height - 1):
    yield (0, y)
    yield (width - 1, y)


# --------------------------------------------------------------- text levels


def render_level(spec: SokobanSpec) -> list[str]:
  """The usual text picture: `#` wall, `.` dock, `@`/`+` worker, `$`/`*` box."""
  rows = [[FLOOR_CH] * spec.width for _ in range(spec.height)]
  for x, y in spec.walls:
    rows[y][x] = WALL_CH
  docks = set(spec.docks)
  for x, y in spec.docks:
    rows[y][x] = DOCK_CH
  for x, y in spec.boxes:
    rows[y][x] = BOX_DOCK_CH if (x, y) in docks else BOX_CH
  x, y = spec.worker
  rows[y][x] = WORKER_DOCK_CH if spec.worker in docks else WORKER_CH
  return ["".join(r) for r in rows]


def parse_level(lines: Sequence[str]) -> SokobanSpec:
  """The inverse of render_level; ValueError names the bad row or character."""
  if isinstance(lines, str) or not isinstance(lines, (list, tuple)) or not lines:
    raise ValueError(f"a level is a non-empty list of row strings, got {lines!r:.80}")
  width = len(lines[0]) if isinstance(lines[0], str) else 0
  if len(lines) > MAX_SIDE or width > MAX_SIDE:  # before reading a huge level cell by cell
    raise ValueError(f"a {width}x{len(lines)} level: at most {MAX_SIDE}x{MAX_SIDE} is accepted")
  walls, boxes, docks, workers = [], [], [], []
  for y, row in enumerate(lines):
    if not isinstance(row, str):
      raise ValueError(f"row {y}={row!r:.80}: must be a string")
    if len(row) != len(lines[0]):
      raise ValueError(f"row {y} has {len(row)} characters, row 0 has {len(lines[0])}")
    for x, ch in enumerate(row):
      if ch not in _SYMBOLS:
        raise ValueError(f"row {y}, column {x}: bad character {ch!r}, expected one of {_SYMBOLS!r}")
      if ch == WALL_CH:
        walls.append((x, y))
      if ch in (DOCK_CH, WORKER_DOCK_CH, BOX_DOCK_CH):
        docks.append((x, y))
      if ch in (BOX_CH, BOX_DOCK_CH):
        boxes.append((x, y))
      if ch in (WORKER_CH, WORKER_DOCK_CH):
        workers.append((x, y))
  if len(workers) != 1:
    raise ValueError(f"a level needs exactly one worker ('@' or '+'), found {len(workers)}")
  return SokobanSpec(len(lines[0]), len(lines), tuple(walls), tuple(boxes), tuple(docks),
                     workers[0])


# ------------------------------------------------------------------- prompts


def prompt_tokens(spec: SokobanSpec) -> list[str]:
  """`worker x y`, then every box, dock and wall group, each group sorted by "x-y"."""
  out = [WORKER, str(spec.worker[0]), str(spec.worker[1])]
  for kw, cells in ((BOX, spec.boxes), (DOCK, spec.docks), (WALL, spec.walls)):
    for x, y in sorted(cells, key=lambda c: f"{c[0]}-{c[1]}"):
      out += (kw, str(x), str(y))
  return out


def spec_from_prompt(prompt: Sequence[str]) -> SokobanSpec:
  """Parses `worker x y box x y ... dock x y ... wall x y ...`; the walls' extent is the size.

  pad and bos are dropped and everything from the first `eos` on ignored.
  ValueError says what is wrong (never another exception, whatever the input).
  """
  toks = clean_tokens(prompt)
  if not toks or len(toks) % 3:
    raise ValueError(f"a Sokoban prompt has 3k tokens, got {len(toks)}")
  groups = {WORKER: [], BOX: [], DOCK: [], WALL: []}
  for i in range(0, len(toks), 3):
    x, y = number(toks[i + 1]), number(toks[i + 2])
    if toks[i] not in groups or x is None or y is None:
      raise ValueError(f"tokens {i}..{i + 2} {toks[i:i + 3]!r}: expected worker, box, dock "
                       "or wall and two coordinates")
    groups[toks[i]].append((x, y))
  if len(groups[WORKER]) != 1:
    raise ValueError(f"a Sokoban prompt has one worker, got {len(groups[WORKER])}")
  if not groups[WALL]:
    raise ValueError("a Sokoban prompt lists its walls (the border at least)")
  width = max(x for x, _ in groups[WALL]) + 1
  height = max(y for _, y in groups[WALL]) + 1
  return SokobanSpec(width, height, tuple(groups[WALL]), tuple(groups[BOX]),
                     tuple(groups[DOCK]), groups[WORKER][0])
