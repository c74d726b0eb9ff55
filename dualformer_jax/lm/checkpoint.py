"""The math run's checkpoints: an orbax manager over the train state plus a JSON record.

The record holds what a resumed run must share with the run that wrote it
(drop probability, data, optimisation settings, task, architecture); a resume
with other values is refused naming each field that differs, a state with
NaN/Inf is never saved, and every restore is checked against the checksums
saved with it (train/integrity.py).
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
    shared = [k for k in self.record if k in meta]
    diffs = _diffs({k: meta[k] for k in shared}, {k: self.record[k] for k in shared})
    if diffs:
      each = "; ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, a, b in diffs)
      raise ValueError(f"checkpoint {step} in {self.directory} was trained with other "
                       f"{', '.join(d[0] for d in diffs)} ({each}); resume with the settings "
                       "it was trained with, or use another --workdir")
    older = sorted(set(self.record) - set(meta))
    if older:
      print(f"note: checkpoint {step} in {self.directory} predates the record of "
            f"{', '.join(older)}: those settings cannot be checked", flush=True)
    state = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
    wrong = integrity.mismatches(meta["checksums"], integrity.digest(state)[0])
    if wrong:
      raise ValueError(f"checkpoint {step} in {self.directory} fails its checksum ({wrong[0]})")
    return state

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _diffs(theirs: dict, ours: dict, prefix: str = "") -> list[tuple[str, object, object]]:
  """(dotted field, checkpoint's value, current value) of every field that differs."""
  out = []
  for k in sorted(set(theirs) | set(ours)):
    a, b = theirs.get(k), ours.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diffs(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append((f"{prefix}{k}", a, b))
  return out
