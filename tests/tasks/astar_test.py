"""The generic A* against the reference traces, and its nondeterministic mode."""

import collections
import json
import pathlib
import random

import pytest

from dualformer_jax.tasks import astar as astar_lib
from dualformer_jax.tasks.base import Unsolvable

# Reference traces carried by the repository (tests/fixtures/README.md).
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"

# name -> (width, height, start, goal, walls), from tests/fixtures/README.md.
FIXTURE_MAZES = {
    "searchformer_trace_maze.json": (3, 3, (0, 0), (2, 2), ()),
    "searchformer_trace_maze_short.json": (3, 3, (0, 0), (0, 2), ((0, 1),)),
    "searchformer_trace_maze_walls.json": (3, 3, (0, 0), (0, 2), ((0, 1), (1, 1))),
}


def grid_problem(width, height, start, goal, walls):
  """A maze as plain A* callables over (x, y) cells, in the reference's own terms."""
  walls = set(walls)

  def children(cell):
    x, y = cell
    out = []
    for c in ((x, y + 1), (x, y - 1), (x - 1, y), (x + 1, y)):  # up, down, left, right
      if 0 <= c[0] < width and 0 <= c[1] < height and c not in walls:
        out.append(c)
    return out

  def heuristic(cell):
    return abs(cell[0] - goal[0]) + abs(cell[1] - goal[1])

  return dict(start=start, is_goal=lambda c: c == goal, children=children,
              heuristic=heuristic, tie_key=lambda c: c[0] + 100000 * c[1])


def bfs_len(width, height, start, goal, walls):
  walls = set(walls)
  dist = {start: 0}
  queue = collections.deque([start])
  while queue:
    x, y = queue.popleft()
    for c in ((x, y + 1), (x, y - 1), (x - 1, y), (x + 1, y)):
      if 0 <= c[0] < width and 0 <= c[1] < height and c not in walls and c not in dist:
        dist[c] = dist[(x, y)] + 1
        queue.append(c)
  return dist.get(goal)


def load_fixture(name):
  path = FIXTURES / name
  assert path.exists(), f"missing fixture {path}"
  return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(FIXTURE_MAZES))
def test_reproduces_reference_trace_step_for_step(name):
  steps = load_fixture(name)
  result = astar_lib.astar(**grid_problem(*FIXTURE_MAZES[name]))
  kinds = {astar_lib.EVENT_CREATE: "create", astar_lib.EVENT_CLOSE: "close"}
  got = [(kinds[k], s, g, h) for k, s, g, h in result.events]
  got += [("plan", s, g, h) for s, g, h in result.plan]
  want = [(st["action"], (st["state"]["x"], st["state"]["y"]), st["cost_from_start"],
           st["heuristic"]) for st in steps]
  assert got == want


def random_mazes(count, size=7, seed=0):
  """Solvable random mazes (seeded) with start != goal."""
  rng = random.Random(seed)
  out = []
  while len(out) < count:
    cells = [(x, y) for y in range(size) for x in range(size)]
    walls = set(rng.sample(cells, k=rng.randint(size, 2 * size)))
    free = [c for c in cells if c not in walls]
    start, goal = rng.sample(free, 2)
    if bfs_len(size, size, start, goal, walls) is not None:
      out.append((size, size, start, goal, tuple(sorted(walls))))
  return out


def test_nondeterministic_same_seed_same_trace():
  for maze in random_mazes(5):
    a = astar_lib.astar(**grid_problem(*maze), seed=7)
    b = astar_lib.astar(**grid_problem(*maze), seed=7)
    assert a.events == b.events and a.plan == b.plan


def test_nondeterministic_seeds_differ_and_stay_optimal():
  mazes = random_mazes(10)
  differs = 0
  for maze in mazes:
    optimal = bfs_len(*maze)
    runs = [astar_lib.astar(**grid_problem(*maze), seed=seed) for seed in range(4)]
    for r in runs:
      assert len(r.plan) - 1 == optimal
      assert r.plan[0][0] == maze[2] and r.plan[-1][0] == maze[3]
    differs += any(r.events != runs[0].events for r in runs[1:])
  assert differs > 0


def test_deterministic_plan_is_optimal():
  for maze in random_mazes(30, seed=1):
    assert len(astar_lib.astar(**grid_problem(*maze)).plan) - 1 == bfs_len(*maze)


def test_unreachable_goal_raises_unsolvable():
  walls = ((0, 1), (1, 1), (2, 1))  # a full row between start and goal
  with pytest.raises(Unsolvable):
    astar_lib.astar(**grid_problem(3, 3, (0, 0), (0, 2), walls))
  with pytest.raises(Unsolvable):
    astar_lib.astar(**grid_problem(3, 3, (0, 0), (0, 2), walls), seed=3)


def test_search_limit_is_an_unsolvable():
  problem = grid_problem(8, 8, (0, 0), (7, 7), ())
  with pytest.raises(astar_lib.SearchLimit):
    astar_lib.astar(**problem, max_expansions=3)
  assert len(astar_lib.astar(**problem, max_expansions=1000).plan) == 15
