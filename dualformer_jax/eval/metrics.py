"""Evaluation metrics over checked responses (PAPER.md, "Evaluation").

Pure functions: the evaluator samples n responses per task, judges each with
the task's checker (a `Verdict`), and hands the verdicts here together with
each task's optimal plan length c* (in the same unit as `Verdict.plan_len`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from dualformer_jax.tasks.base import Verdict

METRIC_KEYS = ("1_solved", "1_optimal", "3_solved", "3_optimal", "swc", "diversity",
               "mean_trace_len", "mean_trace_len_correct", "mean_trace_clauses",
               "mean_trace_clauses_correct", "slow_share", "malformed_share",
               "num_tasks", "num_samples")



def chose_slow(v: Verdict) -> bool:
  """Whether a response chose the slow mode: it says anything before its plan (a trace)."""
  return v.trace_len > 0


def is_optimal(v: Verdict, optimal_len: int) -> bool:
  return bool(v.correct) and v.plan_len == optimal_len


def success_weighted_cost(v: Verdict, optimal_len: int) -> float:
  """1[correct] * c* / max(c, c*) for one response."""
  if not v.correct or v.plan_len is None:
    return 0.0
  denom = max(v.plan_len, optimal_len)
  return 1.0 if denom == 0 else optimal_len / denom


def _mean(xs: Sequence[float]) -> float | None:
  return sum(xs) / len(xs) if xs else None


def compute_metrics(optimal_lens: Sequence[int],
                    verdicts: Sequence[Sequence[Verdict]],
                    *,
                    auto: bool = False) -> dict:
  """Aggregates one mode's responses: n verdicts per task, c* per task.

  `slow_share` (the share of responses that `chose_slow`) is reported only
  when `auto`, the one mode where the model picks. Means over an empty set are None.
  Raises ValueError on no tasks or on tasks with different response counts.
  """
  if len(optimal_lens) != len(verdicts):
    raise ValueError(f"{len(optimal_lens)} optimal lengths for {len(verdicts)} tasks")
  if not verdicts:
    raise ValueError("no tasks to aggregate")
  counts = {len(vs) for vs in verdicts}
  if len(counts) != 1 or 0 in counts:
    raise ValueError(f"every task needs the same number (>= 1) of responses, got {sorted(counts)}")
  n = counts.pop()

  solved_counts, optimal_counts, swc, diversity = [], [], [], []
  trace_all, trace_correct, slow_flags, malformed = [], [], [], []
  clauses_all, clauses_correct = [], []
  for c_star, vs in zip(optimal_lens, verdicts):
    solved_counts.append(sum(bool(v.correct) for v in vs))
    optimal_counts.append(sum(is_optimal(v, c_star) for v in vs))
    swc.append(sum(success_weighted_cost(v, c_star) for v in vs) / n)
    diversity.append(len({v.plan for v in vs if v.correct}))
    trace_all.extend(v.trace_len for v in vs)
    trace_correct.extend(v.trace_len for v in vs if v.correct)
    clauses_all.extend(v.trace_clauses for v in vs)
    clauses_correct.extend(v.trace_clauses for v in vs if v.correct)
    slow_flags.extend(chose_slow(v) for v in vs)
    malformed.extend(bool(v.malformed) for v in vs)

  num_tasks = len(verdicts)

  def share_at_least(counts: list[int], k: int) -> float:
    return sum(c >= k for c in counts) / num_tasks

  return {
      "1_solved": share_at_least(solved_counts, 1),
      "1_optimal": share_at_least(optimal_counts, 1),
      "3_solved": share_at_least(solved_counts, 3),
      "3_optimal": share_at_least(optimal_counts, 3),
      "swc": sum(swc) / num_tasks,
      "diversity": sum(diversity) / num_tasks,
      "mean_trace_len": _mean(trace_all),
      "mean_trace_len_correct": _mean(trace_correct),
      "mean_trace_clauses": _mean(clauses_all),
      "mean_trace_clauses_correct": _mean(clauses_correct),
      "slow_share": _mean(slow_flags) if auto else None,
      "malformed_share": _mean(malformed),
      "num_tasks": num_tasks,
      "num_samples": n,
  }


def per_task(optimal_lens: Sequence[int], verdicts: Sequence[Sequence[Verdict]]) -> dict:
  """Each task's optimal and correct response counts and mean SWC (lists in task order): what
  an interval paired over tasks resamples (experiments/intervals.py)."""
  if len(optimal_lens) != len(verdicts):
    raise ValueError(f"{len(optimal_lens)} optimal lengths for {len(verdicts)} tasks")
  return {
      "optimal": [sum(is_optimal(v, c) for v in vs) for c, vs in zip(optimal_lens, verdicts)],
      "solved": [sum(bool(v.correct) for v in vs) for vs in verdicts],
      "swc": [sum(success_weighted_cost(v, c) for v in vs) / max(len(vs), 1)
              for c, vs in zip(optimal_lens, verdicts)],
  }


# (header, key, format) per column of the table.
_COLUMNS = (
    ("1-Solved", "1_solved", "pct"),
    ("1-Optimal", "1_optimal", "pct"),
    ("3-Solved", "3_solved", "pct"),
    ("3-Optimal", "3_optimal", "pct"),
    ("SWC", "swc", "float3"),
    ("diversity", "diversity", "float2"),
    ("trace tokens", "mean_trace_len", "float1"),
    ("trace clauses", "mean_trace_clauses", "float1"),
    ("trace tokens (correct)", "mean_trace_len_correct", "float1"),
    ("trace clauses (correct)", "mean_trace_clauses_correct", "float1"),
    ("slow share", "slow_share", "pct"),
    ("malformed", "malformed_share", "pct"),
    ("tasks", "num_tasks", "int"),
    ("samples", "num_samples", "int"),
)


def _fmt(value, kind: str) -> str:
  if value is None:
    return "-"
  if kind == "pct":
    return f"{100.0 * value:.1f}%"
  if kind == "int":
    return str(int(value))
  return f"{value:.{kind[-1]}f}"


def markdown_table(results: Mapping[str, Mapping]) -> str:
  """One row per mode (in the mapping's order); k-Solved/Optimal-n as percentages."""
  head = ["mode"] + [h for h, _, _ in _COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
  for mode, m in results.items():
    cells = [mode] + [_fmt(m[key], kind) for _, key, kind in _COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
