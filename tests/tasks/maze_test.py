"""Maze task: generator, A* tokens against BFS and the reference, checker, JSON."""

import collections
import functools
import json
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualformer_jax import config as config_lib
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.tasks import astar as astar_lib
from dualformer_jax.tasks import base, make_task
from dualformer_jax.tasks.maze import MazeSpec, MazeTask

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_SPECS = {  # from tests/fixtures/README.md
    "searchformer_trace_maze.json": MazeSpec(3, 3, (0, 0), (2, 2), ()),
    "searchformer_trace_maze_short.json": MazeSpec(3, 3, (0, 0), (0, 2), ((0, 1),)),
    "searchformer_trace_maze_walls.json": MazeSpec(3, 3, (0, 0), (0, 2), ((0, 1), (1, 1))),
}
SIZE = 10
NUM_MAZES = 200


def bfs_len(spec):
  """Shortest number of moves, written independently of the task's own BFS."""
  walls = set(spec.walls)
  dist = {spec.start: 0}
  queue = collections.deque([spec.start])
  while queue:
    x, y = queue.popleft()
    for c in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
      if (0 <= c[0] < spec.width and 0 <= c[1] < spec.height and c not in walls
          and c not in dist):
        dist[c] = dist[(x, y)] + 1
        queue.append(c)
  return dist.get(spec.goal)


def oracle_correct(spec, cells):
  """The maze rule, restated: start to goal, free in-grid cells, unit moves."""
  free = {(x, y) for x in range(spec.width) for y in range(spec.height)} - set(spec.walls)
  return (bool(cells) and cells[0] == spec.start and cells[-1] == spec.goal
          and all(c in free for c in cells)
          and all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(cells, cells[1:])))


def groups3(tokens):
  return [tuple(tokens[i:i + 3]) for i in range(0, len(tokens), 3)]


def plan_cells(plan_tokens):
  return tuple((int(x), int(y)) for _, x, y in groups3(plan_tokens))


@functools.cache
def sampled_groups(size=SIZE, count=NUM_MAZES, seed=0):
  task = MazeTask(size)
  rng = np.random.default_rng(seed)
  groups, total = [], 0
  while total < count:
    group = task.sample_group(rng)
    groups.append(tuple(group))
    total += len(group)
  return tuple(groups)


def sampled_specs():
  return [s for g in sampled_groups() for s in g][:NUM_MAZES]


def test_from_config():
  c = config_lib.base_config()
  task = make_task(c.task)
  assert isinstance(task, MazeTask) and task.name == "maze"
  assert task.size == c.task.size and task.min_plan_len == c.task.size  # -1: the grid size
  c.task.min_plan_len = 3
  assert MazeTask.from_config(c.task).min_plan_len == 3


