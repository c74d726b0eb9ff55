"""Baselines tuned alike: one learning-rate x steps grid for every model, chosen on valid.

  python -m dualformer_jax.experiments.tune --config=configs/maze.py:tune --workdir=DIR
  python -m dualformer_jax.experiments.sweep --config=configs/maze.py:sweep \
      --config.sweep.tuned=DIR/tune.json --workdir=...

Each model of tune.models trains once per (tune.learning_rates x tune.num_steps) on the
first tune.num_train train tasks (0: all), and is scored at its last step by the sampled
validation 1-Optimal of select.py (sweep.select_tasks valid tasks x sweep.select_samples
responses per mode), averaged over the model's modes; the chosen setting per model is the
highest (ties: higher mean SWC, then fewer steps). The test split is never read.

Workdir layout:
  data/                             the dataset, generated once
  <model>/lr<lr>_steps<steps>/      one run per setting (compare.py's layout, data -> ../data)
                                    with its validation samples in eval/<steps>/valid/
  tune.json, tune.md                every run's validation metrics, and the chosen settings
Each run or evaluation that exists is skipped, so an interrupted tuning resumes.
With tune.record_dir, each finished run's row (its validation metrics and the config it
ran with) is also kept there as <model>/<run>.json, small enough for git, with tune.json
and tune.md: a tuning on another machine takes the rows it finds and trains only the
rest (kept_results.py), and a sweep reads the choices from there (sweep.tuned).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from dualformer_jax import config as config_lib
from dualformer_jax import io_utils
from dualformer_jax.data import generate
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.experiments import compare, kept_results, report, select
from dualformer_jax.train import trainer

TUNE = "tune.json"
RULE = ("sampled validation 1-Optimal at the last step, mean over the model's modes "
        "(ties: mean SWC, then fewer steps)")


def models_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(m.strip() for m in config.tune.models.split(",") if m.strip())


def check_config(config: ml_collections.ConfigDict) -> DataConfig:
  """ValueError naming the first bad tune.* field (and of each model's runs), before any
  work; returns the checked DataConfig."""
  data = config_lib.validate(config).data
  t = config.tune

  def fail(field: str, why: str):
    raise ValueError(f"config.tune.{field}={t[field]!r}: {why}")

  models = models_of(config)
  if not models or any(m not in compare.MODELS for m in models) or len(set(models)) < len(models):
    fail("models", f"expected a comma-separated subset of {','.join(compare.MODELS)}")
  if not t.learning_rates or not all(isinstance(x, (int, float)) and x > 0
                                     for x in t.learning_rates):
    fail("learning_rates", "give peak learning rates > 0, e.g. '(1e-3,3e-3)'")
  if not t.num_steps or not all(isinstance(x, int) and x >= 1 for x in t.num_steps):
    fail("num_steps", "give step counts >= 1, e.g. '(3000,5000)'")
  if not 0 <= t.num_train <= config.data.num_train:
    fail("num_train", f"must be in [0, data.num_train={config.data.num_train}] (0: all)")
  if not 1 <= config.sweep.select_tasks <= config.data.num_valid:
    raise ValueError(f"config.sweep.select_tasks={config.sweep.select_tasks}: tuning scores "
                     f"valid tasks; need 1 <= select_tasks <= data.num_valid="
                     f"{config.data.num_valid}")
  select.check_config(config, 1)  # select_samples
  for name in models:
    trainer.preflight(config_lib.validate(
        model_config(config, name, max(t.learning_rates), max(t.num_steps))))
    for lr in t.learning_rates:  # a record of another config is refused before any work
      for steps in t.num_steps:
        kept_results.load(record_path(config, name, lr, steps),
                          model_config(config, name, lr, steps), "tuning record")
  return data


def model_config(config: ml_collections.ConfigDict, name: str, lr: float,
                 steps: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.train_tasks = config.tune.num_train
  c.train.learning_rate, c.train.num_steps = float(lr), int(steps)
  return compare.model_config(c, name)


def run_name(lr: float, steps: int) -> str:
  return f"lr{lr:g}_steps{steps}"


def record_path(config: ml_collections.ConfigDict, name: str, lr: float, steps: int) -> str:
  """Where tune.record_dir keeps the row of one grid run ("" without a record_dir)."""
  if not config.tune.record_dir:
    return ""
  return os.path.join(config.tune.record_dir, name, run_name(lr, steps) + ".json")


def tune_model(config: ml_collections.ConfigDict, workdir: str, name: str) -> dict:
  """Every grid run of model `name`; returns {"runs": [...], "chosen": {...}}."""
  modes = compare.MODELS[name][1]
  model_dir = compare.run_dir(workdir, name)
  runs = []
  for lr in config.tune.learning_rates:
    for steps in config.tune.num_steps:
      run_config = model_config(config, name, lr, steps)
      record = record_path(config, name, lr, steps)
      row = kept_results.load(record, run_config, "tuning record")
      if row is None:
        row = tune_run(config_lib.validate(run_config), model_dir, name, lr, steps, modes)
        if record:
          kept_results.save(record, row, run_config)
      else:
        print(f"[tune {name}] lr {lr:g}, {steps} steps: recorded in {record}", flush=True)
      runs.append(row)
  return {"runs": runs, "chosen": choose(runs)}


def tune_run(run: config_lib.RunConfig, model_dir: str, name: str, lr: float, steps: int,
             modes: tuple[str, ...]) -> dict:
  """Trains one grid setting (or finishes it) and scores its last step on valid."""
  path = compare.run_dir(model_dir, run_name(lr, steps))
  print(f"[tune {name}] lr {lr:g}, {steps} steps", flush=True)
  compare.ensure_trained(run, path, name)
  valid = compare.evaluate_at(select.valid_config(run), path, name, steps, modes)[0]
  return {"learning_rate": float(lr), "num_steps": int(steps), "valid": valid,
          "score": float(np.mean([valid[m]["1_optimal"] for m in modes])),
          "swc": float(np.mean([valid[m]["swc"] for m in modes])),
          "wall_s": compare.wall_times(path), "machine": kept_results.machine()}


def choose(runs: list[dict]) -> dict:
  """The run of highest mean validation 1-Optimal (ties: mean SWC, then fewer steps, then
  the first in grid order)."""
  best = max(runs, key=lambda r: (r["score"], r["swc"], -r["num_steps"]))
  return {k: best[k] for k in ("learning_rate", "num_steps", "score", "swc")}


def markdown(out: dict) -> str:
  lines = ["| model | learning rate | steps | valid 1-Optimal per mode | mean | mean SWC "
           "| train s | chosen |", "|---|---|---|---|---|---|---|---|"]
  for name, res in out["models"].items():
    for r in res["runs"]:
      modes = ", ".join(f"{m} {100 * v['1_optimal']:.1f}%" for m, v in r["valid"].items())
      chosen = all(r[k] == res["chosen"][k] for k in ("learning_rate", "num_steps"))
      train = r["wall_s"].get("train_s")
      lines.append(f"| {report.label(name)} | {r['learning_rate']:g} | {r['num_steps']:,} "
                   f"| {modes} | {100 * r['score']:.1f}% | {r['swc']:.3f} "
                   f"| {'-' if train is None else f'{train:.0f}'} | {'yes' if chosen else ''} |")
  return "\n".join(lines) + (f"\n\nThe same grid for every model, on {out['num_train']} train "
                             f"tasks; chosen by {out['rule']}; the test split is never read.\n")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The tuning: data, every model's grid, tune.json and tune.md (rewritten after each model)."""
  data = check_config(config)
  os.makedirs(workdir, exist_ok=True)
  generate.generate(data, workdir)
  out = {"task": config.task.name, "rule": RULE,
         "num_train": config.tune.num_train or config.data.num_train,
         "grid": {"learning_rates": list(config.tune.learning_rates),
                  "num_steps": list(config.tune.num_steps)},
         "valid_tasks": config.sweep.select_tasks, "valid_samples": config.sweep.select_samples,
         "models": {}, "chosen": {}, "config": config.to_dict()}
  for name in models_of(config):
    out["models"][name] = tune_model(config, workdir, name)
    out["chosen"][name] = out["models"][name]["chosen"]
    for where in {workdir, config.tune.record_dir} - {""}:  # the summary kept with the rows
      io_utils.write_json(os.path.join(where, TUNE), out, indent=1, default=list)
      io_utils.write_text(os.path.join(where, "tune.md"), markdown(out))
  return out


if __name__ == "__main__":
  compare.cli(run, "tune.md", "configs/maze.py:tune", "directory of the tuning runs")
