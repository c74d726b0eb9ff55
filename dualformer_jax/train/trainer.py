"""The training loop: the only impure shell around the jitted steps.

Reads batches from the grain pipeline, runs `train_step`, logs one step late
(so the host never stalls the device), evaluates the test-split loss (a
diagnostic, never used to choose anything), checkpoints (state + data iterator
+ config) and resumes from the latest checkpoint of the workdir. With a valid
split (data.num_valid > 0) every checkpoint step also measures the loss on it
(`valid_*` in metrics.jsonl) and saves it with the checkpoint, which keeps the
best one (Checkpointer.best_step). train.init_from starts a fresh run from the
params of another run's checkpoint (fine-tuning). SIGTERM/SIGINT save a
checkpoint before exiting.
A damaged latest checkpoint is set aside and the previous one resumed (said on
stdout); a state with NaN/Inf stops the run before it is saved; the workdir is
locked for the run (workdir_lock), and a dataset or data stream of another
config is refused.

Multi-process (distributed.py): every process runs this loop on its own rows
of each global batch; the batch widths and data statistics come from the
global batch (data/train_stream.py), so a step needs no host collective, and a
SIGTERM on any host stops all of them at the same step (jax's preemption sync
point). Only process 0 prints
and writes metrics; every process takes part in checkpoint saves and restores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tqdm import tqdm

from dualformer_jax import config as config_lib
from dualformer_jax import distributed, io_utils, workdir_lock
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import generate, records
from dualformer_jax.data.bucket_design import design_buckets
from dualformer_jax.data.eval_batches import EvalBatches
from dualformer_jax.data.stats import PipelineStats
from dualformer_jax.data.train_stream import train_iterator
from dualformer_jax.model import sharding
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.tasks import make_task
from dualformer_jax.train import planning_loss
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer, CheckpointError
from dualformer_jax.train.logger import MetricLogger, plot_loss
from dualformer_jax.train.schedule import make_schedule
from dualformer_jax.train.stop_flag import StopFlag


@dataclasses.dataclass
class TrainResult:
  step: int  # last completed step
  interrupted: bool  # stopped by a signal (a checkpoint was saved)
  signal_number: int = 0
  final_metrics: dict | None = None


def _say(message: str) -> None:
  """Prints once per run (process 0), without breaking the progress bar."""
  if jax.process_index() == 0:
    tqdm.write(message)


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Keeps the config the run used next to its outputs (process 0 only)."""
  if jax.process_index() == 0:
    io_utils.write_text(os.path.join(workdir, "config.json"),
                        config.to_json(indent=1, sort_keys=True))


def _to_device(batch: dict, mesh) -> dict:
  return sharding.shard_batch({k: v for k, v in batch.items() if k != "level"}, mesh)


def _restore(ckpt: Checkpointer, step: int, abstract_state, data_iter):
  """The checkpoint's state; the data iterator too when the process count is unchanged.

  The iterator state is one file per process over that process's share of the
  stream, so it cannot carry over to another process count: the data stream
  then starts again from its beginning (said on stdout).
  """
  ckpt.check_compatible(step)
  ckpt.check_stream(step)
  written_by = ckpt.process_count(step)
  if written_by == jax.process_count():
    return ckpt.restore(step, abstract_state, data_iter)
  _say(f"checkpoint {step} was written by {written_by} processes, this run has "
       f"{jax.process_count()}: restoring the model and optimizer; the data stream starts "
       "again from its beginning")
  return ckpt.restore(step, abstract_state, None)


def evaluate_loss(eval_step, params, eval_data, mesh, num_batches: int) -> dict:
  """Loss and token accuracy over the first `num_batches` batches of eval_data; {} if none."""
  sums: dict[str, float] = {}
  for i, batch in enumerate(eval_data):
    if i >= num_batches:
      break
    out = jax.device_get(eval_step(params, _to_device(batch, mesh)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v))
  if not sums:
    return {}
  return {k: float(v) for k, v in planning_loss.summarize(sums).items()}


