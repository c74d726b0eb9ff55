"""A 95% interval for a difference of two models' scores, paired over test tasks and seeds.

Both models are scored on the same test tasks, and seed k of one is set beside seed k of
the other, so the difference is taken per (seed, task) and the bootstrap resamples seeds
and tasks (two-level, with replacement; the same draw for both models). Pure numpy with a
fixed generator seed: the same scores give the same interval.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 4000


def paired_difference(a, b, *, level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
  """Mean of a - b and its percentile bootstrap interval.

  a, b: [seeds, tasks] per-task scores (e.g. 1 if any of n responses was optimal).
  Returns {"diff", "low", "high", "excludes_zero", "seeds", "tasks"}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape != b.shape or 0 in a.shape:
    raise ValueError(f"need two [seeds, tasks] arrays of one non-empty shape, got "
                     f"{a.shape} and {b.shape}")
  if not 0 < level < 1 or resamples < 1:
    raise ValueError(f"level={level} must be in (0, 1) and resamples={resamples} >= 1")
  d = a - b  # [S, T]
  s, t = d.shape
  rng = np.random.default_rng(seed)
  # Resampling with replacement = multinomial counts per seed / task. [R, S], [R, T]
  w_seed = rng.multinomial(s, np.full(s, 1 / s), size=resamples) / s
  w_task = rng.multinomial(t, np.full(t, 1 / t), size=resamples) / t
  means = np.einsum("rs,st,rt->r", w_seed, d, w_task)  # [R]
  low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return {"diff": float(d.mean()), "low": float(low), "high": float(high),
          "excludes_zero": bool(low > 0 or high < 0), "seeds": s, "tasks": t}


def spread(values) -> dict:
  """Mean, sample standard deviation (0 for one value), min and max of per-seed values."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  if not x.size:
    return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
  return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
          "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}
