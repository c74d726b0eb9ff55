"""Sokoban task: game rules, heuristic, A* optimality, tokens, levels, generator, checker.

The oracle here (`_Sim`, `_bfs_moves`) is an independent set-based simulator,
so A* and the checker are compared against code they do not share.
"""

import collections
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import sokoban as sokoban_configs
from dualformer_jax.data.vocab import Vocab, strip_specials
from dualformer_jax.tasks import astar as astar_lib
from dualformer_jax.tasks import base, make_task
from dualformer_jax.tasks import sokoban
from dualformer_jax.tasks.sokoban import (CostOverflow, SokobanSpec, SokobanTask, parse_level,
                                          render_level)

_D = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


class _Sim:
  """Plain Sokoban on Python sets: the oracle."""

  def __init__(self, spec: SokobanSpec):
    self.walls, self.docks = set(spec.walls), set(spec.docks)
    self.start = (spec.worker, frozenset(spec.boxes))

  def step(self, state, dxy):
    (x, y), boxes = state
    nxt = (x + dxy[0], y + dxy[1])
    if nxt in self.walls:
      return None
    if nxt in boxes:
      beyond = (nxt[0] + dxy[0], nxt[1] + dxy[1])
      if beyond in self.walls or beyond in boxes:
        return None
      boxes = boxes - {nxt} | {beyond}
    return nxt, boxes

  def solved(self, state) -> bool:
    return state[1] <= self.docks

  def replay(self, cells) -> bool:
    if not cells or tuple(cells[0]) != self.start[0]:
      return False
    state = self.start
    for a, b in zip(cells, cells[1:]):
      dxy = (b[0] - a[0], b[1] - a[1])
      if abs(dxy[0]) + abs(dxy[1]) != 1:
        return False
      state = self.step(state, dxy)
      if state is None:
        return False
    return self.solved(state)


def _bfs_moves(spec: SokobanSpec) -> int | None:
  sim = _Sim(spec)
  dist = {sim.start: 0}
  queue = collections.deque([sim.start])
  while queue:
    s = queue.popleft()
    if sim.solved(s):
      return dist[s]
    for dxy in _D.values():
      t = sim.step(s, dxy)
      if t is not None and t not in dist:
        dist[t] = dist[s] + 1
        queue.append(t)
  return None


def _accepts(task: SokobanTask, spec: SokobanSpec) -> bool:
  """Deterministic A* solves it within max_expansions and max_cost (what the generator keeps)."""
  try:
    task.solve_tokens(spec)
  except base.Unsolvable:  # SearchLimit and CostOverflow too
    return False
  return True


def _levels(task: SokobanTask, count: int, seed: int) -> list[SokobanSpec]:
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < count:
    out += [s for s in task.sample_group(rng) if _accepts(task, s)]
  return out


def apply_move(spec: SokobanSpec, move: str) -> SokobanSpec | None:
  """The level after one worker move under sokoban.replay_states, or None when refused."""
  (x, y), (dx, dy) = spec.worker, _D[move]
  states, bad = sokoban.replay_states(spec, [spec.worker, (x + dx, y + dy)])
  if bad is not None:
    return None
  worker, boxes = states[-1]
  return dataclasses.replace(spec, worker=worker, boxes=boxes)


def _solved(spec: SokobanSpec) -> bool:
  return set(spec.boxes) <= set(spec.docks)


def _cells(plan_tokens):
  return [(int(plan_tokens[i + 1]), int(plan_tokens[i + 2])) for i in range(0, len(plan_tokens), 3)]


def _plan_tokens(cells):
  return [t for x, y in cells for t in ("plan", str(x), str(y))]


@pytest.fixture(scope="module")
def task():
  return SokobanTask()


@pytest.fixture(scope="module")
def levels(task):
  return _levels(task, 50, seed=7)


# ----------------------------------------------------------------- game rules

CORRIDOR = ["########",
            "#  @$ .#",
            "########"]


def test_push_moves_box_and_worker():
  spec = apply_move(parse_level(CORRIDOR), "right")
  assert spec.worker == (4, 1) and spec.boxes == ((5, 1),)
  assert render_level(spec)[1] == "#   @$.#"
  spec = apply_move(spec, "right")
  assert render_level(spec)[1] == "#    @*#"
  assert _solved(spec)


def test_no_pull():
  spec = apply_move(apply_move(parse_level(CORRIDOR), "right"), "left")
  assert spec.worker == (3, 1) and spec.boxes == ((5, 1),)


