"""The one training loop: the only impure shell around a jitted train step.

Both the planning trainer (train/trainer.py) and the LM fine-tune
(lm/finetune.py) drive it; they only say where batches come from and what to
add at a log, a save or after a step (`Loop`'s hooks). The loop dispatches
step s+1 before it reads step s's metrics, so the host never stalls the device;
a non-finite loss stops the run with its step. Checkpoints go through one
`Checkpointer` (every `checkpoint_every` steps and the last); SIGTERM/SIGINT
save the step that just finished and stop (`StopFlag`). With several processes
jax's preemption notifier gets the signal instead, and every process stops at
the same step (the save is collective). `resume` restores the newest usable
checkpoint, setting damaged ones aside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.logger import MetricLogger
from dualformer_jax.train.stop_flag import StopFlag

State = TypeVar("State")


def say(message: str) -> None:
  """Prints once per run (process 0), without breaking the progress bar."""
  if jax.process_index() == 0:
    tqdm.write(message)


def _nothing(*args) -> None:
  del args


@dataclasses.dataclass
class Loop:
  """One training: its step, batches, checkpointer and logger, and the run's hooks."""
  train_step: Callable[[Any, dict], tuple[Any, dict]]  # (state, batch) -> (state, metrics)
  next_batch: Callable[[int], dict]  # step (1-based) -> its batch, on the devices
  ckpt: Checkpointer
  logger: MetricLogger
  mesh: jax.sharding.Mesh
  num_steps: int
  log_every: int
  checkpoint_every: int
  desc: str = "train"  # the progress bar's label
  data_iter: Any = None  # saved with every checkpoint (a grain iterator), or None
  # Host fields added to a logged step's row (e.g. throughput, data statistics).
  log_fields: Callable[[int], dict] = lambda step: {}
  # (step, logged row) -> (progress bar postfix, a line for when there is no TTY or None).
  progress: Callable[[int, dict], tuple[dict, str | None]] = (
      lambda step, row: ({"loss": f"{row['loss']:.4f}"}, None))
  # After a step is dispatched and the previous log step written (e.g. count its tokens).
  dispatched: Callable[[int], None] = _nothing
  # (step, state) at a save step: the validation loss saved with it, or None.
  validate: Callable[[int, Any], float | None] = lambda step, state: None
  # (step, state) after the step's save, e.g. the periodic eval loss.
  after_step: Callable[[int, Any], None] = _nothing


@dataclasses.dataclass
class LoopResult:
  step: int  # last completed step
  state: Any
  signal_number: int = 0  # the signal that stopped the run after a save (0: it ran to the end)


def resume(ckpt: Checkpointer, restore: Callable[[int], State]) -> tuple[int, State]:
  """(step, restore(step)) of the newest checkpoint that restores; damaged newer ones are
  moved aside (said on stdout). CheckpointError when none is usable."""
  start, state, damaged = ckpt.newest_good(restore, say)
  if damaged:
    aside = ckpt.set_aside(damaged)
    say(f"warning: checkpoints {damaged} are damaged and were moved to {aside}; "
        f"training resumes from checkpoint {start}")
  say(f"resumed from checkpoint {start} in {ckpt.directory}")
  return start, state


def run(loop: Loop, state: Any, start: int) -> LoopResult:
  """Trains from step `start` + 1 to loop.num_steps, or until a signal (after a save)."""
  multi = jax.process_count() > 1
  stop = StopFlag()
  result = LoopResult(step=start, state=state)
  bar = tqdm(total=loop.num_steps, initial=min(start, loop.num_steps), desc=loop.desc,
             unit="step", disable=None if jax.process_index() == 0 else True, mininterval=2)
  pending = None  # (step, device metrics) of a log step, read one step later
  # Several processes: no Python SIGTERM handler, jax's preemption notifier gets the signal.
  handlers = contextlib.nullcontext() if multi else stop.installed()
  try:
    with handlers, jax.set_mesh(loop.mesh):
      for step in range(start + 1, loop.num_steps + 1):
        state, metrics = loop.train_step(state, loop.next_batch(step))
        if pending is not None:  # dispatched this step before syncing on the last one
          _log(loop, *pending, bar)
          pending = None
        loop.dispatched(step)
        if step % loop.log_every == 0 or step == loop.num_steps:
          pending = (step, metrics)
        bar.update(1)
        result.step, result.state = step, state
        # Every process must stop at the same step: the save is collective.
        if multi and multihost_utils.reached_preemption_sync_point(step):
          stop.signum = signal.SIGTERM
        _save(loop, step, state, stop)
        if stop.signum:
          result.signal_number = stop.signum
          break
      if pending is not None:
        _log(loop, *pending, bar)
  finally:
    bar.close()
    loop.ckpt.close()
    loop.logger.close()
  return result


def _save(loop: Loop, step: int, state: Any, stop: StopFlag) -> None:
  """The periodic save (validation loss first, as the save records it), then the step's
  hook; a signal saves the step too (a periodic step only once), as a resume point only."""
  due = step % loop.checkpoint_every == 0 or step == loop.num_steps
  # Save before the hook (an eval): a failing eval must not cost the steps since the last save.
  if due:
    loop.ckpt.save(step, state, loop.data_iter, valid_loss=loop.validate(step, state))
  loop.after_step(step, state)
  if stop.signum and not due:  # read after the hook: a signal may arrive during an eval
    loop.ckpt.save(step, state, loop.data_iter, force=True, resume_only=True)


def _log(loop: Loop, step: int, metrics: dict, bar: tqdm) -> None:
  """Logs a finished step's metrics (a host sync on an already-finished step)."""
  row = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(row["loss"]):
    raise FloatingPointError(f"loss is {row['loss']} at step {step}; stopping")
  row.update(loop.log_fields(step))
  loop.logger.write(step, row)
  postfix, line = loop.progress(step, row)
  bar.set_postfix(**postfix)
  if bar.disable and line:  # no TTY (CI, nohup, SLURM logs): a plain line stands in for the bar
    say(line)
