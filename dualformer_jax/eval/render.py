"""Small PNG pictures of a task and a model's response (maze and Sokoban).

Works on string tokens (prompt + response) in the formats of PAPER.md, so it
needs no task object and no model. Tokens are read by the vocabulary's rule
(`strip_specials`) and coordinates by the tasks' (`parsing.number`); whether
a plan is legal is decided by the task's own rule (`maze.is_valid_path`,
`sokoban.replay_states`), so a picture is titled "legal" / "solved" exactly
when the checker scores the response correct. It never raises on a garbage
response: whatever parses is drawn, the rest is ignored, and the title says
so. Uses matplotlib's object API (`Figure`, Agg) and no pyplot, so no global
state.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dualformer_jax.data.vocab import strip_specials
from dualformer_jax.tasks import maze, sokoban
from dualformer_jax.tasks.base import CLOSE, CREATE, PLAN
from dualformer_jax.tasks.parsing import number, parse_plan

Cell = tuple[int, int]  # (x, y): x is the column, y the row

_DPI = 80
# Maze cell codes -> colours: free, wall, created (open set), closed.
_FREE, _WALL, _CREATED, _CLOSED = 0, 1, 2, 3
_MAZE_CMAP = ListedColormap(["#ffffff", "#404040", "#b9d7f0", "#5b9bd5"])


def _clean(tokens: Sequence) -> list[str]:
  """The tokens as strings, read by `vocab.strip_specials`."""
  return strip_specials(str(tok) for tok in tokens)


def cells_after(tokens: Sequence[str], keyword: str) -> list[Cell]:
  """(x, y) of every `keyword x y` group whose coordinates parse."""
  out = []
  for i, tok in enumerate(tokens[:-2]):
    if tok == keyword:
      x, y = number(tokens[i + 1]), number(tokens[i + 2])
      if x is not None and y is not None:
        out.append((x, y))
  return out


def split_response(response: Sequence[str]) -> tuple[list[str], list[str]]:
  """(trace, plan part) of a response: the split is at the first `plan` token."""
  toks = _clean(response)
  cut = toks.index(PLAN) if PLAN in toks else len(toks)
  return toks[:cut], toks[cut:]


def read_plan(response: Sequence[str]) -> tuple[list[str], tuple[Cell, ...], bool]:
  """(trace, plan cells to draw, malformed): the checker's reading (parsing.parse_plan).

  A malformed plan (one the checker scores wrong unread) is still drawn from
  whatever `plan x y` groups parse, and is never called legal.
  """
  trace, plan_part = split_response(response)
  _, _, cells = parse_plan([str(tok) for tok in response])
  if cells is not None:
    return trace, cells, False
  return trace, tuple(cells_after(plan_part, PLAN)), True


@dataclasses.dataclass(frozen=True)
class MazeScene:
  size: int
  start: Cell | None
  goal: Cell | None
  walls: frozenset
  created: tuple  # cells of `create x y` clauses, in order
  closed: tuple  # cells of `close x y` clauses, in order
  plan: tuple  # cells of `plan x y`, in order
  malformed: bool = False  # the checker cannot read the plan (read_plan)


def parse_maze(prompt: Sequence[str], response: Sequence[str],
               size: int | None = None) -> MazeScene:
  """Reads what it can; `size` defaults to the largest prompt coordinate + 1."""
  ptoks = _clean(prompt)
  starts, goals = cells_after(ptoks, "start"), cells_after(ptoks, "goal")
  walls = frozenset(cells_after(ptoks, "wall"))
  known = list(walls) + starts[:1] + goals[:1]
  if size is None:
    size = 1 + max((max(c) for c in known), default=0)
  trace, plan, malformed = read_plan(response)
  return MazeScene(size=size, start=starts[0] if starts else None,
                   goal=goals[0] if goals else None, walls=walls,
                   created=tuple(cells_after(trace, CREATE)),
                   closed=tuple(cells_after(trace, CLOSE)), plan=plan, malformed=malformed)


def _inside(c: Cell, n: int) -> bool:
  return 0 <= c[0] < n and 0 <= c[1] < n


def maze_is_path(scene: MazeScene) -> bool:
  """Whether the plan is a legal path from start to goal, by the maze task's rule."""
  if scene.malformed or scene.start is None or scene.goal is None:
    return False
  spec = maze.MazeSpec(scene.size, scene.size, scene.start, scene.goal, tuple(scene.walls))
  return maze.is_valid_path(spec, scene.plan)


