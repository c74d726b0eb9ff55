"""Solution-Only vs Complete-Trace vs Dualformer: three trainings on one dataset, one table.

  python -m dualformer_jax.experiments.compare --config=configs/maze.py:compare --workdir=DIR \
      [--models=solution_only,complete_trace,dualformer] [--config.x.y=value ...]

The three models differ only in `data.trace_mode` (PAPER.md, "Baselines"): same
data, model, steps, batch and learning rate. Dualformer is evaluated in fast,
slow and auto mode, each baseline in the one mode it was trained for. With a
validation split (data.num_valid > 0) each model is scored at its checkpoint of
lowest validation loss (an over-fitting baseline is judged at its best), else at
its last step; `selected_step` in summary.json says which.

Workdir layout (each model's run directory is what `main.py` would write):
  data/                          the dataset, generated once
  <model>/data -> ../data        one run per model: checkpoints, metrics, eval/
  <model>/timing.json            wall seconds spent training and evaluating it (null: unknown,
                                 the file was found damaged)
  <model>/eval/<step>/settings.json  the eval settings its results.json was computed with
  <model>/eval/<step>/per_task.json  each test task's counts per mode (paired intervals)
  summary.json, results.md, optimal.png, reasoning_length.png, loss.png
Each stage whose output exists is skipped (an evaluation only when its recorded
settings, eval_settings, equal the current ones), so an interrupted sweep resumes with
the same command (a training stopped by SIGTERM/SIGINT resumes from its checkpoint).
It runs in one process; multi-host launches (launch/) train one model at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from dualformer_jax import config as config_lib
from dualformer_jax import io_utils, workdir_lock
from dualformer_jax.config import RunConfig
from dualformer_jax.data import generate, records
from dualformer_jax.eval import evaluate
from dualformer_jax.experiments import report
from dualformer_jax.train import trainer
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.errors import CheckpointError

# name -> (data.trace_mode, the modes it is evaluated in)
MODELS = {
    "solution_only": ("solution_only", ("fast",)),
    "complete_trace": ("complete", ("slow",)),
    "dualformer": ("dualformer", ("fast", "slow", "auto")),
}
SUMMARY = "summary.json"


class Interrupted(Exception):
  """A training stopped by a signal; its checkpoint is saved and the sweep can resume."""

  def __init__(self, model: str, step: int, signum: int):
    super().__init__(f"{model}: stopped by signal {signum} at step {step}")
    self.model, self.step, self.signum = model, step, signum


def model_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config` with the trace format and evaluation modes of model `name` (both valid
  values: a valid `config` stays valid)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}: expected one of {tuple(MODELS)}")
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.trace_mode, modes = MODELS[name]
  c.eval.modes = ",".join(modes)
  return c


def run_dir(workdir: str, name: str) -> str:
  """`<workdir>/<name>`, whose `data` links to the shared dataset."""
  path = os.path.join(workdir, name)
  os.makedirs(path, exist_ok=True)
  link = os.path.join(path, "data")
  if not os.path.islink(link):
    if os.path.exists(link):
      raise FileExistsError(f"{link} exists and is not a link to ../data: the three models "
                            "must share one dataset; move it away")
    os.symlink(os.path.join("..", "data"), link)
  return path


def _read_output(file: str) -> dict | None:
  """A JSON object this sweep wrote, or None when missing; an unreadable one (cut short by
  a crash before writes were atomic) is named and treated as missing, so it is redone."""
  if not os.path.exists(file):
    return None
  try:
    obj = io_utils.read_json(file, "sweep output")
  except ValueError as e:
    print(f"warning: {e}; redoing it", flush=True)
    return None
  if not isinstance(obj, dict):
    print(f"warning: {file} holds no JSON object; redoing it", flush=True)
    return None
  return obj


TIMING = "timing.json"
EVAL_SETTINGS = "settings.json"  # beside eval/<step>/results.json: what it was computed with
# eval.* fields that do not change a mode's metrics: which step and modes are asked for
# (both checked apart) and how many pictures are drawn.
_EVAL_NOT_SETTINGS = ("checkpoint_step", "modes", "num_pictures")


def _timing(path: str) -> dict:
  """Wall seconds so far; a key is None (unknown) once timing.json was found unreadable, so a
  damaged file never restarts the count at 0 s."""
  file = os.path.join(path, TIMING)
  if not os.path.exists(file):
    return {"train_s": 0.0, "eval_s": 0.0}
  try:
    timing = io_utils.read_json(file, "timing file")
    if not isinstance(timing, dict) or not all(
        v is None or isinstance(v, (int, float)) for v in timing.values()):
      raise ValueError(f"timing file {file} holds no object of seconds")
  except ValueError as e:
    print(f"warning: {e}; its wall times are unknown from now on (null in summary.json)",
          flush=True)
    return {"train_s": None, "eval_s": None, "unreadable": True}
  return timing


def add_time(path: str, key: str, seconds: float) -> None:
  timing = _timing(path)
  if timing.get("unreadable"):  # every earlier count is lost: none is a total any more
    timing = {k: None for k in (*timing, key) if k != "unreadable"}
  elif key in timing and timing[key] is None:
    pass  # stays unknown
  else:
    timing[key] = round(timing.get(key, 0.0) + seconds, 1)
  io_utils.write_json(os.path.join(path, TIMING), timing)


def eval_settings(run: RunConfig) -> dict:
  """Every setting that changes an evaluation's metrics, beside the checkpoint it scores."""
  # Sorted, as ConfigDict.to_dict was: eval_settings.json keeps its key order.
  out = {f"eval.{k}": v for k, v in sorted(dataclasses.asdict(run.eval).items())
         if k not in _EVAL_NOT_SETTINGS}
  out["eval.dtype"] = run.eval.dtype or run.model.dtype  # "" samples in model.dtype
  out["seed"] = run.seed
  return json.loads(json.dumps(out, default=list))