def test_blocked_push_into_wall_and_box_and_walk_into_wall():
  wall_push = parse_level(["######", "# .@$#", "######"])
  assert apply_move(wall_push, "right") is None
  box_push = parse_level(["#######", "#@$$..#", "#######"])
  assert apply_move(box_push, "right") is None
  assert apply_move(box_push, "up") is None and apply_move(box_push, "left") is None


def test_vertical_moves_use_screen_rows():
  spec = parse_level(["#####", "# . #", "# $ #", "# @ #", "#####"])
  up = apply_move(spec, "up")  # y - 1: toward row 0
  assert up.worker == (2, 2) and up.boxes == ((2, 1),) and _solved(up)
  assert apply_move(spec, "down") is None


def test_children_are_the_legal_steps_in_move_order(levels):
  rng = np.random.default_rng(0)
  for spec in levels[:10]:
    board = sokoban._Board(spec)
    s = board.encode(spec.worker, spec.boxes)
    for _ in range(30):
      steps = [board.step(s, d) for d in range(4)]
      assert board.children(s) == [t for t in steps if t is not None]
      s = board.children(s)[rng.integers(len(board.children(s)))]


# ------------------------------------------------------------------ heuristic


def test_heuristic_sums_distance_to_nearest_open_dock():
  spec = parse_level(["#######",
                      "#.    #",
                      "#  $  #",
                      "#   $.#",
                      "#@    #",
                      "#######"])
  # box (3,2): docks (1,1) at 3, (5,3) at 3; box (4,3): dock (5,3) at 1.
  assert sokoban.heuristic(spec) == 4
  on_dock = parse_level(["#######",
                         "#.    #",
                         "#  $  #",
                         "#    *#",
                         "#@    #",
                         "#######"])
  # (5,3) holds a box, so (3,2) only counts the open dock (1,1).
  assert sokoban.heuristic(on_dock) == 3
  solved = parse_level(["#####", "#*@*#", "#####"])
  assert sokoban.heuristic(solved) == 0


def test_heuristic_is_infinite_for_a_cornered_box_only():
  cornered = parse_level(["######", "#$  .#", "#  @ #", "######"])
  assert sokoban.heuristic(cornered) == math.inf
  along_wall = parse_level(["######", "# $ .#", "#  @ #", "######"])  # can still go left/right
  assert sokoban.heuristic(along_wall) == 2
  cornered_on_dock = parse_level(["######", "#*  .#", "# $@ #", "######"])
  assert sokoban.heuristic(cornered_on_dock) == 3  # (2,2) to the open dock (4,1)
  with pytest.raises(base.Unsolvable):
    SokobanTask().solve_tokens(cornered)


# ------------------------------------------------------------------------ A*


def test_astar_plan_length_equals_bfs_on_50_levels(task, levels):
  for i, spec in enumerate(levels):
    want = _bfs_moves(spec)
    det = task.solve_tokens(spec)
    rnd = task.solve_tokens(spec, seed=i)
    assert len(det.plan) // 3 - 1 == want, render_level(spec)
    assert len(rnd.plan) // 3 - 1 == want, render_level(spec)
    assert _Sim(spec).replay(_cells(det.plan)) and _Sim(spec).replay(_cells(rnd.plan))


def test_unsolvable_and_search_limit():
  stuck = parse_level(["######", "#@ $ #", "#   .#", "######"])  # the box never leaves row 1
  assert _bfs_moves(stuck) is None
  with pytest.raises(base.Unsolvable):
    SokobanTask().solve_tokens(stuck)
  spec = parse_level(CORRIDOR)
  with pytest.raises(astar_lib.SearchLimit):
    SokobanTask(max_expansions=1).solve_tokens(spec)
  assert not _accepts(SokobanTask(max_expansions=1), spec)


def test_seeded_runs_are_reproducible_and_vary(task, levels):
  spec = max(levels[:10], key=lambda s: len(task.solve_tokens(s).trace))
  a, b = task.solve_tokens(spec, seed=3), task.solve_tokens(spec, seed=3)
  assert a == b
  traces = {tuple(task.solve_tokens(spec, seed=k).trace) for k in range(6)}
  assert len(traces) > 1
  assert task.solve_tokens(spec) == task.solve_tokens(spec)


# --------------------------------------------------------------------- tokens

HAND = ["######",
        "#@$.*#",
        "######"]


