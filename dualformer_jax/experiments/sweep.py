"""The data-efficiency sweep: the comparison at several numbers of training tasks.

  python -m dualformer_jax.experiments.sweep --config=configs/maze.py:sweep --workdir=DIR

One dataset holds data.num_train train tasks and a valid and a test split; the
point with N tasks (each value of sweep.num_train) trains every model of
sweep.models on the first N train tasks (nested subsets, one test split) for the
same train.num_steps, so small sets are seen for many epochs. Each model is
scored at its checkpoint of lowest validation loss (compare.py), and at the point
bootstrap.num_train the Complete-Trace run is bootstrapped for bootstrap.rounds
rounds (bootstrap.py; models searchformer_r1, ...).

Workdir layout:
  data/                      the dataset, generated once
  <N>/                       one comparison per point, in compare.py's layout (data ->
                             ../data), with its summary.json, results.md and plots
  sweep.json                 every point's metrics, scored steps and wall times
  sweep.md, sweep.png        the table, and 1-Optimal / SWC against N per model and mode
Each stage whose output exists is skipped, so an interrupted sweep resumes with the
same command; raising bootstrap.rounds later runs only the new rounds.
"""

from __future__ import annotations

import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from dualformer_jax import config as config_lib
from dualformer_jax import io_utils
from dualformer_jax.data import generate
from dualformer_jax.experiments import bootstrap, compare, report
from dualformer_jax.train import trainer

SWEEP = "sweep.json"


def models_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(m.strip() for m in config.sweep.models.split(",") if m.strip())


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError naming the first bad sweep.* / bootstrap.* field, before any work."""
  config_lib.validate(config)
  values = tuple(config.sweep.num_train)

  def fail(field: str, why: str):
    raise ValueError(f"config.sweep.{field}={config.sweep[field]!r}: {why}")

  if not values:
    fail("num_train", "give the training-task counts, e.g. '(1000,3000,10000)'")
  if not all(isinstance(v, int) and v >= 1 for v in values):
    fail("num_train", "every value must be an int >= 1")
  if list(values) != sorted(set(values)):
    fail("num_train", "values must increase, without repeats")
  if values[-1] > config.data.num_train:
    fail("num_train", f"{values[-1]} exceeds data.num_train={config.data.num_train}, the train "
         "tasks generated; raise data.num_train")
  if config.data.num_valid < 1:
    raise ValueError("config.data.num_valid=0: the sweep scores each model at its checkpoint "
                     "of lowest validation loss; set data.num_valid > 0")
  models = models_of(config)
  if not models or any(m not in compare.MODELS for m in models) or len(set(models)) < len(models):
    fail("models", f"expected a comma-separated subset of {','.join(compare.MODELS)}")
  bootstrap.check_config(config, values, models)
  trainer.preflight(config)  # mesh, model, schedule


def point_config(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
  """`config` training on the first `n` train tasks."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.train_tasks = n
  return c


def run_point(config: ml_collections.ConfigDict, workdir: str, n: int, meta: dict) -> dict:
  """Every model (and bootstrap round) at the point with `n` tasks; returns its summary."""
  c = point_config(config, n)
  point = compare.run_dir(workdir, str(n))
  summary = compare.new_summary(c, meta)
  for name in models_of(config):
    print(f"[{n} tasks] {name}", flush=True)
    compare.add_model(summary, point, name, compare.run_model(c, point, name))
  if config.bootstrap.rounds and n == config.bootstrap.num_train:
    start = summary["selected_step"][bootstrap.SOURCE_MODEL]
    for name, scored in bootstrap.run(c, point, start):
      compare.add_model(summary, point, name, scored)
  compare.write_summary(point, summary)
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole sweep: data, every point, sweep.json and its report (rewritten after each
  point, so a sweep stopped part-way has the table and plot of the points it finished)."""
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  meta = generate.generate(config, workdir)
  out = {"task": config.task.name, "num_train": list(config.sweep.num_train), "points": {},
         "reference": compare.new_summary(config, meta)["reference"],
         "config": config.to_dict()}
  for n in config.sweep.num_train:
    s = run_point(config, workdir, n, meta)
    out["points"][str(n)] = {k: s[k] for k in ("models", "selected_step", "wall_s")}
    io_utils.write_json(os.path.join(workdir, SWEEP), out, indent=1, default=list)
    report.write_sweep_report(workdir, out)
  return out


def define_flags() -> None:
  """--config, --workdir. Called under __main__ only (main.py defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", None, "config file[:preset], e.g. configs/maze.py:sweep", lock_config=True)
  flags.DEFINE_string("workdir", None, "directory of the sweep")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  compare.command(argv, run, "sweep.md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