@pytest.mark.parametrize("kwargs, needle", [
    (dict(size=1), "size=1"),
    (dict(size=5, min_wall_frac=0.6, max_wall_frac=0.5), "0.6"),
    (dict(size=5, pairs_per_layout=0), "pairs_per_layout=0"),
])
def test_bad_arguments_are_named(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    MazeTask(**kwargs)


def test_generator_respects_the_config():
  task = MazeTask(SIZE)
  groups = [g for g in sampled_groups() if g]
  for group in groups:
    assert len(group) <= task.pairs_per_layout
    assert len({(s.start, s.goal) for s in group}) == len(group)
    assert len({task.layout_key(s) for s in group}) == 1
    for spec in group:
      assert (spec.width, spec.height) == (SIZE, SIZE)
      assert 30 <= len(spec.walls) <= 50
      assert list(spec.walls) == sorted(set(spec.walls), key=lambda c: c[0] + c[1] * SIZE)
      assert all(0 <= x < SIZE and 0 <= y < SIZE for x, y in spec.walls)
      assert spec.start != spec.goal
      assert spec.start not in spec.walls and spec.goal not in spec.walls
      assert bfs_len(spec) >= SIZE
  # Layouts are distinct, and their keys too.
  assert len({task.layout_key(g[0]) for g in groups}) == len({g[0].walls for g in groups})
  assert len(groups) > NUM_MAZES // task.pairs_per_layout
  # Seeded.
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  assert ([task.sample_group(rng_a) for _ in range(5)]
          == [task.sample_group(rng_b) for _ in range(5)])


def test_min_plan_len_filters():
  task = MazeTask(6, min_wall_frac=0.0, max_wall_frac=0.2, min_plan_len=8)
  rng = np.random.default_rng(0)
  specs = [s for _ in range(50) for s in task.sample_group(rng)]
  assert specs and all(bfs_len(s) >= 8 for s in specs)


@pytest.mark.parametrize("name", sorted(FIXTURE_SPECS))
def test_reference_tokens(name):
  path = FIXTURES / name
  assert path.exists(), f"missing fixture {path}"
  steps = json.loads(path.read_text())
  toks = MazeTask(3).solve_tokens(FIXTURE_SPECS[name])
  trace, plan = [], []
  for st_ in steps:
    x, y = str(st_["state"]["x"]), str(st_["state"]["y"])
    if st_["action"] == "plan":
      plan += ["plan", x, y]
    else:
      trace += [st_["action"], x, y, f"c{st_['cost_from_start']}", f"c{st_['heuristic']}"]
  assert toks.trace == trace
  assert toks.plan == plan


def reference_tokens(spec):
  """The reference rule on (x, y) cells: children up, down, left, right; ties x + 100000 y."""
  walls = set(spec.walls)

  def children(cell):
    x, y = cell
    return [c for c in ((x, y + 1), (x, y - 1), (x - 1, y), (x + 1, y))
            if 0 <= c[0] < spec.width and 0 <= c[1] < spec.height and c not in walls]

  def heuristic(cell):
    return abs(cell[0] - spec.goal[0]) + abs(cell[1] - spec.goal[1])

  result = astar_lib.astar(spec.start, lambda c: c == spec.goal, children, heuristic,
                           lambda c: c[0] + 100000 * c[1])
  trace = [t for kind, (x, y), g, h in result.events
           for t in (("create", "close")[kind], str(x), str(y), f"c{g}", f"c{h}")]
  return trace, as_plan([cell for cell, _, _ in result.plan])


def test_deterministic_tokens_follow_the_reference_rule():
  task = MazeTask(SIZE)
  for spec in sampled_specs():
    toks = task.solve_tokens(spec)
    assert (toks.trace, toks.plan) == reference_tokens(spec)


@pytest.mark.parametrize("seeded", [False, True])
def test_astar_plan_is_shortest_and_tokens_follow_the_format(seeded):
  task = MazeTask(SIZE)
  for i, spec in enumerate(sampled_specs()):
    toks = task.solve_tokens(spec, seed=i if seeded else None)
    # Prompt: start, goal, then walls row-major.
    want = ["start", *map(str, spec.start), "goal", *map(str, spec.goal)]
    for x, y in spec.walls:
      want += ["wall", str(x), str(y)]
    assert toks.prompt == want
    # Trace: 5-token clauses with g, h costs; h is the Manhattan distance.
    assert len(toks.trace) % 5 == 0
    clauses = [toks.trace[j:j + 5] for j in range(0, len(toks.trace), 5)]
    created = set()
    for kw, x, y, g, h in clauses:
      cell = (int(x), int(y))
      assert kw in ("create", "close") and g.startswith("c") and h.startswith("c")
      assert int(h[1:]) == abs(cell[0] - spec.goal[0]) + abs(cell[1] - spec.goal[1])
      assert cell not in spec.walls
      if kw == "create":
        created.add(cell)
      else:
        assert cell in created
    assert clauses[0] == ["create", *map(str, spec.start), "c0", clauses[0][4]]
    assert clauses[-1][:3] == ["close", *map(str, spec.goal)]
    assert int(clauses[-1][3][1:]) == bfs_len(spec)
    # Plan: `plan x y` per cell, start to goal, as short as BFS.
    assert all(g[0] == "plan" for g in groups3(toks.plan))
    cells = plan_cells(toks.plan)
    assert len(cells) - 1 == bfs_len(spec)
    assert oracle_correct(spec, cells)


def test_seeded_astar_is_reproducible_and_varies():
  task = MazeTask(SIZE)
  specs = sampled_specs()[:10]
  for spec in specs:
    assert task.solve_tokens(spec, seed=3) == task.solve_tokens(spec, seed=3)
  assert any(task.solve_tokens(s, seed=1).trace != task.solve_tokens(s, seed=2).trace
             for s in specs)


def test_unreachable_goal_raises():
  spec = MazeSpec(3, 3, (0, 0), (0, 2), ((0, 1), (1, 1), (2, 1)))
  with pytest.raises(base.Unsolvable):
    MazeTask(3).solve_tokens(spec)
  with pytest.raises(base.Unsolvable):
    MazeTask(3).solve_tokens(spec, seed=0)


def test_vocabulary_covers_generated_tokens():
  task = MazeTask(SIZE)
  vocab = task.vocabulary()
  assert len(vocab) == len(set(vocab)) == 6 + SIZE + SIZE * SIZE
  assert {"pad", "bos", "eos"}.isdisjoint(vocab)
  encoder = Vocab(vocab)
  for i, spec in enumerate(sampled_specs()):
    for seed in (None, i):
      toks = task.solve_tokens(spec, seed=seed)
      encoder.encode(toks.prompt + toks.trace + toks.plan)  # raises on an unknown token


def test_layout_key_depends_on_walls_and_shape():
  task = MazeTask(4)
  a = MazeSpec(4, 4, (0, 0), (3, 3), ((1, 1),))
  assert task.layout_key(a) == task.layout_key(MazeSpec(4, 4, (3, 0), (0, 3), ((1, 1),)))
  assert task.layout_key(a) != task.layout_key(MazeSpec(4, 4, (0, 0), (3, 3), ((2, 1),)))
  assert task.layout_key(a) != task.layout_key(MazeSpec(4, 5, (0, 0), (3, 3), ((1, 1),)))


# ----------------------------------------------------------------------- checker

def test_checker_accepts_every_astar_plan():
  task = MazeTask(SIZE)
  for i, spec in enumerate(sampled_specs()):
    toks = task.solve_tokens(spec, seed=i)
    cells = plan_cells(toks.plan)
    n_clauses = sum(t in ("create", "close") for t in toks.trace)  # 5 tokens per clause
    assert n_clauses == len(toks.trace) // 5 > 0
    for response, n_trace, clauses in [(toks.trace + toks.plan + ["eos"], len(toks.trace),
                                        n_clauses),
                                       (toks.plan, 0, 0),  # fast mode
                                       (toks.plan + ["eos", "plan", "junk", "pad"], 0, 0)]:
      v = task.check(toks.prompt, response)
      assert v == base.Verdict(correct=True, plan_len=bfs_len(spec), trace_len=n_trace,
                               plan=cells, malformed=False, trace_clauses=clauses)


# start (0,0), goal (0,2), walls (0,1), (1,1): the only path goes round the right.
SMALL = MazeSpec(3, 3, (0, 0), (0, 2), ((0, 1), (1, 1)))
SMALL_PATH = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2)]


