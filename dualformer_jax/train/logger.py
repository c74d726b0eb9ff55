"""Run metrics: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; other processes get a logger that drops everything.
A resumed run first drops the rows past its checkpoint (steps that will be
trained again) and a last line cut short by a crash; readers skip bad lines.
"""

from __future__ import annotations

import json
import math
import os

import jax

from dualformer_jax import io_utils


class MetricLogger:

  def __init__(self, workdir: str, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      _keep_rows_up_to(self.path, resume_step)
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


def _parse_rows(path: str) -> list[dict]:
  """The well-formed rows of a metrics file (a line cut by a crash or full disk is skipped)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), int):
        rows.append(row)
  return rows


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites the file (atomically) without rows past `step` or bad lines, when it has any:
  after kill -9 and a resume, steps past the checkpoint would otherwise appear twice."""
  if not os.path.exists(path):
    return
  with open(path, errors="replace") as f:
    text = f.read()
  rows = _parse_rows(path)
  kept = [r for r in rows if r["step"] <= step]
  clean = len(kept) == len(rows) == len(text.splitlines()) and text.endswith("\n")
  if clean:
    return
  io_utils.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(workdir: str) -> list[dict]:
  """Every well-formed row of `<workdir>/metrics.jsonl`, in file order."""
  return _parse_rows(os.path.join(workdir, "metrics.jsonl"))


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
