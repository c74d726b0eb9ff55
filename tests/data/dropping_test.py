"""Structured trace dropping: exact levels on hand-written maze and Sokoban traces."""

import numpy as np
import pytest

from dualformer_jax.data import dropping
from dualformer_jax.data.vocab import Vocab

COSTS = [f"c{i}" for i in range(12)]
VOCAB = Vocab(["create", "close", "plan", "start", "goal", "wall", "worker", "box", "dock",
               *[str(i) for i in range(7)], *COSTS])
GRAMMAR = dropping.TraceGrammar.from_vocab(VOCAB)

MAZE = ("create 0 0 c0 c3 close 0 0 c0 c3 create 1 0 c1 c2 create 0 1 c1 c4 "
        "close 1 0 c1 c2 create 2 0 c2 c1 close 2 0 c2 c1 create 3 0 c3 c0")
MAZE_LEVELS = {
    0: MAZE,
    1: "create 0 0 c0 c3 create 1 0 c1 c2 create 0 1 c1 c4 create 2 0 c2 c1 create 3 0 c3 c0",
    2: "create 0 0 create 1 0 create 0 1 create 2 0 create 3 0",
    4: "",
}
# Clauses with 2, 1 and 0 `box x y` groups: clause length varies inside one trace.
SOKOBAN = ("create worker 2 3 box 3 3 box 4 2 c0 c5 close worker 2 3 box 3 3 box 4 2 c0 c5 "
           "create worker 3 3 box 4 3 box 4 2 c1 c4 create worker 1 3 box 3 3 box 4 2 c1 c5 "
           "close worker 3 3 box 4 3 box 4 2 c1 c4 create worker 4 3 box 4 2 c2 c2 "
           "close worker 4 3 box 4 2 c2 c2 create worker 5 3 c3 c0")
SOKOBAN_LEVELS = {
    0: SOKOBAN,
    1: ("create worker 2 3 box 3 3 box 4 2 c0 c5 create worker 3 3 box 4 3 box 4 2 c1 c4 "
        "create worker 1 3 box 3 3 box 4 2 c1 c5 create worker 4 3 box 4 2 c2 c2 "
        "create worker 5 3 c3 c0"),
    2: ("create worker 2 3 box 3 3 box 4 2 create worker 3 3 box 4 3 box 4 2 "
        "create worker 1 3 box 3 3 box 4 2 create worker 4 3 box 4 2 create worker 5 3"),
    4: "",
}


def enc(text: str) -> np.ndarray:
  return VOCAB.encode(text.split())


def dec(ids: np.ndarray) -> str:
  return " ".join(VOCAB.decode(ids))


def level2_clauses(text: str) -> list[str]:
  return ["create " + c.strip() for c in text.split("create") if c.strip()]


@pytest.mark.parametrize("trace,expected", [(MAZE, MAZE_LEVELS), (SOKOBAN, SOKOBAN_LEVELS)],
                         ids=["maze", "sokoban"])
@pytest.mark.parametrize("level", [0, 1, 2, 4])
def test_deterministic_levels_exact(trace, expected, level):
  out = dropping.drop_trace(enc(trace), level, GRAMMAR, np.random.default_rng(0))
  assert dec(out) == expected[level]


@pytest.mark.parametrize("trace,expected", [(MAZE, MAZE_LEVELS), (SOKOBAN, SOKOBAN_LEVELS)],
                         ids=["maze", "sokoban"])
def test_level3_drops_whole_create_clauses_with_the_rng(trace, expected):
  clauses = level2_clauses(expected[2])
  for seed in range(20):
    out = dec(dropping.drop_trace(enc(trace), 3, GRAMMAR, np.random.default_rng(seed), 0.5))
    # The implementation draws one uniform per create clause, in order.
    dropped = np.random.default_rng(seed).random(len(clauses)) < 0.5
    assert out == " ".join(c for c, d in zip(clauses, dropped) if not d)
  assert dec(dropping.drop_trace(enc(trace), 3, GRAMMAR, np.random.default_rng(0), 0.0)) == \
      expected[2]
  assert dec(dropping.drop_trace(enc(trace), 3, GRAMMAR, np.random.default_rng(0), 1.0)) == ""


