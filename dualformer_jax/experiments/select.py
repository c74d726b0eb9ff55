"""One checkpoint-selection rule for every model and mode, and scoring at selected and last.

With sweep.select_tasks > 0 each mode of each model is scored at the saved step of
highest sampled 1-Optimal on the first sweep.select_tasks valid tasks x
sweep.select_samples responses of that mode (ties: higher SWC, then the later step), so
Dualformer's fast mode is judged by fast-mode samples, not by a complete-trace loss.
With select_tasks = 0 every mode takes the step of lowest validation loss (the rule
compare.py uses). Either way the model is also scored at its last step.

The sampled rule needs every scheduled step (not a signal's resume point, which
no run has at the same step): train.keep_checkpoints must cover
num_steps / checkpoint_every (check_config). The validation samples reuse compare's
evaluate_at (eval.split=valid, written to <run>/eval/<step>/valid/), so they resume too.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from dualformer_jax.config import RunConfig
from dualformer_jax.data import records
from dualformer_jax.experiments import compare
from dualformer_jax.train.checkpoint import Checkpointer


def check_config(config: ml_collections.ConfigDict, num_steps: int) -> None:
  """ValueError naming the first bad sweep.select_* field for runs of `num_steps`."""
  s, t = config.sweep, config.train
  if s.select_tasks < 0:
    raise ValueError(f"config.sweep.select_tasks={s.select_tasks}: must be >= 0 (0: lowest "
                     "validation loss)")
  if not s.select_tasks:
    return
  if s.select_samples < 1:
    raise ValueError(f"config.sweep.select_samples={s.select_samples}: must be >= 1")
  if s.select_tasks > config.data.num_valid:
    raise ValueError(f"config.sweep.select_tasks={s.select_tasks}: exceeds "
                     f"data.num_valid={config.data.num_valid}, the valid tasks generated")
  need = math.ceil(num_steps / t.checkpoint_every)
  if t.keep_checkpoints < need:
    raise ValueError(f"config.train.keep_checkpoints={t.keep_checkpoints}: selection by sampled "
                     f"validation 1-Optimal scores every saved step; keep all {need} of "
                     f"{num_steps} steps / checkpoint_every={t.checkpoint_every}")


def valid_config(run: RunConfig) -> RunConfig:
  """`run` sampling sweep.select_samples responses on the first sweep.select_tasks valid
  tasks."""
  sweep = run.config.sweep
  return dataclasses.replace(run, eval=dataclasses.replace(
      run.eval, split="valid", num_pictures=0, num_tasks=sweep.select_tasks,
      num_samples=sweep.select_samples))


def saved_steps(run: RunConfig, path: str) -> list[int]:
  vocab = records.read_meta(records.data_dir(path))["vocab"]
  ckpt = Checkpointer(path, run.config, vocab)
  try:
    return ckpt.scheduled_steps()  # not a signal's resume point: the same steps in every run
  finally:
    ckpt.close()


def best(curve: dict[int, dict]) -> int:
  """The step of highest 1-Optimal in `curve` (step -> metrics); ties: SWC, then later."""
  return max(curve, key=lambda s: (curve[s]["1_optimal"], curve[s]["swc"], s))


def select(run: RunConfig, path: str, name: str,
           modes: tuple[str, ...]) -> tuple[dict[str, int], dict]:
  """(mode -> selected step, mode -> {step: validation 1-Optimal}) of the trained run in
  `path`; the second is empty under the validation-loss rule."""
  if not run.config.sweep.select_tasks:
    step = compare.best_valid_loss_step(run, path)
    return {m: step for m in modes}, {}
  v = valid_config(run)
  curves: dict[str, dict[int, dict]] = {m: {} for m in modes}
  for step in saved_steps(run, path):
    for mode, metrics in compare.evaluate_at(v, path, name, step, modes)[0].items():
      curves[mode][step] = metrics
  chosen = {m: best(curves[m]) for m in modes}
  return chosen, {m: {str(s): x["1_optimal"] for s, x in curves[m].items()} for m in modes}


def score(run: RunConfig, path: str, name: str,
          modes: tuple[str, ...]) -> tuple[dict, int]:
  """Trains `run` in `path` (when unfinished), selects each mode's step and scores
  it on the test split there and at the last step. Returns (record, the first mode's
  selected step: where a bootstrap round starts from); record holds selected / last
  (mode -> metrics), selected_step (mode -> step), last_step, per_task (the same two, mode
  -> per-task counts) and validation (mode -> {step: validation 1-Optimal})."""
  compare.ensure_trained(run, path, name)
  chosen, validation = select(run, path, name, modes)
  last = run.train.num_steps
  record = {"selected": {}, "last": {}, "selected_step": chosen, "last_step": last,
            "per_task": {"selected": {}, "last": {}}, "validation": validation}
  for step in sorted({*chosen.values(), last}):
    here = tuple(m for m in modes if step in (chosen[m], last))  # only the modes scored here
    metrics, per_task = compare.evaluate_at(run, path, name, step, here)
    for mode in here:
      for which, at in (("selected", chosen[mode]), ("last", last)):
        if at == step:
          record[which][mode] = metrics[mode]
          record["per_task"][which][mode] = per_task[mode]
  return record, chosen[modes[0]]
