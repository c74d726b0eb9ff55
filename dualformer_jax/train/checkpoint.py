"""Orbax checkpoints of a run: train state, data-iterator state and config together.

A checkpoint is refused (CheckpointError) when it was written by a config
whose model, task or vocabulary differ from the current one; the training
schedule may change between runs (e.g. to train longer).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

# Config groups that must match for a checkpoint to fit the current run.
_COMPAT_GROUPS = ("model", "task")


class CheckpointError(RuntimeError):
  pass


def compat_view(config: ml_collections.ConfigDict, vocab: list[str]) -> dict:
  return {**{g: config[g].to_dict() for g in _COMPAT_GROUPS}, "vocab": list(vocab)}


def _json_roundtrip(x: Any) -> Any:
  return json.loads(json.dumps(x))


class Checkpointer:
  """CheckpointManager over `<workdir>/checkpoints`, async, keeping the last K."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, vocab: list[str]):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.compat = _json_roundtrip(compat_view(config, vocab))
    self.config = config
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints, enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any | None, force: bool = False) -> bool:
    """Starts an asynchronous save; returns False when orbax skipped it (step exists)."""
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({"step": step, "compat": self.compat,
                                        "config": json.loads(self.config.to_json()),
                                        "process_count": jax.process_count()})}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return out.meta
    except Exception as e:  # orbax raises many types for damaged directories
      raise CheckpointError(
          f"cannot read checkpoint {step} in {self.directory} ({type(e).__name__}: {e}); "
          "it may be corrupt or partly written: delete that step directory to fall back "
          "to an earlier one") from None

  def process_count(self, step: int) -> int:
    """Processes that wrote checkpoint `step` (one data-iterator file each); 1 if unrecorded."""
    meta = self.read_meta(step)
    return int(meta.get("process_count", 1)) if isinstance(meta, dict) else 1

  def check_compatible(self, step: int) -> None:
    meta = self.read_meta(step)
    theirs = meta.get("compat") if isinstance(meta, dict) else None
    if theirs == self.compat:
      return
    if not isinstance(theirs, dict):
      raise CheckpointError(f"checkpoint {step} in {self.directory} has no config record: "
                            "it was not written by dualformer_jax")
    diffs = []
    for group in sorted(set(theirs) | set(self.compat)):
      a, b = theirs.get(group), self.compat.get(group)
      if group == "vocab":
        if a != b:
          diffs.append(f"vocabulary ({len(a or [])} vs {len(b)} tokens)")
      elif isinstance(a, dict) and isinstance(b, dict):
        diffs += [f"{group}.{k}: {a.get(k)!r} (checkpoint) vs {b.get(k)!r} (now)"
                  for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      else:
        diffs.append(group)
    raise CheckpointError(
        f"checkpoint {step} in {self.directory} was written by an incompatible config: "
        f"{'; '.join(diffs)}. Use another --workdir, or the config it was trained with.")

  def restore(self, step: int, abstract_state: Any, data_iter: Any | None) -> Any:
    """Restores the state onto `abstract_state`'s shardings and the iterator in place."""
    self.check_compatible(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items)).state
    except Exception as e:
      raise CheckpointError(
          f"cannot restore checkpoint {step} from {self.directory} "
          f"({type(e).__name__}: {e})") from None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