def _init_params(config: ml_collections.ConfigDict, vocab: list[str], mesh, state):
  """`state` with its params replaced by those of checkpoint train.init_step of run
  train.init_from (-1: its latest); the optimizer state and step stay fresh."""
  source = Checkpointer(config.train.init_from, config, vocab)
  try:
    steps = source.all_steps()
    step = config.train.init_step if config.train.init_step >= 0 else max(steps, default=-1)
    if step not in steps:
      raise CheckpointError(f"train.init_from={config.train.init_from!r}: no checkpoint "
                            f"{config.train.init_step} in {source.directory}; have {steps}")
    abstract = step_lib.abstract_train_state(config, len(vocab), mesh, config.seed)
    params = source.restore(step, abstract, None).params
  finally:
    source.close()
  _say(f"initialised the params from checkpoint {step} in {source.directory}")
  return state.replace(params=params)


def preflight(config: ml_collections.ConfigDict, training: bool = True) -> None:
  """ValueError (or DistributedError) for what only the mesh, model or schedule builders
  check: mesh sizes, model.size / dim / attention / remat / dtype, and for a training the
  batch split and the learning-rate schedule. Called before any work (main.py: before
  generating the dataset), so a bad value fails at once, before a file is written. Builds
  no arrays."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  ModelConfig.from_config(config.model, len(make_task(config.task).vocabulary()))
  if training:  # eval.dtype: config_lib.validate; eval batches fit any mesh (evaluate.py)
    sharding.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum)
    distributed.check_batch_split(mesh, config.train.batch_size)
    make_schedule(config.train)


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its newest usable checkpoint if any.

  Process 0 holds the workdir's lock for the run (workdir_lock.WorkdirBusy when
  another training or generation has it).
  """
  preflight(config)
  if jax.process_index() != 0:
    return _train(config, workdir)
  with workdir_lock.hold(workdir, "training"):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  directory = records.data_dir(workdir)
  ds = dataset_lib.open_dataset(directory, config.data.train_tasks)
  generate.check_dataset_config(ds.meta, config, directory)
  vocab = ds.vocab
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum)
  distributed.check_batch_split(mesh, config.train.batch_size)

  ckpt = Checkpointer(workdir, config, vocab.to_list())
  local_batch = config.train.batch_size // jax.process_count()
  buckets = design_buckets(config, ds)  # once: the train stream and eval batches share them
  data_iter = train_iterator(config, ds, local_batch, buckets=buckets)
  eval_data = EvalBatches(config, ds, local_batch, buckets=buckets)
  valid_data = (EvalBatches(config, ds, local_batch, buckets=buckets, split=records.VALID)
                if ds.has_split(records.VALID) else None)
  if valid_data is not None and not len(valid_data):
    _say("warning: no validation example fits data.max_prompt_len / data.max_decoder_len: "
         "no checkpoint will be chosen by validation loss")
  if not len(eval_data):
    _say(f"warning: none of the {config.data.num_test} test examples fits "
         f"data.max_prompt_len={config.data.max_prompt_len} / data.max_decoder_len="
         f"{config.data.max_decoder_len}: no eval loss will be measured")
  if not ckpt.all_steps():
    start = 0
    graphdef, state, state_shardings = step_lib.create_train_state(
        config, len(vocab), mesh, config.seed)
    if config.train.init_from:
      state = _init_params(config, vocab.to_list(), mesh, state)
  else:  # restore straight onto the shardings: no throw-away init
    graphdef = step_lib.model_graphdef(config, len(vocab))
    state_shardings = step_lib.abstract_train_state(config, len(vocab), mesh, config.seed)
    start, state, damaged = ckpt.newest_good(
        lambda s: _restore(ckpt, s, state_shardings, data_iter), _say)
    if damaged:
      aside = ckpt.set_aside(damaged)
      _say(f"warning: checkpoints {damaged} are damaged and were moved to {aside}; "
           f"training resumes from checkpoint {start}")
    state_shardings = jax.tree.map(lambda x: x.sharding, state_shardings)
    _say(f"resumed from checkpoint {start} in {ckpt.directory}")
  save_run_config(config, workdir)  # after the checks: a refused run leaves the old one
  train_step = step_lib.make_train_step(graphdef, config, mesh, state_shardings)
  eval_step = step_lib.make_eval_step(graphdef, mesh, state_shardings)
  logger = MetricLogger(workdir, resume_step=start)
  stop = StopFlag()
  result = TrainResult(step=start, interrupted=False)
  num_steps = config.train.num_steps
  pending = None  # (step, device metrics) of a log step, read one step later
  speed = _Throughput()
  multi = jax.process_count() > 1
  bar = tqdm(total=num_steps, initial=start, desc="train", unit="step",
             disable=None if jax.process_index() == 0 else True, mininterval=2)
  # Several processes: no Python SIGTERM handler, jax's preemption notifier gets the signal.
  handlers = contextlib.nullcontext() if multi else stop.installed()
  try:
    with handlers, jax.set_mesh(mesh):
      for step in range(start + 1, num_steps + 1):
        batch = next(data_iter)
        state, metrics = train_step(state, _to_device(batch, mesh))
        if pending is not None:  # dispatched this step before syncing on the last one
          _log_train(*pending, logger, bar, speed, data_iter.stats)
          pending = None
        speed.add(data_iter.batch_tokens)  # after the log: step s's rate counts steps <= s
        if step % config.train.log_every == 0 or step == num_steps:
          pending = (step, metrics)
        bar.update(1)
        result.step = step
        # Save before the test eval: a failing eval must not cost the steps since the last
        # save. The validation loss is measured first, as the save records it.
        if step % config.train.checkpoint_every == 0 or step == num_steps:
          valid = None
          if valid_data is not None and len(valid_data):
            valid = evaluate_loss(eval_step, state.params, valid_data, mesh, len(valid_data))
            logger.write(step, valid, prefix="valid_")
            _say(f"step {step}: valid loss {valid['loss']:.4f}")
          ckpt.save(step, state, data_iter, valid_loss=None if valid is None else valid["loss"])
        if (step % config.train.eval_every == 0 or step == num_steps) and len(eval_data):
          ev = evaluate_loss(eval_step, state.params, eval_data, mesh, config.train.eval_batches)
          logger.write(step, ev, prefix="eval_")
          _say(f"step {step}: eval loss {ev['loss']:.4f}, token accuracy {ev['accuracy']:.3f}")
          result.final_metrics = ev
        # Every process must stop at the same step: the save below is collective.
        if multi and multihost_utils.reached_preemption_sync_point(step):
          stop.signum = signal.SIGTERM
        if stop.signum:
          ckpt.save(step, state, data_iter, force=True)
          result.interrupted, result.signal_number = True, stop.signum
          break
      if pending is not None:
        _log_train(*pending, logger, bar, speed, data_iter.stats)
  finally:
    bar.close()
    ckpt.close()
    logger.close()
    data_iter.close()
  overlong = data_iter.stats.overlong  # of the global stream: the same on every process
  if jax.process_index() == 0:
    plot_loss(workdir)
    if overlong:
      tqdm.write(f"the pipeline skipped {overlong} over-long examples "
                 f"(longer than data.max_prompt_len / data.max_decoder_len)")
  return result


