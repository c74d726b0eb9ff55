"""The paired bootstrap interval and the per-seed spread, on synthetic scores of known answer."""

import numpy as np
import pytest

from dualformer_jax.experiments import intervals


def test_a_clear_gain_gives_an_interval_that_excludes_zero():
  rng = np.random.default_rng(1)
  b = rng.random((3, 200)) < 0.5  # [seeds, tasks]
  a = b | (rng.random((3, 200)) < 0.4)  # a solves every task b solves, and about 20% more
  out = intervals.paired_difference(a, b)
  assert out["diff"] == pytest.approx(a.mean() - b.mean())
  assert 0 < out["low"] < out["diff"] < out["high"] and out["excludes_zero"]
  assert (out["seeds"], out["tasks"]) == (3, 200)


def test_equal_models_give_an_interval_that_includes_zero():
  rng = np.random.default_rng(2)
  a, b = rng.random((3, 200)) < 0.6, rng.random((3, 200)) < 0.6  # one distribution
  out = intervals.paired_difference(a, b)
  assert out["low"] < 0 < out["high"] and not out["excludes_zero"]


def test_pairing_narrows_the_interval_of_a_shared_task_difficulty():
  rng = np.random.default_rng(3)
  hard = rng.random(200)  # per task: both models fail the hard ones
  b = np.tile(hard, (3, 1))  # [seeds, tasks]
  a = b + 0.02
  out = intervals.paired_difference(a, b)
  assert out["low"] == pytest.approx(0.02) and out["high"] == pytest.approx(0.02)
  assert out["excludes_zero"]


def test_the_interval_is_reproducible_and_a_wider_level_is_wider():
  rng = np.random.default_rng(4)
  a, b = rng.random((2, 50)), rng.random((2, 50))
  assert intervals.paired_difference(a, b) == intervals.paired_difference(a, b)
  narrow = intervals.paired_difference(a, b, level=0.5)
  wide = intervals.paired_difference(a, b, level=0.99)
  assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


@pytest.mark.parametrize("a,b,message", [
    (np.zeros((2, 3)), np.zeros((2, 4)), r"\(2, 3\) and \(2, 4\)"),
    (np.zeros(3), np.zeros(3), "seeds, tasks"),
    (np.zeros((0, 3)), np.zeros((0, 3)), "non-empty"),
])
def test_mismatched_scores_are_refused(a, b, message):
  with pytest.raises(ValueError, match=message):
    intervals.paired_difference(a, b)


def test_spread_over_seeds():
  assert intervals.spread([0.5, 0.7, None, 0.9]) == pytest.approx(
      {"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9, "n": 3})
  assert intervals.spread([0.4])["std"] == 0.0
  assert intervals.spread([None])["mean"] is None
