"""Metrics on a hand-made set of verdicts, checked against hand-computed values."""

import pytest

from dualformer_jax.eval import metrics
from dualformer_jax.tasks.base import Verdict
from dualformer_jax.tasks.maze import MazeTask

P1 = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2))
P2 = ((0, 0), (1, 0), (2, 0), (2, 1), (2, 2))
P3 = ((0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1), (2, 2))
P5 = ((5, 5), (5, 6), (5, 7), (5, 8), (5, 9), (6, 9))


def v(correct, plan_len, trace_len, plan, malformed=False):
  """A verdict whose trace has trace_len // 2 clauses (any count would do)."""
  return Verdict(correct=correct, plan_len=plan_len, trace_len=trace_len, plan=plan,
                 malformed=malformed, trace_clauses=trace_len // 2)


def hand_made():
  """Three tasks x 4 responses; comments give what each response is."""
  task_a = [v(True, 4, 10, P1),  # optimal
            v(True, 4, 0, P2),  # optimal, another plan, fast
            v(True, 6, 20, P3),  # correct, suboptimal
            v(False, 5, 8, ((0, 0), (9, 9)))]  # illegal
  task_b = [v(False, None, 3, None, malformed=True),  # garbage
            v(True, 5, 0, P5),  # optimal
            v(True, 5, 0, P5),  # duplicate plan
            v(True, 5, 12, P5)]  # duplicate plan, slow
  task_c = [v(False, 2, 0, ((1, 1), (1, 2), (1, 3))) for _ in range(4)]  # all illegal
  return [4, 5, 6], [task_a, task_b, task_c]


def test_hand_computed_values():
  c_star, verdicts = hand_made()
  m = metrics.compute_metrics(c_star, verdicts, auto=True)
  assert set(m) == set(metrics.METRIC_KEYS)
  assert m["1_solved"] == pytest.approx(2 / 3)
  assert m["1_optimal"] == pytest.approx(2 / 3)
  assert m["3_solved"] == pytest.approx(2 / 3)
  assert m["3_optimal"] == pytest.approx(1 / 3)
  # A: (1 + 1 + 4/6 + 0) / 4, B: 3/4, C: 0.
  assert m["swc"] == pytest.approx(((2 + 4 / 6) / 4 + 3 / 4 + 0) / 3)
  assert m["diversity"] == pytest.approx((3 + 1 + 0) / 3)
  assert m["mean_trace_len"] == pytest.approx((10 + 0 + 20 + 8 + 3 + 0 + 0 + 12) / 12)
  assert m["mean_trace_len_correct"] == pytest.approx((10 + 0 + 20 + 0 + 0 + 12) / 6)
  assert m["mean_trace_clauses"] == pytest.approx((5 + 0 + 10 + 4 + 1 + 0 + 0 + 6) / 12)
  assert m["mean_trace_clauses_correct"] == pytest.approx((5 + 0 + 10 + 0 + 0 + 6) / 6)
  assert m["slow_share"] == pytest.approx(5 / 12)  # trace_len > 0
  assert m["malformed_share"] == pytest.approx(1 / 12)
  assert (m["num_tasks"], m["num_samples"]) == (3, 4)


def test_per_task_counts_add_up_to_the_metrics():
  c_star, verdicts = hand_made()
  m, t = metrics.compute_metrics(c_star, verdicts), metrics.per_task(c_star, verdicts)
  assert t["optimal"] == [2, 3, 0] and t["solved"] == [3, 3, 0]
  assert sum(o >= 1 for o in t["optimal"]) / 3 == pytest.approx(m["1_optimal"])
  assert sum(o >= 3 for o in t["optimal"]) / 3 == pytest.approx(m["3_optimal"])
  assert sum(s >= 1 for s in t["solved"]) / 3 == pytest.approx(m["1_solved"])
  assert sum(t["swc"]) / 3 == pytest.approx(m["swc"])
  with pytest.raises(ValueError, match="2 optimal lengths for 3 tasks"):
    metrics.per_task(c_star[:2], verdicts)


def test_slow_share_only_for_auto():
  c_star, verdicts = hand_made()
  assert metrics.compute_metrics(c_star, verdicts)["slow_share"] is None
  verdicts[2][0] = v(False, 2, 4, ((1, 1), (1, 2), (1, 3)))  # one more response with a trace
  assert metrics.compute_metrics(c_star, verdicts, auto=True)["slow_share"] == (
      pytest.approx(6 / 12))


def test_no_correct_response_gives_none_mean():
  m = metrics.compute_metrics([3], [[v(False, None, 7, None, malformed=True)] * 2])
  assert m["mean_trace_len_correct"] is None
  assert m["mean_trace_len"] == 7
  assert m["swc"] == 0 and m["diversity"] == 0 and m["malformed_share"] == 1


def test_rejects_inconsistent_input():
  with pytest.raises(ValueError, match="same number"):
    metrics.compute_metrics([1, 2], [[v(True, 1, 0, P1)], []])
  with pytest.raises(ValueError, match="no tasks"):
    metrics.compute_metrics([], [])
  with pytest.raises(ValueError, match="optimal lengths"):
    metrics.compute_metrics([1], [[v(True, 1, 0, P1)], [v(True, 1, 0, P1)]])


def test_chose_slow_is_a_trace_before_the_plan():
  """The one rule, read off the checker's verdict of the response."""
  task = MazeTask(3)
  prompt = ["start", "0", "0", "goal", "0", "1"]
  plan = ["plan", "0", "0", "plan", "0", "1"]
  assert metrics.chose_slow(task.check(prompt, ["bos", "create", "0", "0", "c0", "c1"] + plan))
  assert not metrics.chose_slow(task.check(prompt, ["bos"] + plan + ["eos"]))
  assert not metrics.chose_slow(task.check(prompt, ["pad", "bos", "eos", "create"]))


def test_markdown_table():
  c_star, verdicts = hand_made()
  table = metrics.markdown_table({
      "fast": metrics.compute_metrics(c_star, verdicts),
      "auto": metrics.compute_metrics(c_star, verdicts, auto=True)})
  lines = table.strip().split("\n")
  assert len(lines) == 4
  assert lines[0].startswith("| mode | 1-Solved | 1-Optimal")
  assert lines[2].startswith("| fast | 66.7% | 66.7% | 66.7% | 33.3% |")
  assert "41.7%" in lines[3] and "41.7%" not in lines[2]  # slow share, auto only
  assert lines[2].split(" | ")[11] == "-"  # slow share
  assert lines[2].split(" | ")[7:9] == ["4.4", "2.2"]  # trace tokens 53/12, clauses 26/12
  assert all(line.count("|") == lines[0].count("|") for line in lines)
  assert lines[2].split(" | ")[5] == "0.472"  # SWC, 17/36