def render_maze(prompt: Sequence[str], response: Sequence[str], path: str,
                title: str = "", size: int | None = None) -> None:
  """Walls, start (green), goal (red), created / closed cells (blues), plan line."""
  s = parse_maze(prompt, response, size)
  n = s.size
  grid_NN = np.full((n, n), _FREE, np.int32)  # [row y, column x]
  for code, cells in ((_CREATED, s.created), (_CLOSED, s.closed), (_WALL, s.walls)):
    for c in cells:
      if _inside(c, n):
        grid_NN[c[1], c[0]] = code
  fig = Figure(figsize=(max(3.0, 0.22 * n + 1.0),) * 2, dpi=_DPI)
  ax = fig.add_subplot()
  ax.imshow(grid_NN, cmap=_MAZE_CMAP, vmin=0, vmax=3, interpolation="nearest")
  if s.plan:
    xs, ys = zip(*s.plan)
    ax.plot(xs, ys, "-", color="#d62728", lw=2, marker=".", ms=4)
  for cell, colour in ((s.start, "#2ca02c"), (s.goal, "#d62728")):
    if cell is not None:
      ax.plot([cell[0]], [cell[1]], "s", color=colour, ms=7, mec="black")
  ax.set_xlim(-0.5, n - 0.5)
  ax.set_ylim(n - 0.5, -0.5)
  ax.set_xticks([])
  ax.set_yticks([])
  if not s.plan:
    status = "no plan"
  elif s.malformed:
    status = "malformed plan"
  else:
    status = "legal path" if maze_is_path(s) else "no legal path"
  ax.set_title(f"{title}\n{len(s.created)} create, {len(s.closed)} close; "
               f"{max(len(s.plan) - 1, 0)} moves, {status}".strip(), fontsize=8)
  fig.savefig(path, dpi=_DPI)


@dataclasses.dataclass(frozen=True)
class Board:
  worker: Cell | None
  boxes: frozenset
  docks: frozenset
  walls: frozenset


@dataclasses.dataclass(frozen=True)
class SokobanReplay:
  boards: tuple  # Board at each plan cell the rules allow, starting with the level
  illegal_at: int | None  # index (into the plan's cells) of the first refused cell
  num_moves: int  # moves the plan asks for (cells - 1)
  solved: bool  # what the checker says: legal moves that dock every box


def parse_sokoban(prompt: Sequence[str]) -> Board:
  """Whatever the prompt says, for drawing (the rules need a valid level: replay_sokoban)."""
  toks = _clean(prompt)
  workers = cells_after(toks, "worker")
  return Board(worker=workers[0] if workers else None,
               boxes=frozenset(cells_after(toks, "box")),
               docks=frozenset(cells_after(toks, "dock")),
               walls=frozenset(cells_after(toks, "wall")))


def replay_sokoban(prompt: Sequence[str], plan: Sequence[Cell]) -> SokobanReplay | None:
  """The plan under the Sokoban task's rules (sokoban.replay_states); None when the prompt
  is no valid level. Cell 0 must be the worker's own cell (illegal_at=0 otherwise)."""
  try:
    spec = sokoban.spec_from_prompt(prompt)
  except ValueError:
    return None
  states, bad = sokoban.replay_states(spec, plan)
  walls, docks = frozenset(spec.walls), frozenset(spec.docks)
  boards = tuple(Board(worker, frozenset(boxes), docks, walls) for worker, boxes in states)
  return SokobanReplay(boards, bad, max(len(plan) - 1, 0), sokoban.replay(spec, plan))