def test_level3_create_drop_rate():
  # 400 create clauses per trace, 50 draws: 20,000 Bernoulli(0.3) drops.
  trace = enc(" ".join(f"create {i % 7} {i % 5} c1 c2 close {i % 7} {i % 5} c1 c2"
                       for i in range(400)))
  rng = np.random.default_rng(123)
  kept = [dropping.drop_trace(trace, 3, GRAMMAR, rng, 0.3).size // 3 for _ in range(50)]
  rate = 1 - np.sum(kept) / (400 * 50)
  sigma = np.sqrt(0.3 * 0.7 / 20_000)
  assert abs(rate - 0.3) < 4 * sigma, rate


def test_level0_is_identity_and_input_is_never_modified():
  trace = enc(MAZE)
  copy = trace.copy()
  for level in range(5):
    dropping.drop_trace(trace, level, GRAMMAR, np.random.default_rng(level))
  np.testing.assert_array_equal(trace, copy)
  assert dropping.drop_trace(trace, 0, GRAMMAR) is trace
  assert dropping.drop_trace(enc(""), 3, GRAMMAR, np.random.default_rng(0)).size == 0


def test_clause_bounds():
  starts, ends = dropping.clause_bounds(enc(SOKOBAN), GRAMMAR)
  np.testing.assert_array_equal(ends - starts, [12, 12, 12, 12, 12, 9, 9, 6])
  np.testing.assert_array_equal(starts[1:], ends[:-1])


@pytest.mark.parametrize("bad,match", [
    ("0 0 create 1 0 c1 c2", "must start with a create/close keyword"),
    ("create c1 create 1 0 c1 c2", "needs a keyword and 2 cost tokens"),
    ("create 1 0 c1 2 create 1 0 c1 c2", "does not end with two cost tokens"),
])
def test_malformed_traces_fail_loudly(bad, match):
  with pytest.raises(dropping.TraceFormatError, match=match):
    dropping.drop_trace(enc(bad), 1, GRAMMAR)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="drop level 5"):
    dropping.drop_trace(enc(MAZE), 5, GRAMMAR)
  with pytest.raises(ValueError, match="pass an np.random.Generator"):
    dropping.drop_trace(enc(MAZE), 3, GRAMMAR)
  with pytest.raises(ValueError, match="create_drop_rate=1.5"):
    dropping.drop_trace(enc(MAZE), 3, GRAMMAR, np.random.default_rng(0), 1.5)
  with pytest.raises(ValueError, match="trace_mode='fast'"):
    dropping.draw_level(np.random.default_rng(0), "fast", (1, 0, 0, 0, 0), 0)
  with pytest.raises(ValueError, match="level_probs"):
    dropping.draw_level(np.random.default_rng(0), "dualformer", (0.5, 0.5, 0.5, 0, 0), 0)
  with pytest.raises(ValueError, match="fixed_level=7"):
    dropping.draw_level(np.random.default_rng(0), "fixed_level", (1, 0, 0, 0, 0), 7)


def test_draw_level_modes():
  rng = np.random.default_rng(0)
  probs = (0.45, 1 / 6, 1 / 6, 1 / 6, 0.05)
  assert {dropping.draw_level(rng, "complete", probs, 3) for _ in range(50)} == {0}
  assert {dropping.draw_level(rng, "solution_only", probs, 3) for _ in range(50)} == {4}
  assert {dropping.draw_level(rng, "fixed_level", probs, 3) for _ in range(50)} == {3}
  # Levels with probability 0 are never drawn, at either end or in the middle.
  assert {dropping.draw_level(rng, "dualformer", (0, 0.5, 0, 0.5, 0), 0)
          for _ in range(500)} == {1, 3}


def test_draw_level_frequencies_chi_square():
  probs = np.array([0.45, 1 / 6, 1 / 6, 1 / 6, 0.05])
  rng = np.random.default_rng(2024)
  n = 20_000
  counts = np.bincount([dropping.draw_level(rng, "dualformer", probs, 0) for _ in range(n)],
                       minlength=5)
  chi2 = np.sum((counts - n * probs) ** 2 / (n * probs))
  assert chi2 < 18.47, (chi2, counts)  # chi-square(4 dof) at p = 0.001; fixed seed


def test_grammar_from_vocab():
  assert GRAMMAR.create_id == VOCAB.id("create") and GRAMMAR.close_id == VOCAB.id("close")
  assert [VOCAB.tokens[i] for i in np.flatnonzero(GRAMMAR.is_cost)] == COSTS
