"""Pictures: parsing, Sokoban replay, and PNGs written even for garbage responses."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from dualformer_jax.eval import render
from dualformer_jax.tasks.maze import MazeTask
from dualformer_jax.tasks.sokoban import SokobanTask


def maze_prompt():
  """5 x 5: start top-left, goal bottom-right, a wall row with a gap at x=4."""
  walls = [(0, 2), (1, 2), (2, 2), (3, 2)]
  toks = ["start", "0", "0", "goal", "4", "4"]
  for x, y in sorted(walls, key=lambda c: c[0] + 5 * c[1]):
    toks += ["wall", str(x), str(y)]
  return toks


PLAN = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4)]


def maze_response(with_trace=True, plan=PLAN):
  toks = ["bos"]
  if with_trace:
    toks += ["create", "0", "0", "c0", "c8", "close", "0", "0", "c0", "c8",
             "create", "1", "0", "c1", "c7", "create", "0", "1", "c1", "c7",
             "close", "1", "0", "c1", "c7"]
  for x, y in plan:
    toks += ["plan", str(x), str(y)]
  return toks + ["eos", "pad", "pad"]


def sokoban_prompt():
  """7 x 7 with border walls: push box (3,3) right onto (4,3), then box (3,2) up onto (3,1)."""
  walls = sorted({(x, y) for x in range(7) for y in range(7) if x in (0, 6) or y in (0, 6)}
                 | {(1, 1), (5, 5)}, key=lambda c: f"{c[0]}-{c[1]}")
  toks = ["worker", "2", "3", "box", "3", "2", "box", "3", "3", "dock", "3", "1", "dock", "4", "3"]
  for x, y in walls:
    toks += ["wall", str(x), str(y)]
  return toks


SOKOBAN_PLAN = ["plan", "2", "3", "plan", "3", "3", "plan", "3", "2"]

GARBAGE = [
    [],
    ["bos"],
    ["eos"],
    ["plan"],
    ["bos", "plan", "7"],
    ["bos", "create", "x", "y", "plan", "99", "-1", "eos"],
    ["bos", "plan", "999", "999", "plan", "0", "0", "plan", "²", "1"],
    ["bos", "close", "1", "close", "plan", "plan", "plan", "1", "1", "c3"],
    ["bos"] + ["create", "4"] * 50,
    ["wall", "start", "goal", "worker", "box", "dock", "1"],
]


def assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  img = imread(str(path))
  assert img.ndim == 3 and min(img.shape[:2]) >= 100
  return img


def test_parse_maze():
  s = render.parse_maze(maze_prompt(), maze_response())
  assert (s.size, s.start, s.goal) == (5, (0, 0), (4, 4))
  assert s.walls == {(0, 2), (1, 2), (2, 2), (3, 2)}
  assert s.created == ((0, 0), (1, 0), (0, 1)) and s.closed == ((0, 0), (1, 0))
  assert s.plan == tuple(PLAN)
  assert render.maze_is_path(s) and MazeTask(5).check(maze_prompt(), maze_response()).correct
  through_wall = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
  assert not render.maze_is_path(render.parse_maze(maze_prompt(), maze_response(plan=through_wall)))
  assert render.parse_maze(maze_prompt(), [], size=9).size == 9


def test_maze_png_shows_trace_and_plan(tmp_path):
  full, plan_only, nothing = (tmp_path / f"{k}.png" for k in ("full", "plan", "none"))
  render.render_response("maze", maze_prompt(), maze_response(), str(full), title="slow")
  render.render_response("maze", maze_prompt(), maze_response(with_trace=False), str(plan_only))
  render.render_response("maze", maze_prompt(), ["bos", "eos"], str(nothing))
  imgs = [assert_png(p) for p in (full, plan_only, nothing)]
  assert imgs[0].shape == imgs[1].shape == imgs[2].shape
  assert not np.array_equal(imgs[0], imgs[1])  # the trace is drawn
  assert not np.array_equal(imgs[1], imgs[2])  # the plan is drawn


def test_sokoban_replay():
  board = render.parse_sokoban(sokoban_prompt())
  assert board.worker == (2, 3) and board.boxes == {(3, 2), (3, 3)}
  plan = [(2, 3), (3, 3), (3, 2)]
  rep = render.replay_sokoban(sokoban_prompt(), plan)
  assert rep.illegal_at is None and rep.solved and len(rep.boards) == 3
  assert rep.boards[1].boxes == {(3, 2), (4, 3)} and rep.boards[2].boxes == {(3, 1), (4, 3)}
  # Into a wall / a box pushed into a box / a jump: stops there, keeps earlier boards.
  assert render.replay_sokoban(sokoban_prompt(), [(2, 3), (1, 3), (0, 3)]).illegal_at == 2
  assert render.replay_sokoban(sokoban_prompt(), [(2, 3), (2, 2), (3, 2)]).illegal_at is None
  blocked = render.replay_sokoban(sokoban_prompt(), [(2, 3), (2, 4), (3, 4), (3, 3)])
  assert blocked.illegal_at == 3 and len(blocked.boards) == 3  # (3,3) pushed into (3,2)
  assert render.replay_sokoban(sokoban_prompt(), [(2, 3), (4, 3)]).illegal_at == 1
  assert not render.replay_sokoban(sokoban_prompt(), [(2, 3), (2, 4)]).solved
  assert render.replay_sokoban(["worker", "1", "1"], plan) is None  # no valid level


def _title(fig_path, monkeypatch, draw):
  """The suptitle / title a render call gives its figure."""
  titles = []
  real = Figure.savefig

  def savefig(fig, path, **kw):
    titles.append(fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title())
    return real(fig, path, **kw)

  monkeypatch.setattr(Figure, "savefig", savefig)
  draw(str(fig_path))
  return titles[-1]


@pytest.mark.parametrize("plan,solved", [
    ([(2, 3), (3, 3), (3, 2)], True),
    ([(3, 3), (3, 2)], False),  # does not start on the worker's cell (read as moves, it solves)
    ([(2, 3), (3, 3)], False),  # legal, one box left off its dock
])
def test_sokoban_picture_agrees_with_the_checker(tmp_path, monkeypatch, plan, solved):
  response = ["bos"] + [t for x, y in plan for t in ("plan", str(x), str(y))] + ["eos"]
  assert SokobanTask().check(sokoban_prompt(), response).correct == solved
  assert render.replay_sokoban(sokoban_prompt(), plan).solved == solved
  title = _title(tmp_path / "s.png", monkeypatch,
                 lambda p: render.render_response("sokoban", sokoban_prompt(), response, p))
  assert (", solved]" in title) == solved, title
  if plan[0] != (2, 3):
    assert "does not start on the worker" in title


def test_malformed_plans_are_never_drawn_as_legal(tmp_path, monkeypatch):
  sok = ["bos"] + SOKOBAN_PLAN + ["box", "eos"]  # trailing garbage: the checker reads no plan
  assert SokobanTask().check(sokoban_prompt(), sok).malformed
  title = _title(tmp_path / "s.png", monkeypatch,
                 lambda p: render.render_response("sokoban", sokoban_prompt(), sok, p))
  assert "malformed plan" in title
  maze = maze_response()[:-3] + ["wall", "eos"]
  assert MazeTask(5).check(maze_prompt(), maze).malformed
  title = _title(tmp_path / "m.png", monkeypatch,
                 lambda p: render.render_response("maze", maze_prompt(), maze, p, size=5))
  assert "malformed plan" in title


def test_sokoban_png(tmp_path):
  path = tmp_path / "sok.png"
  render.render_response("sokoban", sokoban_prompt(), ["bos", "plan"] + SOKOBAN_PLAN[1:] + ["eos"],
                         str(path), title="fast")
  solved = assert_png(path)
  level = tmp_path / "level.png"
  render.render_response("sokoban", sokoban_prompt(), ["bos", "eos"], str(level))
  assert solved.shape[1] > assert_png(level).shape[1]  # a strip of 3 boards vs 1


def test_long_sokoban_plan_is_subsampled(tmp_path):
  back_and_forth = ["plan", "2", "3"] + ["plan", "2", "4", "plan", "2", "3"] * 30
  path = tmp_path / "long.png"
  render.render_sokoban(sokoban_prompt(), back_and_forth, str(path), max_frames=5)
  wide = tmp_path / "wide.png"
  render.render_sokoban(sokoban_prompt(), back_and_forth, str(wide), max_frames=8)
  assert assert_png(path).shape[1] < assert_png(wide).shape[1]


@pytest.mark.parametrize("task,prompt", [("maze", maze_prompt()), ("sokoban", sokoban_prompt())])
@pytest.mark.parametrize("k", range(len(GARBAGE)))
def test_garbage_response_still_renders(tmp_path, task, prompt, k):
  path = tmp_path / f"{task}_{k}.png"
  render.render_response(task, prompt, GARBAGE[k], str(path), title="garbage")
  assert_png(path)


def test_unknown_task():
  with pytest.raises(ValueError, match="no renderer"):
    render.render_response("chess", [], [], "x.png")
