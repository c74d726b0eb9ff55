"""Orbax checkpoints of a run: train state, data-iterator state and config together.

One Checkpointer for both halves. A planning checkpoint is refused
(CheckpointError) when it was written by a config whose model, task or
vocabulary differ from the current one; the training schedule may change
between runs (e.g. to train longer), and so may execution-only model fields
(attention kernel, remat policy). Resuming a training also needs the same data
stream (seed, trace format). The LM fine-tune (lm/finetune.py) names its own
record fields instead (`Checkpointer.with_record`), each compared on restore.

Integrity: a state with NaN/Inf values is never saved (FloatingPointError), and
each checkpoint records a checksum per array (train/integrity.py). Restore
verifies both, so a damaged step (unreadable, changed bytes, non-finite) raises
CorruptCheckpoint, and `newest_good` falls back to the previous step, saying so.
`restore_params` (evaluation, bootstrapping) reads the params alone and verifies
theirs, so sampling needs neither the optimizer state nor its abstract tree.

Model selection: a step saved with a validation loss (the trainer's, on the
valid split) is a candidate; the one with the lowest loss is kept besides the
latest `train.keep_checkpoints` (orbax asks `_KeepLatestAndBest`), and
`best_step` names it, so a run is scored at its best, not at its last step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from typing import Any, Callable, Iterator, Sequence, TypeVar

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from dualformer_jax import distributed
from dualformer_jax.train import integrity
from dualformer_jax.train.errors import CheckpointError, CorruptCheckpoint

# Config groups that must match for a checkpoint to fit the current run.
_COMPAT_GROUPS = ("model", "task")
# Model fields that choose how the same math runs, not what it computes.
_EXECUTION_ONLY = ("remat", "attention")
T = TypeVar("T")
# The params' leaf paths in a saved train state's checksums (integrity.paths of TrainState).
_PARAMS_PATH = ".params"
# Shape overrides: 0 (the size's own) is left out, so checkpoints from before they existed fit.
_SHAPE_OVERRIDES = ("dim", "layers", "heads", "ffn")


def _drop_execution_only(view: dict) -> dict:
  if isinstance(view.get("model"), dict):
    view = {**view, "model": {k: v for k, v in view["model"].items()
                              if k not in _EXECUTION_ONLY
                              and not (k in _SHAPE_OVERRIDES and v == 0)}}
  return view


def compat_view(config: ml_collections.ConfigDict, vocab: list[str]) -> dict:
  """What a checkpoint must share with the run that restores it (see _EXECUTION_ONLY)."""
  view = {**{g: config[g].to_dict() for g in _COMPAT_GROUPS}, "vocab": list(vocab)}
  return _drop_execution_only(view)


def stream_view(config: ml_collections.ConfigDict) -> dict:
  """The data settings a resumed training must keep: its data-iterator state is a
  position in the stream they define."""
  d = config.data
  view = {"data.seed": d.seed, "data.trace_mode": d.trace_mode}
  if d.trace_mode == "dualformer":
    view["data.level_probs"] = list(d.level_probs)
  if d.trace_mode == "fixed_level":
    view["data.fixed_level"] = d.fixed_level
  if d.trace_mode == "dualformer" or (d.trace_mode == "fixed_level" and d.fixed_level == 3):
    view["data.create_drop_rate"] = d.create_drop_rate
  return view


@dataclasses.dataclass
class _KeepLatestAndBest:
  """orbax preservation policy: the `latest` newest steps of the schedule, the newest step
  of all, and the step `best()` names.

  A step in `resume_only()` (a signal's save between scheduled ones) is kept only while it
  is the newest, the point to resume from: it never pushes a scheduled step out, so an
  interrupted run keeps the same steps, and offers the same ones to checkpoint selection
  (experiments/select.py), as one that ran straight through.
  """
  latest: int
  best: Callable[[], int | None]
  resume_only: Callable[[], set[int]]

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    del context
    steps = sorted(c.step for c in checkpoints)
    skip = self.resume_only()
    keep = {*[s for s in steps if s not in skip][-self.latest:], *steps[-1:], self.best()}
    return [c.step in keep for c in checkpoints]


def _json_roundtrip(x: Any) -> Any:
  return json.loads(json.dumps(x))


def field_diffs(theirs: dict, ours: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(dotted field, their value, our value) of every field of two nested dicts that differs:
  a checkpoint's record against the run's (also experiments/kept_results.py's files)."""
  out = []
  for k in sorted(set(theirs) | set(ours)):
    a, b = theirs.get(k), ours.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += field_diffs(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append((f"{prefix}{k}", a, b))
  return out


def _one_line(e: BaseException) -> str:
  """An exception as one short line (tensorstore errors run to dozens of lines)."""
  lines = str(e).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 or len(lines) > 1 else ''}"


class Checkpointer:
  """CheckpointManager over `<workdir>/checkpoints`, async, keeping the last K and the best.

  Every step's record ("meta") holds the checksums, the process count and the run's
  record: for a planning run (the constructor) its compatibility view, data stream
  and config; for another run (`with_record`, the LM fine-tune) the fields it names.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, vocab: list[str]):
    record = {"compat": compat_view(config, vocab), "stream": stream_view(config),
              "config": json.loads(config.to_json())}
    self._open(workdir, config.train.keep_checkpoints, record, self._check_config)

  @classmethod
  def with_record(cls, workdir: str, keep: int, record: dict) -> "Checkpointer":
    """A Checkpointer whose steps carry `record` (JSON fields) and refuse a restore where a
    recorded field differs (naming each); fields a checkpoint predates are only noted."""
    self = cls.__new__(cls)
    self._open(workdir, keep, record, self._check_fields)
    return self

  def _open(self, workdir: str, keep: int, record: dict,
            check: Callable[[int, dict], None]) -> None:
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.record = _json_roundtrip(record)
    self._check = check
    self._best: tuple[float, int] | None = None  # (validation loss, step)
    self._resume_only: set[int] = set()  # steps a signal saved between scheduled ones
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_KeepLatestAndBest(keep, self.best_step, lambda: self._resume_only),
        enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._scan()

  def _scan(self) -> None:
    """The lowest validation loss and the resume-only steps among the saved steps, from
    their records (unreadable steps are skipped)."""
    self._best, self._resume_only = None, set()
    for step in self.all_steps():
      try:
        meta = self.read_meta(step)
      except CorruptCheckpoint:
        continue
      loss = meta.get("valid_loss")
      if isinstance(loss, float) and (self._best is None or loss < self._best[0]):
        self._best = (loss, step)
      if meta.get("resume_only"):
        self._resume_only.add(step)

  def best_step(self) -> int | None:
    """The saved step with the lowest validation loss; None when no step has one."""
    return None if self._best is None else self._best[1]

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def scheduled_steps(self) -> list[int]:
    """The saved steps of the schedule: all_steps less a signal's resume point."""
    return sorted(s for s in self.all_steps() if s not in self._resume_only)

  def save(self, step: int, state: Any, data_iter: Any | None, force: bool = False,
           valid_loss: float | None = None, resume_only: bool = False) -> bool:
    """Starts an asynchronous save; returns False when orbax skipped it (step exists).

    FloatingPointError, and nothing written, when the state holds NaN or Inf:
    a bad state must never become the latest checkpoint and push out a good one.
    valid_loss (the validation loss of `state`) makes the step a candidate for best_step.
    resume_only: a signal's save off the schedule, kept only until a newer step is saved
    (_KeepLatestAndBest).
    """
    checksums, bad = integrity.digest(state)
    if bad:
      last = self.latest_step()
      kept = "no checkpoint was written" if last is None else f"the last checkpoint ({last}) is kept"
      raise FloatingPointError(
          f"the train state at step {step} holds NaN/Inf values ({len(bad)} arrays, e.g. "
          f"{bad[0]}); it was not saved, {kept}. Lower train.learning_rate or raise "
          "train.warmup_steps")
    meta = {"step": step, **self.record, "checksums": checksums,
            "process_count": jax.process_count()}
    if valid_loss is not None and math.isfinite(valid_loss):
      meta["valid_loss"] = float(valid_loss)
    if resume_only:
      meta["resume_only"] = True
      self._resume_only.add(step)  # before the save: orbax prunes inside it
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    previous = self._best
    if "valid_loss" in meta and (previous is None or meta["valid_loss"] < previous[0]):
      self._best = (meta["valid_loss"], step)  # before the save: orbax prunes inside it
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if not saved:
      self._best = previous
      if resume_only:
        self._resume_only.discard(step)
    return saved

  def read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = out.meta
    except Exception as e:  # orbax raises many types for damaged directories
      raise CorruptCheckpoint(f"checkpoint {step} in {self.directory} is unreadable "
                              f"({_one_line(e)})") from None
    if not isinstance(meta, dict):
      raise CorruptCheckpoint(f"checkpoint {step} in {self.directory} has no readable record")
    return meta

  def process_count(self, step: int) -> int:
    """Processes that wrote checkpoint `step` (one data-iterator file each); 1 if unrecorded."""
    return int(self.read_meta(step).get("process_count", 1))

  def check_compatible(self, step: int) -> None:
    """CheckpointError when checkpoint `step` does not fit this run (see the class doc)."""
    self._check(step, self.read_meta(step))

  def _check_config(self, step: int, meta: dict) -> None:
    theirs = meta.get("compat")
    if not isinstance(theirs, dict):
      raise CheckpointError(f"checkpoint {step} in {self.directory} has no config record: "
                            "it was not written by dualformer_jax")
    theirs, ours = _drop_execution_only(theirs), self.record["compat"]
    if theirs == ours:
      return
    diffs = []
    for group in sorted(set(theirs) | set(ours)):
      a, b = theirs.get(group), ours.get(group)
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

  def _check_fields(self, step: int, meta: dict) -> None:
    shared = [k for k in self.record if k in meta]
    diffs = field_diffs({k: meta[k] for k in shared}, {k: self.record[k] for k in shared})
    if diffs:
      each = "; ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, a, b in diffs)
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} was trained with other "
          f"{', '.join(d[0] for d in diffs)} ({each}); resume with the settings it was "
          "trained with, or use another --workdir")
    older = sorted(set(self.record) - set(meta))
    if older:
      print(f"note: checkpoint {step} in {self.directory} predates the record of "
            f"{', '.join(older)}: those settings cannot be checked", flush=True)

  def check_stream(self, step: int) -> None:
    """CheckpointError when the training of `step` read another data stream (seed, format)."""
    theirs, ours = self.read_meta(step).get("stream"), self.record["stream"]
    if theirs is None or theirs == ours:  # older checkpoints have no record
      return
    # Fields of one format only (level_probs, ...) are named when both runs have them.
    diffs = [f"{k}: {theirs[k]!r} (checkpoint) vs {ours[k]!r} (now)"
             for k in sorted(set(theirs) & set(ours)) if theirs[k] != ours[k]]
    raise CheckpointError(
        f"checkpoint {step} in {self.directory} was trained on another data stream: "
        f"{'; '.join(diffs)}. Resume with the settings it was trained with, or use another "
        "--workdir")

  def restore(self, step: int, abstract_state: Any, data_iter: Any | None) -> Any:
    """Restores the state onto `abstract_state`'s shardings and the iterator in place,
    then verifies checksums and finiteness (CorruptCheckpoint when they fail)."""
    self.check_compatible(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    with self._reading(step):
      state = self.manager.restore(step, args=ocp.args.Composite(**items)).state
    self._verify(step, state)
    return state

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """The `params` of the saved train state alone, onto `abstract_params`'s shardings
    (orbax partial restore: the optimizer state is not read), verified as `restore` does
    against the recorded checksums of those arrays."""
    self.check_compatible(step)
    target = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    # A reader of its own: the manager's "state" item is read by a StandardCheckpointHandler,
    # which restores whole trees only (the files are the same PyTree format).
    with self._reading(step), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
      params = reader.restore(os.path.join(self.directory, str(step), "state"),
                              args=args)["params"]
    self._verify(step, params, prefix=_PARAMS_PATH)
    return params

  @contextlib.contextmanager
  def _reading(self, step: int) -> Iterator[None]:
    """Any error of orbax reading checkpoint `step` as one CorruptCheckpoint line."""
    try:
      yield
    except Exception as e:
      raise CorruptCheckpoint(f"cannot restore checkpoint {step} from {self.directory} "
                              f"({_one_line(e)})") from None

  def _verify(self, step: int, tree: Any, prefix: str = "") -> None:
    """CorruptCheckpoint unless `tree` (the saved state's subtree at `prefix`) matches the
    checksums recorded for it and is finite."""
    # The checksum first: it names the cause (files changed after they were written),
    # and damaged bytes may or may not decode to NaN/Inf.
    checksums, bad = integrity.digest(tree)
    recorded = self.read_meta(step).get("checksums")
    if recorded is not None:  # older checkpoints have none
      wrong = integrity.mismatches(integrity.subtree(recorded, prefix),
                                   {prefix + k: v for k, v in checksums.items()})
      if wrong:
        raise CorruptCheckpoint(f"checkpoint {step} in {self.directory} fails its checksum in "
                                f"{len(wrong)} arrays (e.g. {wrong[0]}): its files changed "
                                "after they were written")
    if bad:
      raise CorruptCheckpoint(f"checkpoint {step} in {self.directory} holds NaN/Inf values "
                              f"({len(bad)} arrays, e.g. {prefix}{bad[0]})")

  def newest_good(self, restore_step: Callable[[int], T], say: Callable[[str], None],
                  steps: list[int] | None = None) -> tuple[int, T, list[int]]:
    """(step, restore_step(step), damaged newer steps) for the newest step that restores.

    A CorruptCheckpoint moves on to the previous step with one line through `say`;
    any other error (an incompatible config) stops at once. CheckpointError when
    no step is usable.
    """
    damaged = []
    for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
      try:
        return step, restore_step(step), damaged
      except CorruptCheckpoint as e:
        damaged.append(step)
        say(f"warning: {e}; trying the previous checkpoint")
    raise CheckpointError(f"no usable checkpoint in {self.directory} (damaged: steps "
                          f"{damaged}); move that directory away to train from scratch")

  def set_aside(self, steps: list[int]) -> str:
    """Moves damaged steps to `<workdir>/checkpoints.damaged/` (kept, but out of orbax's
    sight, so a resumed training can save those steps again); returns that directory."""
    aside = os.path.join(self.workdir, "checkpoints.damaged")
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):  # an older copy of the same step: keep both
          target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      distributed.barrier("dualformer_jax: damaged checkpoints set aside")
    self.manager.reload()
    self._scan()
    return aside

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