class _Throughput:
  """Loss tokens per second between two log lines."""

  def __init__(self):
    self.tokens, self.t0 = 0.0, time.perf_counter()
    self.start = self.t0  # elapsed_s: wall seconds since this (re)start of training

  def add(self, tokens: float) -> None:
    self.tokens += tokens

  def rate(self) -> float:
    now = time.perf_counter()
    r = self.tokens / max(now - self.t0, 1e-9)
    self.tokens, self.t0 = 0.0, now
    return r


def _log_train(step: int, metrics, logger: MetricLogger, bar, speed: _Throughput,
               data_stats: PipelineStats) -> None:
  """Logs a finished step's metrics (a host sync on an already-finished step)."""
  host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(host["loss"]):
    raise FloatingPointError(f"loss is {host['loss']} at step {step}; stopping")
  host["tokens_per_s"] = speed.rate()
  host["elapsed_s"] = time.perf_counter() - speed.start
  host["data_overlong"] = float(data_stats.overlong)
  host["data_padding_efficiency"] = data_stats.padding_efficiency
  logger.write(step, host)
  bar.set_postfix(loss=f"{host['loss']:.4f}", tok_s=f"{host['tokens_per_s']:.0f}")
  if bar.disable:  # no TTY (CI, nohup, SLURM logs): a plain line stands in for the bar
    _say(f"step {step}: loss {host['loss']:.4f}, {host['tokens_per_s']:.0f} tokens/s, "
         f"{host['elapsed_s']:.0f} s")