def test_tokens_of_a_hand_made_level(task):
  toks = task.solve_tokens(parse_level(HAND))
  walls = ["0-0", "0-1", "0-2", "1-0", "1-2", "2-0", "2-2", "3-0", "3-2", "4-0", "4-2", "5-0",
           "5-1", "5-2"]
  assert toks.prompt == (["worker", "1", "1", "box", "2", "1", "box", "4", "1",
                          "dock", "3", "1", "dock", "4", "1"]
                         + [t for w in walls for t in ["wall", *w.split("-")]])
  # The box on the dock at (4,1) is never listed in a clause.
  assert toks.trace == ["create", "worker", "1", "1", "box", "2", "1", "c0", "c1",
                        "close", "worker", "1", "1", "box", "2", "1", "c0", "c1",
                        "create", "worker", "2", "1", "c1", "c0",
                        "close", "worker", "2", "1", "c1", "c0"]
  assert toks.plan == ["plan", "1", "1", "plan", "2", "1"]


def test_groups_sort_by_the_xy_string():
  spec = parse_level(["#############",
                      "#           #",
                      "# $      @$.#",
                      "#          .#",
                      "#############"])
  toks = SokobanTask(size=13).solve_tokens(spec)
  assert toks.prompt[:15] == ["worker", "9", "2", "box", "10", "2", "box", "2", "2",
                              "dock", "11", "2", "dock", "11", "3"]
  walls = [(toks.prompt[i + 1], toks.prompt[i + 2]) for i in range(15, len(toks.prompt), 3)]
  assert walls[:5] == [("0", "0"), ("0", "1"), ("0", "2"), ("0", "3"), ("0", "4")]
  assert walls[5:9] == [("1", "0"), ("1", "4"), ("10", "0"), ("10", "4")]
  # h = 1 (box 10,2 to dock 11,2) + 9 (box 2,2 to the nearest open dock, 11,2).
  assert toks.trace[:12] == ["create", "worker", "9", "2", "box", "10", "2", "box", "2", "2",
                             "c0", "c10"]