def _cached(where: str, settings: dict) -> tuple[dict, dict]:
  """(mode -> metrics, mode -> per-task counts) saved in `where` when computed with
  `settings`; ({}, {}) otherwise (said with the field that changed), so it is redone."""
  results = _read_output(os.path.join(where, "results.json"))
  if results is None:
    return {}, {}
  saved = _read_output(os.path.join(where, EVAL_SETTINGS))
  if saved is None:
    print(f"note: {where}/results.json has no record of its settings; redoing it", flush=True)
    return {}, {}
  changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
  if changed:
    print(f"note: {where}/results.json was computed with other settings ({'; '.join(changed)}); "
          "redoing it", flush=True)
    return {}, {}
  per_task = _read_output(os.path.join(where, evaluate.PER_TASK)) or {}
  return results, per_task


def evaluate_at(run: RunConfig, path: str, name: str, step: int,
                modes: tuple[str, ...]) -> tuple[dict, dict]:
  """(mode -> metrics, mode -> per-task counts) of checkpoint `step` on the run's eval
  split; only modes not saved with the current settings are sampled, and merged with the
  saved. Per-task counts are None where evaluate wrote none (a process other than 0)."""
  settings = eval_settings(run)
  where = evaluate.output_dir(run.eval, path, step)
  results, per_task = _cached(where, settings)
  need = tuple(m for m in modes if not isinstance(results.get(m), dict) or m not in per_task)
  if need:
    print(f"[{name}] evaluating {', '.join(need)} mode at step {step} ({run.eval.split})",
          flush=True)
    at = dataclasses.replace(run, eval=dataclasses.replace(
        run.eval, checkpoint_step=step, modes=",".join(need)))
    start = time.perf_counter()
    results = {**results, **evaluate.evaluate(at, path)}
    per_task = {**per_task, **(_read_output(os.path.join(where, evaluate.PER_TASK)) or {})}
    io_utils.write_json(os.path.join(where, "results.json"), results, indent=1)
    io_utils.write_json(os.path.join(where, evaluate.PER_TASK), per_task)
    io_utils.write_json(os.path.join(where, EVAL_SETTINGS), settings, indent=1)
    add_time(path, "eval_s", time.perf_counter() - start)
  return {m: results[m] for m in modes}, {m: per_task.get(m) for m in modes}


def _checkpoints(config: ml_collections.ConfigDict, path: str) -> tuple[int, int | None]:
  """(latest step or 0, step of lowest validation loss or None) of the run in `path`."""
  vocab = records.read_meta(records.data_dir(path))["vocab"]
  ckpt = Checkpointer(path, config, vocab)
  try:
    return int(ckpt.latest_step() or 0), ckpt.best_step()
  finally:
    ckpt.close()


def ensure_trained(run: RunConfig, path: str, name: str) -> None:
  """Trains (or finishes training) `run` in `path`; Interrupted on a signal."""
  steps = run.train.num_steps
  if _checkpoints(run.config, path)[0] < steps:
    print(f"[{name}] training {steps} steps in {path}", flush=True)
    start = time.perf_counter()
    result = trainer.train(run, path)
    add_time(path, "train_s", time.perf_counter() - start)
    if result.interrupted:
      raise Interrupted(name, result.step, result.signal_number)