def as_plan(cells):
  return [t for x, y in cells for t in ("plan", str(x), str(y))]


@pytest.mark.parametrize("cells, correct", [
    (SMALL_PATH, True),
    ([(0, 0), (0, 1), (0, 2)], False),  # through a wall
    ([(0, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2)], False),  # teleport
    ([(0, 0), (1, 1), (2, 1), (2, 2), (1, 2), (0, 2)], False),  # diagonal into a wall
    (SMALL_PATH[1:], False),  # wrong start
    (SMALL_PATH[:-1], False),  # does not reach the goal
    ([(0, 0), (1, 0), (1, 0)] + SMALL_PATH[2:], False),  # a step that stays put
    ([(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (2, 2), (1, 2), (0, 2)], False),  # off grid
    ([(0, 0)], False),
])
def test_checker_judges_paths(cells, correct):
  task = MazeTask(3)
  prompt = task.solve_tokens(SMALL).prompt
  v = task.check(prompt, ["create", "0", "0", "c0", "c2"] + as_plan(cells) + ["eos"])
  assert v.correct is correct and not v.malformed
  assert v.plan == tuple(cells) and v.plan_len == len(cells) - 1 and v.trace_len == 5
  assert v.trace_clauses == 1


@pytest.mark.parametrize("response, trace_len, clauses", [
    ([], 0, 0),
    (["eos"], 0, 0),
    (["create", "0", "0", "c0", "c2", "close", "0", "0", "eos"], 8, 2),  # a trace, no plan
    (as_plan(SMALL_PATH) + ["create"], 0, 0),  # trailing garbage before eos
    (as_plan(SMALL_PATH) + ["plan", "0"], 0, 0),  # a cut-off group
    (as_plan(SMALL_PATH)[:-1] + ["c3"], 0, 0),  # a cost as a coordinate
    (as_plan(SMALL_PATH) + ["close", "0", "2", "c6", "c0"], 0, 0),  # a clause after the plan
    (["plan", "0", "00"] + as_plan(SMALL_PATH[1:]), 0, 0),  # not a coordinate token
    (["plan", "-1", "0"] + as_plan(SMALL_PATH[1:]), 0, 0),
    (["create", "0", "0"] + as_plan(SMALL_PATH)[:-1], 3, 1),
])
def test_checker_rejects_malformed(response, trace_len, clauses):
  task = MazeTask(3)
  v = task.check(task.solve_tokens(SMALL).prompt, response)
  assert v == base.Verdict(correct=False, plan_len=None, trace_len=trace_len, plan=None,
                           malformed=True, trace_clauses=clauses)


def test_checker_with_a_bad_prompt_is_never_correct():
  task = MazeTask(3)
  v = task.check(["start", "0", "0", "goal"], as_plan(SMALL_PATH))
  assert not v.correct and not v.malformed and v.plan == tuple(SMALL_PATH)


def test_spec_from_prompt_round_trips():
  task = MazeTask(SIZE)
  for spec in sampled_specs()[:50]:
    prompt = task.solve_tokens(spec).prompt
    assert task.spec_from_prompt(prompt) == spec
    assert task.spec_from_prompt(["bos"] + prompt + ["eos", "pad"]) == spec


@pytest.mark.parametrize("prompt, needle", [
    ([], "6 \\+ 3k"),
    (["start", "0", "0", "goal", "1"], "6 \\+ 3k"),
    (["goal", "0", "0", "start", "1", "1"], "expected 'start'"),
    (["start", "0", "0", "goal", "1", "1", "plan", "2", "2"], "expected 'wall'"),
    (["start", "0", "0", "goal", "3", "1"], "not coordinates"),
    (["start", "0", "0", "goal", "0", "0"], "start == goal"),
    (["start", "0", "0", "goal", "1", "1", "wall", "0", "0"], "start .* on a wall"),
    (["start", "0", "0", "goal", "1", "1", "wall", "2", "2", "wall", "2", "2"], "duplicate"),
])
def test_spec_from_prompt_errors(prompt, needle):
  with pytest.raises(ValueError, match=needle):
    MazeTask(3).spec_from_prompt(prompt)


GARBAGE = st.one_of(
    st.sampled_from(MazeTask(4).vocabulary() + ["bos", "eos", "pad", "10", "-1", "0x1", "٣"]),
    st.text(max_size=4), st.integers(), st.none(), st.floats(allow_nan=True),
    st.binary(max_size=3), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(prompt=st.lists(GARBAGE, max_size=20), response=st.lists(GARBAGE, max_size=40))
def test_checker_never_raises_on_garbage(prompt, response):
  v = MazeTask(4).check(prompt, response)
  assert isinstance(v, base.Verdict)
  assert not (v.correct and v.malformed)
  assert (v.plan is None) == v.malformed == (v.plan_len is None)
  assert 0 <= v.trace_len <= len(response)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_checker_agrees_with_the_oracle_on_mutated_plans(data):
  task = MazeTask(SIZE)
  specs = sampled_specs()
  spec = specs[data.draw(st.integers(0, len(specs) - 1), label="spec")]
  toks = task.solve_tokens(spec)
  cells = list(plan_cells(toks.plan))
  coord = st.tuples(st.integers(0, SIZE - 1), st.integers(0, SIZE - 1))
  for _ in range(data.draw(st.integers(0, 3), label="mutations")):
    op = data.draw(st.sampled_from(["delete", "insert", "replace", "swap", "truncate",
                                    "repeat"]))
    if not cells:
      break
    i = data.draw(st.integers(0, len(cells) - 1))
    if op == "delete":
      del cells[i]
    elif op == "insert":
      cells.insert(i, data.draw(coord))
    elif op == "replace":
      cells[i] = data.draw(coord)
    elif op == "swap":
      j = data.draw(st.integers(0, len(cells) - 1))
      cells[i], cells[j] = cells[j], cells[i]
    elif op == "truncate":
      cells = cells[:i]
    else:
      cells.insert(i, cells[i])
  v = task.check(toks.prompt, toks.trace + as_plan(cells) + ["eos"])
  if not cells:
    assert v.malformed and not v.correct
  else:
    assert not v.malformed and v.plan == tuple(cells) and v.plan_len == len(cells) - 1
    assert v.correct == oracle_correct(spec, tuple(cells))


# ------------------------------------------------------------------------- JSON

def test_json_round_trip():
  task = MazeTask(SIZE)
  for spec in sampled_specs()[:50]:
    obj = json.loads(json.dumps(task.spec_to_json(spec)))
    assert task.spec_from_json(obj) == spec


def test_json_accepts_other_sizes_and_sorts_walls():
  task = MazeTask(3)  # the spec carries its own shape, bigger than the task's
  spec = task.spec_from_json({"width": 5, "height": 3, "start": [0, 0], "goal": [4, 1],
                              "walls": [[3, 1], [0, 2], [1, 1], [2, 1]]})
  assert spec == MazeSpec(5, 3, (0, 0), (4, 1), ((1, 1), (2, 1), (3, 1), (0, 2)))
  toks = task.solve_tokens(spec)
  assert toks.prompt[6:] == ["wall", "1", "1", "wall", "2", "1", "wall", "3", "1", "wall", "0", "2"]
  assert toks.plan == as_plan([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 1)])


def good_json(**changes):
  obj = {"width": 3, "height": 3, "start": [0, 0], "goal": [2, 2], "walls": [[1, 1]]}
  obj.update(changes)
  return {k: v for k, v in obj.items() if v is not ...}


@pytest.mark.parametrize("obj, needle", [
    ([1, 2], "JSON object"),
    (good_json(walls=...), "missing field 'walls'"),
    (good_json(width=...), "missing field 'width'"),
    (good_json(extra=1), "unknown fields \\['extra'\\]"),
    (good_json(width=0), "width=0"),
    (good_json(height="3"), "height='3'"),
    (good_json(width=True), "width=True"),
    (good_json(width=10**9), "width=1000000000"),
    (good_json(start=[0]), "start=\\[0\\]"),
    (good_json(start=[0, 0.5]), "start="),
    (good_json(goal=[3, 0]), "goal=\\[3, 0\\]: outside the 3x3 grid"),
    (good_json(walls=[[1, 1], [5, 5]]), "walls\\[1\\]=\\[5, 5\\]: outside"),
    (good_json(walls={"a": 1}), "walls="),
    (good_json(walls=[[0, 0]]), "start \\(0, 0\\) is on a wall"),
    (good_json(walls=[[2, 2]]), "goal \\(2, 2\\) is on a wall"),
    (good_json(goal=[0, 0]), "start == goal"),
    (good_json(walls=[[1, 1], [1, 1]]), "duplicate walls"),
])
def test_json_errors_name_the_field(obj, needle):
  with pytest.raises(ValueError, match=needle):
    MazeTask(3).spec_from_json(obj)