def _pick_frames(count: int, max_frames: int) -> list[int]:
  """Evenly spread frame indices, always keeping the first and the last."""
  max_frames = max(max_frames, 2)
  if count <= max_frames:
    return list(range(count))
  return sorted({round(i * (count - 1) / (max_frames - 1)) for i in range(max_frames)})


def _draw_board(ax, b: Board, n: int) -> None:  # ax: matplotlib Axes
  for (x, y) in b.walls:
    ax.add_patch(_rect(x, y, "#404040"))
  for (x, y) in b.docks:
    ax.plot([x], [y], "x", color="#2ca02c", ms=8, mew=2)
  for (x, y) in b.boxes:
    ax.add_patch(_rect(x, y, "#2ca02c" if (x, y) in b.docks else "#a0522d", pad=0.15))
  if b.worker is not None:
    ax.plot([b.worker[0]], [b.worker[1]], "o", color="#1f77b4", ms=9)
  ax.set_xlim(-0.5, n - 0.5)
  ax.set_ylim(n - 0.5, -0.5)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def _rect(x: int, y: int, colour: str, pad: float = 0.0) -> Rectangle:
  side = 1.0 - 2 * pad
  return Rectangle((x - 0.5 + pad, y - 0.5 + pad), side, side, color=colour)


def render_sokoban(prompt: Sequence[str], response: Sequence[str], path: str,
                   title: str = "", max_frames: int = 10) -> None:
  """The level, then the boards after the plan's moves (a strip, subsampled)."""
  trace, plan, malformed = read_plan(response)
  rep = replay_sokoban(prompt, plan)
  boards = rep.boards if rep is not None else (parse_sokoban(prompt),)
  cells = [c for b in boards for c in (b.walls | b.boxes | b.docks)]
  cells += [b.worker for b in boards if b.worker is not None]
  n = 1 + max((max(c) for c in cells), default=0)
  frames = _pick_frames(len(boards), max_frames)
  fig = Figure(figsize=(1.6 * len(frames) + 0.2, 2.0), dpi=_DPI, layout="constrained")
  for k, idx in enumerate(frames):
    ax = fig.add_subplot(1, len(frames), k + 1)
    _draw_board(ax, boards[idx], n)
    ax.set_title("level" if idx == 0 else f"move {idx}", fontsize=7)
  if rep is None:
    status = "the prompt is no valid level"
  elif not plan:
    status = "no plan"
  elif malformed:
    status = "malformed plan"
  elif rep.illegal_at == 0:
    status = "the plan does not start on the worker"
  elif rep.illegal_at is not None:
    status = f"illegal move {rep.illegal_at} of {rep.num_moves}"
  else:
    status = f"{rep.num_moves} moves, " + ("solved" if rep.solved else "not solved")
  clauses = sum(tok in (CREATE, CLOSE) for tok in trace)
  fig.suptitle(f"{title}  [{clauses} trace clauses; {status}]".strip(), fontsize=8)
  fig.savefig(path, dpi=_DPI)


def render_response(task_name: str, prompt_tokens: Sequence[str],
                    response_tokens: Sequence[str], path: str, title: str = "",
                    size: int | None = None) -> None:
  """Dispatches on the task name (the task classes' `name`) and writes a PNG at `path`.

  `size` is the maze side (the prompt does not state it; default: inferred).
  """
  if task_name == maze.MazeTask.name:
    render_maze(prompt_tokens, response_tokens, path, title, size)
  elif task_name == sokoban.SokobanTask.name:
    render_sokoban(prompt_tokens, response_tokens, path, title)
  else:
    raise ValueError(f"no renderer for task {task_name!r} (expected "
                     f"{maze.MazeTask.name} or {sokoban.SokobanTask.name})")
