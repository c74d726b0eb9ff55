"""The planning model's training: the grain pipeline, the planning loss and evaluations
wired into the one training loop (train/loop.py).

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

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from dualformer_jax import distributed, io_utils, workdir_lock
from dualformer_jax.config import RunConfig
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import generate, records
from dualformer_jax.data.bucket_design import design_buckets
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.eval_batches import EvalBatches
from dualformer_jax.data.stats import PipelineStats
from dualformer_jax.data.train_stream import train_iterator
from dualformer_jax.model import sharding, transformer
from dualformer_jax.train import planning_loss
from dualformer_jax.train import loop as loop_lib
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.errors import CheckpointError
from dualformer_jax.train.logger import MetricLogger, plot_loss
from dualformer_jax.train.loop import say
from dualformer_jax.train.schedule import make_schedule
from dualformer_jax.train.train_config import TrainConfig


@dataclasses.dataclass
class TrainResult:
  step: int  # last completed step
  interrupted: bool  # stopped by a signal (a checkpoint was saved)
  signal_number: int = 0
  final_metrics: dict | None = None


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
  say(f"checkpoint {step} was written by {written_by} processes, this run has "
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


def _init_params(run: RunConfig, vocab: list[str], mesh, state):
  """`state` with its params replaced by those of checkpoint train.init_step of run
  train.init_from (-1: its latest); the optimizer state and step stay fresh."""
  t = run.train
  source = Checkpointer(t.init_from, run.config, vocab)
  try:
    steps = source.all_steps()
    step = t.init_step if t.init_step >= 0 else max(steps, default=-1)
    if step not in steps:
      raise CheckpointError(f"train.init_from={t.init_from!r}: no checkpoint "
                            f"{t.init_step} in {source.directory}; have {steps}")
    abstract = step_lib.abstract_train_state(run.model, t, mesh, run.seed)
    params = source.restore(step, abstract, None).params
  finally:
    source.close()
  say(f"initialised the params from checkpoint {step} in {source.directory}")
  return state.replace(params=params)


def preflight(run: RunConfig, training: bool = True) -> None:
  """ValueError (or DistributedError) for what only the mesh and schedule builders check:
  mesh sizes, and for a training the batch split and the learning-rate schedule. Called by the entry points before any work
  (main.py: before generating the dataset), so a bad value fails at once, before a file
  is written; train() calls it too, before it takes the lock, for a caller that did not
  (a notebook, a test). Builds no arrays (the RunConfig's pieces checked themselves)."""
  if not isinstance(run, RunConfig):  # a bare ConfigDict has the same group names
    raise TypeError(f"expected a RunConfig (config.validate), got {type(run).__name__}")
  mesh = sharding.make_mesh(run.mesh)
  if training:  # eval.dtype: EvalConfig; eval batches fit any mesh (evaluate.py)
    sharding.check_batch_size(run.train.batch_size, mesh, run.train.grad_accum)
    distributed.check_batch_split(mesh, run.train.batch_size)
    make_schedule(run.train)


def train(run: RunConfig, workdir: str) -> TrainResult:
  """Trains `run` in `workdir`, resuming from its newest usable checkpoint if any.

  Process 0 holds the workdir's lock for the run (workdir_lock.WorkdirBusy when
  another training or generation has it).
  """
  preflight(run)
  if jax.process_index() != 0:
    return _train(run, workdir)
  with workdir_lock.hold(workdir, "training"):
    return _train(run, workdir)


@dataclasses.dataclass
class _Data:
  """The run's dataset and its three streams (train, test-split eval, valid split)."""
  vocab: list[str]
  train: Any  # data/train_stream.train_iterator
  eval: EvalBatches
  valid: EvalBatches | None


def _open_data(data_cfg: DataConfig, local_batch: int, workdir: str) -> _Data:
  """The dataset of `workdir` (refused when generated by another config) and its streams of
  `local_batch` rows per process; warns when no test (or valid) example fits the lengths."""
  directory = records.data_dir(workdir)
  ds = dataset_lib.open_dataset(directory, data_cfg.train_tasks)
  generate.check_dataset_config(ds.meta, data_cfg, directory)
  buckets = design_buckets(data_cfg, ds)  # once: the train stream and eval batches share them
  data = _Data(ds.vocab.to_list(), train_iterator(data_cfg, ds, local_batch, buckets=buckets),
               EvalBatches(data_cfg, ds, local_batch, buckets=buckets),
               (EvalBatches(data_cfg, ds, local_batch, buckets=buckets, split=records.VALID)
                if ds.has_split(records.VALID) else None))
  if data.valid is not None and not len(data.valid):
    say("warning: no validation example fits data.max_prompt_len / data.max_decoder_len: "
        "no checkpoint will be chosen by validation loss")
  if not len(data.eval):
    say(f"warning: none of the {data_cfg.num_test} test examples fits "
        f"data.max_prompt_len={data_cfg.max_prompt_len} / data.max_decoder_len="
        f"{data_cfg.max_decoder_len}: no eval loss will be measured")
  return data


def _start(run: RunConfig, ckpt: Checkpointer, data: _Data, mesh):
  """(start step, graphdef, state, state shardings): fresh (or train.init_from's params),
  or restored straight onto the shardings from the newest usable checkpoint."""
  if len(data.vocab) != run.model.vocab_size:  # only a hand-made dataset can differ
    raise records.DatasetError(f"the dataset's vocabulary has {len(data.vocab)} tokens, the "
                               f"task's {run.model.vocab_size}")
  if not ckpt.all_steps():
    graphdef, state, shardings = step_lib.create_train_state(run.model, run.train, mesh,
                                                             run.seed)
    if run.train.init_from:
      state = _init_params(run, data.vocab, mesh, state)
    return 0, graphdef, state, shardings
  abstract = step_lib.abstract_train_state(run.model, run.train, mesh, run.seed)
  start, state = loop_lib.resume(ckpt, lambda s: _restore(ckpt, s, abstract, data.train))
  return start, transformer.graphdef(run.model), state, step_lib.shardings_of(abstract)


def _train(run: RunConfig, workdir: str) -> TrainResult:
  mesh = sharding.make_mesh(run.mesh)  # its batch split: checked by preflight
  data = _open_data(run.data, run.train.batch_size // jax.process_count(), workdir)
  try:
    ckpt = Checkpointer(workdir, run.config, data.vocab)  # the record: the whole config
    start, graphdef, state, shardings = _start(run, ckpt, data, mesh)
    save_run_config(run.config, workdir)  # after the checks: a refused run leaves the old one
    logger = MetricLogger(workdir, resume_step=start)
    hooks = _Hooks(run.train, mesh, data, logger,
                   step_lib.make_eval_step(graphdef, mesh, shardings))
    loop = loop_lib.Loop(
        train_step=step_lib.make_train_step(graphdef, run.train, mesh, shardings),
        next_batch=lambda step: _to_device(next(data.train), mesh), ckpt=ckpt, logger=logger,
        mesh=mesh, num_steps=run.train.num_steps, log_every=run.train.log_every,
        checkpoint_every=run.train.checkpoint_every, data_iter=data.train,
        log_fields=hooks.log_fields, progress=hooks.progress, dispatched=hooks.dispatched,
        validate=hooks.validate, after_step=hooks.after_step)
    out = loop_lib.run(loop, state, start)
  finally:
    data.train.close()
  overlong = data.train.stats.overlong  # of the global stream: the same on every process
  if jax.process_index() == 0:
    plot_loss(workdir)
    if overlong:
      tqdm.write(f"the pipeline skipped {overlong} over-long examples "
                 f"(longer than data.max_prompt_len / data.max_decoder_len)")
  return TrainResult(step=out.step, interrupted=bool(out.signal_number),
                     signal_number=out.signal_number, final_metrics=hooks.final_metrics)


class _Hooks:
  """What the planning run adds to the loop: throughput and data statistics in each log
  row, the validation loss saved with each checkpoint, the test-split eval loss."""

  def __init__(self, train_cfg: TrainConfig, mesh, data: _Data, logger: MetricLogger,
               eval_step):
    self.train_cfg, self.mesh, self.data, self.logger = train_cfg, mesh, data, logger
    self.eval_step = eval_step
    self.tokens, self.t0 = 0.0, time.perf_counter()  # loss tokens since the last log
    self.start = self.t0  # elapsed_s: wall seconds since this (re)start of training
    self.final_metrics: dict | None = None

  def dispatched(self, step: int) -> None:
    del step  # after the log: step s's rate counts steps <= s
    self.tokens += self.data.train.batch_tokens

  def log_fields(self, step: int) -> dict:
    del step
    now = time.perf_counter()
    rate = self.tokens / max(now - self.t0, 1e-9)
    self.tokens, self.t0 = 0.0, now
    stats: PipelineStats = self.data.train.stats
    return {"tokens_per_s": rate, "elapsed_s": now - self.start,
            "data_overlong": float(stats.overlong),
            "data_padding_efficiency": stats.padding_efficiency}

  def progress(self, step: int, row: dict) -> tuple[dict, str]:
    return ({"loss": f"{row['loss']:.4f}", "tok_s": f"{row['tokens_per_s']:.0f}"},
            f"step {step}: loss {row['loss']:.4f}, {row['tokens_per_s']:.0f} tokens/s, "
            f"{row['elapsed_s']:.0f} s")

  def validate(self, step: int, state) -> float | None:
    if self.data.valid is None or not len(self.data.valid):
      return None
    valid = evaluate_loss(self.eval_step, state.params, self.data.valid, self.mesh,
                          len(self.data.valid))
    self.logger.write(step, valid, prefix="valid_")
    say(f"step {step}: valid loss {valid['loss']:.4f}")
    return valid["loss"]

  def after_step(self, step: int, state) -> None:
    c = self.train_cfg
    if (step % c.eval_every == 0 or step == c.num_steps) and len(self.data.eval):
      ev = evaluate_loss(self.eval_step, state.params, self.data.eval, self.mesh,
                         c.eval_batches)
      self.logger.write(step, ev, prefix="eval_")
      say(f"step {step}: eval loss {ev['loss']:.4f}, token accuracy {ev['accuracy']:.3f}")
      self.final_metrics = ev
