"""Run metrics: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; other processes get a logger that drops everything.
"""

from __future__ import annotations

import json
import math
import os

import jax


class MetricLogger:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # no TensorFlow needed
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
    if not self.active:
      return
    row = {"step": int(step)}
    for k, v in metrics.items():
      v = float(v)
      row[prefix + k] = v if math.isfinite(v) else str(v)
      self._tb.add_scalar(prefix + k, v, step)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss(workdir: str, out_name: str = "loss.png") -> str | None:
  """Training and eval loss curves from metrics.jsonl; returns the PNG path."""
  rows = read_metrics(workdir)
  train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), float)]
  evals = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), float)]
  if not train:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
  ax.plot(*zip(*train), label="train")
  if evals:
    ax.plot(*zip(*evals), "o-", label="eval (test split)")
  ax.set_xlabel("step")
  ax.set_ylabel("token cross-entropy")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, out_name)
  fig.savefig(path)
  plt.close(fig)
  return path