def best_valid_loss_step(run: RunConfig, path: str) -> int:
  step = _checkpoints(run.config, path)[1]
  if step is None:
    raise CheckpointError(f"no checkpoint in {path} has a validation loss: no step to "
                          "select (was it trained without a valid split?)")
  return step


def train_and_evaluate(run: RunConfig, path: str, name: str,
                       modes: tuple[str, ...]) -> tuple[dict, int]:
  """Trains (or finishes training) `run` in `path` and evaluates `modes` at its selected
  step (the best validation loss with a valid split, else the last step); returns
  (mode -> metrics, that step). Each part is skipped when its output exists."""
  ensure_trained(run, path, name)
  step = best_valid_loss_step(run, path) if run.data.num_valid else run.train.num_steps
  return evaluate_at(run, path, name, step, modes)[0], step


def new_summary(config: ml_collections.ConfigDict, meta: dict) -> dict:
  """summary.json before any model: the task, the A* reference lengths, the config."""
  return {"task": config.task.name, "models": {}, "wall_s": {}, "selected_step": {},
          "reference": {"complete_trace_len_mean": meta["lengths"]["test"]["trace"]["mean"],
                        "plan_len_mean": meta["lengths"]["test"]["plan"]["mean"]},
          "config": config.to_dict()}


def add_model(summary: dict, workdir: str, name: str, scored: tuple[dict, int],
              wall_s: dict | None = None) -> None:
  """Records a model's scoring and wall times in `summary`: (mode -> metrics, scored step)
  from train_and_evaluate, or (record, selected step) from select.score (the sweep);
  wall_s: the times of a kept result (default: the run's timing.json in workdir)."""
  summary["models"][name], summary["selected_step"][name] = scored
  summary["wall_s"][name] = wall_times(os.path.join(workdir, name)) if wall_s is None else wall_s


def wall_times(path: str) -> dict:
  """The run's wall seconds per stage (timing.json; None: unknown)."""
  return {k: v for k, v in _timing(path).items() if k != "unreadable"}


def write_summary(workdir: str, summary: dict) -> None:
  io_utils.write_json(os.path.join(workdir, SUMMARY), summary, indent=1, default=list)
  report.write_report(workdir, summary)


def run(config: ml_collections.ConfigDict, workdir: str,
        models: tuple[str, ...] = tuple(MODELS)) -> dict:
  """The whole comparison: data, each model's training and evaluation, summary and report."""
  data = config_lib.validate(config).data
  runs = {name: config_lib.validate(model_config(config, name)) for name in models}
  for run_cfg in runs.values():
    trainer.preflight(run_cfg)  # a bad name or mesh: before any work
  os.makedirs(workdir, exist_ok=True)
  summary = new_summary(config, generate.generate(data, workdir))
  for name, run_cfg in runs.items():
    add_model(summary, workdir, name, train_and_evaluate(
        run_cfg, run_dir(workdir, name), name, MODELS[name][1]))
  write_summary(workdir, summary)
  return summary


def cli(work: Callable[[ml_collections.ConfigDict, str], object], table: str, example: str,
        workdir_help: str) -> None:
  """Runs a command of this package (compare, sweep, tune) with --config and --workdir.

  The flags are defined here, under __main__ only: main.py defines --config too, and one
  process (a test run) may import several of these modules. They are the main module's
  key flags, so --help lists them.
  """
  config_flags.DEFINE_config_file(
      "config", None, f"config file[:preset], e.g. {example}", lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  for name in ("config", "workdir"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(lambda argv: command(argv, work, table))




def command(argv, work: Callable[[ml_collections.ConfigDict, str], object], table: str) -> None:
  """The shell of a sweep command (this one, experiments/sweep.py): checks argv, applies the
  jax settings, runs `work(config, workdir)`, turns user errors into one line and an
  interruption into its exit code, and prints the workdir's `table`."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  config_lib.configure_jax(config)
  try:
    work(config, workdir)
  except Interrupted as e:
    print(f"{e}; a checkpoint was saved: run the same command again to resume", file=sys.stderr)
    sys.exit(128 + e.signum)
  except (records.DatasetError, CheckpointError, OSError, ValueError,
          FloatingPointError, workdir_lock.WorkdirBusy) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  with open(os.path.join(workdir, table)) as out:
    print(f"\n{out.read()}")


def _run_models(config: ml_collections.ConfigDict, workdir: str) -> dict:
  models = tuple(m.strip() for m in flags.FLAGS.models.split(",") if m.strip())
  return run(config, workdir, models)


if __name__ == "__main__":
  flags.DEFINE_string("models", ",".join(MODELS), f"comma-separated subset of {','.join(MODELS)}")
  cli(_run_models, "results.md", "configs/maze.py:compare", "directory of the sweep")
