"""lm/math_eval.py: Pass@k, step counting, modes and the table."""

import math

import numpy as np
import pytest

from dualformer_jax.lm import math_eval as ev


def test_pass_at_k_is_the_unbiased_estimate():
  assert ev.pass_at_k(5, 0, 1) == 0.0 and ev.pass_at_k(5, 5, 3) == 1.0
  assert ev.pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 = c / n
  assert ev.pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
  assert ev.pass_at_k(20, 1, 20) == 1.0 and ev.pass_at_k(20, 0, 20) == 0.0
  # The estimate equals the chance that k of the n draws (without replacement) hit one.
  rng = np.random.default_rng(0)
  draws = [rng.permutation(10)[:4] for _ in range(20_000)]
  hit = np.mean([(d < 3).any() for d in draws])  # c = 3 correct of n = 10
  assert ev.pass_at_k(10, 3, 4) == pytest.approx(hit, abs=0.01)
  for n, c, k in ((5, 1, 6), (5, 6, 1), (5, 1, 0)):
    with pytest.raises(ValueError, match="pass@k"):
      ev.pass_at_k(n, c, k)


def test_count_marks_counts_non_overlapping_runs():
  mark = np.asarray([7, 8])
  assert ev.count_marks(np.asarray([7, 8, 1, 7, 8, 7]), mark) == 2
  assert ev.count_marks(np.asarray([7, 7, 8, 8]), mark) == 1
  assert ev.count_marks(np.asarray([1, 2]), mark) == 0
  assert ev.count_marks(np.asarray([5, 5, 5, 5, 5]), np.asarray([5, 5])) == 2


def test_table_has_one_row_per_run_and_mode():
  res = {"greedy_at_1": 0.5, "pass_at_1": 0.25, "pass_at_4": 0.75, "mean_tokens": 12.0,
         "mean_steps": 2.5}
  text = ev.table({"p=0": {"slow": res, "fast": res}, "p=0.2": {"slow": res}}, (4, 1))
  lines = text.splitlines()
  assert lines[0] == "| run | mode | Greedy@1 | Pass@1 | Pass@4 | tokens | steps |"
  assert len(lines) == 5 and lines[-1] == "| p=0.2 | slow | 50.0 | 25.0 | 75.0 | 12.0 | 2.50 |"
