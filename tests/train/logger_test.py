"""metrics.jsonl under faults: a line cut short by a crash, rows past a resumed checkpoint."""

import json
import os

from dualformer_jax.train.logger import MetricLogger, plot_loss, read_metrics


def write_rows(workdir, rows, tail=""):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_a_truncated_last_line_is_skipped_by_readers_and_the_plot(tmp_path):
  w = str(tmp_path)
  write_rows(w, [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.5}], tail='{"step": 6, "lo')
  assert [r["step"] for r in read_metrics(w)] == [2, 4]
  assert os.path.exists(plot_loss(w))


def test_a_resumed_logger_drops_rows_past_its_checkpoint(tmp_path):
  """kill -9 after step 6, checkpoint 4: steps 5 and 6 are trained again, so their old rows go."""
  w = str(tmp_path)
  rows = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6)] + [{"step": 4, "eval_loss": 0.3}]
  write_rows(w, rows, tail="\x00\x00{garbage")
  logger = MetricLogger(w, resume_step=4)
  logger.write(6, {"loss": 0.1})
  logger.close()
  assert [(r["step"], sorted(r)) for r in read_metrics(w)] == [
      (2, ["loss", "step"]), (4, ["loss", "step"]), (4, ["eval_loss", "step"]),
      (6, ["loss", "step"])]
  assert len(open(os.path.join(w, "metrics.jsonl")).read().splitlines()) == 4
