"""The math run's checkpoints: an orbax manager over the train state plus a JSON record.

The record holds what a resumed run must share with the run that wrote it
(drop probability, data seed, task, architecture); a resume with other values
is refused, a state with NaN/Inf is never saved, and every restore is checked
against the checksums saved with it (train/integrity.py).
"""

from __future__ import annotations

import json

import orbax.checkpoint as ocp

from dualformer_jax.train import integrity
from dualformer_jax.train.step import TrainState


class Checkpoints:
  """Orbax manager over <run dir>/checkpoints: the train state and a JSON record."""

  def __init__(self, directory: str, keep: int, record: dict):
    self.directory, self.record = directory, json.loads(json.dumps(record))
    self.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True))

  def save(self, step: int, state: TrainState) -> None:
    checksums, bad = integrity.digest(state)
    if bad:
      raise FloatingPointError(f"the train state at step {step} holds NaN/Inf ({bad[0]}); "
                               "not saved. Lower train.learning_rate")
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**self.record, "step": step, "checksums": checksums})))

  def restore(self, step: int, abstract: TrainState) -> TrainState:
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    diffs = [k for k in self.record if meta.get(k) != self.record[k]]
    if diffs:
      raise ValueError(f"checkpoint {step} in {self.directory} was trained with other "
                       f"{', '.join(diffs)} ({', '.join(repr(meta.get(k)) for k in diffs)}); "
                       "use another --workdir")
    state = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
    wrong = integrity.mismatches(meta["checksums"], integrity.digest(state)[0])
    if wrong:
      raise ValueError(f"checkpoint {step} in {self.directory} fails its checksum ({wrong[0]})")
    return state

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