def test_trace_grammar_and_vocabulary(task, levels):
  vocab = Vocab(task.vocabulary())
  for i, spec in enumerate(levels[:15]):
    toks = task.solve_tokens(spec, seed=i)
    vocab.encode(toks.prompt + toks.trace + toks.plan)  # every token is known
    clauses, cur = [], None
    for t in toks.trace:
      if t in ("create", "close"):
        cur = [t]
        clauses.append(cur)
      else:
        cur.append(t)
    for c in clauses:
      assert c[1] == "worker" and c[-2].startswith("c") and c[-1].startswith("c")
      boxes = c[4:-2]
      assert len(boxes) % 3 == 0 and len(boxes) <= 3 * task.num_boxes
      assert boxes[::3] == ["box"] * (len(boxes) // 3)
      keys = ["-".join(boxes[j + 1:j + 3]) for j in range(0, len(boxes), 3)]
      assert keys == sorted(keys)
    assert clauses[0][0] == "create" and clauses[-1][0] == "close"
    last = clauses[-1]
    assert last[1:4] == ["worker"] + toks.plan[-2:] and len(last) == 6  # goal: all boxes docked
    assert last[-2] == f"c{len(toks.plan) // 3 - 1}" and last[-1] == "c0"


def test_costs_above_max_cost_raise_and_are_skipped(levels):
  small = SokobanTask(max_cost=1)  # every generated level needs at least 2 moves
  with pytest.raises(CostOverflow, match="max_cost=1"):
    small.solve_tokens(levels[0])
  assert isinstance(CostOverflow("x"), base.Unsolvable)  # the dataset generator skips it
  rng = np.random.default_rng(0)
  drawn = [s for _ in range(20) for s in small.sample_group(rng)]
  assert drawn and not any(_accepts(small, s) for s in drawn)


def test_vocabulary_and_config():
  task = SokobanTask.from_config(sokoban_configs.get_config("paper").task)
  assert (task.size, task.num_boxes, task.num_docks, task.max_cost) == (7, 2, 2, 400)
  assert make_task(sokoban_configs.get_config("paper").task) == task
  voc = task.vocabulary()
  assert voc[:7] == ["worker", "box", "dock", "wall", "create", "close", "plan"]
  assert voc[7:14] == [str(i) for i in range(7)] and voc[14] == "c0" and voc[-1] == "c400"
  assert len(set(voc)) == len(voc)
  assert dataclasses.replace(task, size=12).vocabulary()[7:19] == [str(i) for i in range(12)]
  with pytest.raises(ValueError, match="size=2"):
    SokobanTask(size=2)
  with pytest.raises(ValueError, match="num_docks=1"):
    SokobanTask(num_boxes=2, num_docks=1)
  with pytest.raises(ValueError, match="box_border_margin=2"):
    SokobanTask(size=5).draw_level(np.random.default_rng(0))  # one box cell for two boxes


# ---------------------------------------------------------------- text levels


def test_render_parse_round_trip(task, levels):
  for spec in levels:
    assert parse_level(render_level(spec)) == spec
    assert task.spec_from_json(task.spec_to_json(spec)) == spec
  lines = ["#######",
           "#+ *  #",
           "# $.  #",
           "##   ##",
           "#######"]
  spec = parse_level(lines)
  assert render_level(spec) == lines
  assert spec.worker == (1, 1) and spec.boxes == ((2, 2), (3, 1))
  assert spec.docks == ((1, 1), (3, 1), (3, 2))
  assert task.spec_from_prompt(sokoban.prompt_tokens(spec)) == spec
  assert task.spec_from_prompt(["bos"] + sokoban.prompt_tokens(spec) + ["eos", "wall"]) == spec


@pytest.mark.parametrize("lines, match", [
    (["#####", "#@$x#", "#####"], "column 3: bad character 'x'"),
    (["#####", "#@$.", "#####"], "row 1 has 4 characters"),
    (["#####", "# $.#", "#####"], "exactly one worker"),
    (["######", "#@$@.#", "######"], "exactly one worker"),
    (["######", "#@$$.#", "######"], "2 docks|1 docks for 2 boxes"),
    (["#####", "#@ .#", "#####"], "at least one box"),
    (["#####", "#@$. ", "#####"], r"border must be walls, \(4, 1\)"),
    ([], "non-empty list"),
    ("#####", "non-empty list"),
    (["#####", 7, "#####"], "row 1"),
])
def test_parse_level_errors(lines, match):
  with pytest.raises(ValueError, match=match):
    parse_level(lines)


def test_spec_json_errors(task):
  with pytest.raises(ValueError, match="field 'level'"):
    task.spec_from_json({"levels": HAND})
  with pytest.raises(ValueError, match="field 'level'"):
    task.spec_from_json({"level": HAND, "extra": 1})
  with pytest.raises(ValueError, match="JSON object"):
    task.spec_from_json(["level"])
  with pytest.raises(ValueError, match="^level: row 1"):
    task.spec_from_json({"level": ["######", "#@$.*", "######"]})


def test_spec_validation_names_the_field():
  with pytest.raises(ValueError, match="boxes.*on a wall"):
    SokobanSpec(3, 3, ((0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (1, 2), (2, 2)),
                ((0, 0),), ((1, 1),), (1, 1))
  with pytest.raises(ValueError, match=r"worker=\(9, 9\).*outside"):
    SokobanSpec(3, 3, (), ((1, 1),), ((1, 1),), (9, 9))


# ------------------------------------------------------------------ generator


def test_generator_respects_constraints(task):
  rng = np.random.default_rng(11)
  n, m = task.size, task.box_border_margin
  border = {(x, y) for x in range(n) for y in range(n) if x in (0, n - 1) or y in (0, n - 1)}
  for _ in range(200):
    spec = task.draw_level(rng)
    if spec is None:
      continue
    assert (spec.width, spec.height) == (n, n)
    interior_walls = set(spec.walls) - border
    assert border <= set(spec.walls) and len(interior_walls) == task.num_interior_walls
    assert len(spec.boxes) == task.num_boxes and len(spec.docks) == task.num_docks
    assert all(m <= x < n - m and m <= y < n - m for x, y in spec.boxes)
    objects = list(interior_walls) + list(spec.boxes) + list(spec.docks) + [spec.worker]
    assert len(set(objects)) == len(objects)
  a = [task.sample_group(np.random.default_rng(5)) for _ in range(2)]
  assert a[0] == a[1]


def test_accepts_keeps_only_solvable_levels(task):
  rng = np.random.default_rng(3)
  kept = drawn = 0
  for _ in range(40):
    group = task.sample_group(rng)  # unsolved draws
    drawn += len(group)
    for spec in group:
      if not _accepts(task, spec):
        continue
      kept += 1
      assert _bfs_moves(spec) is not None
      assert task.layout_key(spec) == "|".join(render_level(spec))
  assert 0 < kept <= drawn
  assert _accepts(task, parse_level(CORRIDOR)) and _accepts(SokobanTask(max_cost=2),
                                                            parse_level(CORRIDOR))
  assert not _accepts(SokobanTask(max_cost=1), parse_level(CORRIDOR))  # h and the plan need c2
  assert not _accepts(task, parse_level(["######", "#@ $ #", "#   .#", "######"]))


def test_margin_one_puts_boxes_on_the_inner_ring():
  task = SokobanTask(box_border_margin=1)
  rng = np.random.default_rng(0)
  boxes = [b for _ in range(50) for b in task.draw_level(rng).boxes]
  assert any(x in (1, 5) or y in (1, 5) for x, y in boxes)


# -------------------------------------------------------------------- checker


def test_checker_accepts_every_astar_plan(task, levels):
  for i, spec in enumerate(levels):
    toks = task.solve_tokens(spec, seed=i)
    response = toks.trace + toks.plan + ["eos", "plan", "junk"]
    v = task.check(toks.prompt, response)
    assert v.correct and not v.malformed
    assert v.plan_len == len(toks.plan) // 3 - 1 and v.trace_len == len(toks.trace)
    assert v.trace_clauses == sum(t in ("create", "close") for t in toks.trace) > 0
    assert v.plan == tuple(_cells(toks.plan))
    fast = task.check(toks.prompt, toks.plan)  # plan only, no eos
    assert fast.correct and fast.trace_len == 0


def test_checker_rejects_mutated_plans(task):
  spec = parse_level(CORRIDOR)
  prompt = task.solve_tokens(spec).prompt
  good = [(3, 1), (4, 1), (5, 1)]
  assert task.check(prompt, _plan_tokens(good) + ["eos"]).correct
  cases = {
      "not solved": [(3, 1), (4, 1)],
      "wrong start": [(2, 1), (3, 1), (4, 1), (5, 1)],
      "teleport": [(3, 1), (5, 1)],
      "wall": [(3, 1), (3, 0), (3, 1), (4, 1), (5, 1)],
      "illegal push": [(3, 1), (4, 1), (5, 1), (6, 1)],  # box against the wall
      "diagonal": [(3, 1), (4, 2), (5, 1)],
  }
  for name, cells in cases.items():
    v = task.check(prompt, _plan_tokens(cells) + ["eos"])
    assert not v.correct and not v.malformed, name
    assert v.plan_len == len(cells) - 1, name
  for response in ([], ["eos"], ["create", "worker", "3"], _plan_tokens(good) + ["plan", "5"],
                   _plan_tokens(good) + ["box", "1", "1", "eos"], ["plan", "3", "x"]):
    v = task.check(prompt, response)
    assert not v.correct and v.malformed and v.plan is None and v.plan_len is None, response


def test_checker_replays_pushes_of_two_boxes(task, levels):
  spec = levels[0]
  toks = task.solve_tokens(spec)
  cells = _cells(toks.plan)
  rng = np.random.default_rng(1)
  for _ in range(200):
    mutated = list(cells)
    i = int(rng.integers(len(mutated)))
    mutated[i] = (int(rng.integers(7)), int(rng.integers(7)))
    v = task.check(toks.prompt, _plan_tokens(mutated))
    assert v.correct == _Sim(spec).replay(mutated)


_TOKENS = st.one_of(
    st.sampled_from(SokobanTask().vocabulary() + ["bos", "eos", "pad", "10", "07", "-1", ""]),
    st.text(max_size=4), st.integers(), st.none())


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKENS, max_size=40))
def test_checker_never_raises_on_garbage(response):
  task = SokobanTask()
  prompt = task.solve_tokens(parse_level(CORRIDOR)).prompt
  v = task.check(prompt, response)
  assert isinstance(v, base.Verdict)
  assert v.malformed == (v.plan is None)
  assert not (v.correct and v.malformed)
  read = strip_specials(t if isinstance(t, str) else None for t in response)
  assert v.trace_len == (read.index("plan") if "plan" in read else len(read))
  assert isinstance(task.check(response, response), base.Verdict)  # a garbage prompt too


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(_D)), max_size=12))
def test_checker_agrees_with_the_oracle_on_random_walks(moves):
  spec = parse_level(["######",
                      "#.$@ #",
                      "#  $.#",
                      "######"])  # solved by left, down, right
  task = SokobanTask()
  cells = [spec.worker]
  for mv in moves:
    x, y = cells[-1]
    cells.append((x + _D[mv][0], y + _D[mv][1]))
  v = task.check(task.solve_tokens(spec).prompt, _plan_tokens(cells) + ["eos"])
  assert v.correct == _Sim(spec).replay(cells)
  off_grid = any(x < 0 or y < 0 for x, y in cells)  # "-1" is no coordinate token
  assert v.malformed == off_grid and v.plan_len == (None if off_grid else len(moves))
