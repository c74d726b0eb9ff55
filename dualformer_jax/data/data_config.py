"""The data layer's typed config: the task (`config.task`) and the dataset (`config.data`).

Frozen dataclasses, as model/model_config.ModelConfig, that check their own
fields when built (errors name the field and the value), so an entry point
builds them once from the ConfigDict (config.validate, in its RunConfig)
and the data layer takes them, never the whole ConfigDict.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dualformer_jax.data.dropping import TRACE_MODES, check_level_probs
from dualformer_jax.tasks import TASKS

ASTAR_MODES = ("deterministic", "nondeterministic")


def fail(field: str, value, why: str):
  """The config error: names the field (`task.size`) and the value."""
  raise ValueError(f"config.{field}={value!r}: {why}")


def _pick(cls, group: ml_collections.ConfigDict, **given):
  """`cls` from the fields of a ConfigDict group (KeyError names a missing one)."""
  names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
  return cls(**{n: group[n] for n in names}, **given)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """`config.task`, typed and checked: what tasks.make_task builds a task from."""
  name: str  # a key of tasks.TASKS
  size: int
  min_wall_frac: float
  max_wall_frac: float
  pairs_per_layout: int
  min_plan_len: int
  num_boxes: int
  num_docks: int
  num_interior_walls: int
  box_border_margin: int
  max_cost: int
  max_expansions: int

  def __post_init__(self):
    if self.name not in TASKS:
      fail("task.name", self.name, f"expected one of {tuple(TASKS)}")
    if self.size < 3:
      fail("task.size", self.size, "must be >= 3")
    if not 0.0 <= self.min_wall_frac <= self.max_wall_frac < 1.0:
      fail("task.min_wall_frac", (self.min_wall_frac, self.max_wall_frac),
            "need 0 <= min_wall_frac <= max_wall_frac < 1")
    if self.pairs_per_layout < 1:
      fail("task.pairs_per_layout", self.pairs_per_layout, "must be >= 1")
    if self.name == "sokoban":
      if self.num_boxes < 1 or self.num_docks < self.num_boxes:
        fail("task.num_docks", self.num_docks, "need num_boxes >= 1 and num_docks >= num_boxes")
      if self.box_border_margin < 1 or 2 * self.box_border_margin >= self.size:
        fail("task.box_border_margin", self.box_border_margin,
              f"must leave a free interior in a {self.size}x{self.size} grid")

  @classmethod
  def from_config(cls, task_cfg: ml_collections.ConfigDict) -> TaskConfig:
    return _pick(cls, task_cfg)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The dataset, typed and checked: its task (`config.task`), how it is generated and how
  the pipeline feeds it (`config.data`). All the data layer reads."""
  task: TaskConfig
  num_train: int
  num_test: int
  num_valid: int
  train_tasks: int
  seed: int
  num_shards: int
  astar: str  # ASTAR_MODES
  gen_workers: int
  trace_mode: str  # dropping.TRACE_MODES
  level_probs: tuple[float, ...]
  create_drop_rate: float
  fixed_level: int
  max_prompt_len: int
  max_decoder_len: int
  num_buckets: int
  bucket_pool: int
  num_workers: int

  def __post_init__(self):
    object.__setattr__(self, "level_probs", tuple(self.level_probs))
    if self.num_train < 1 or self.num_test < 1:
      fail("data.num_train", (self.num_train, self.num_test), "both splits need >= 1 task")
    if self.num_shards < 1:
      fail("data.num_shards", self.num_shards, "must be >= 1")
    if self.astar not in ASTAR_MODES:
      fail("data.astar", self.astar, f"expected one of {ASTAR_MODES}")
    if self.trace_mode not in TRACE_MODES:
      fail("data.trace_mode", self.trace_mode, f"expected one of {TRACE_MODES}")
    try:
      check_level_probs(self.level_probs)
    except ValueError as e:  # "level_probs=(...): why", the rule's own words
      raise ValueError(f"config.data.{e}") from None
    if not 0.0 <= self.create_drop_rate <= 1.0:
      fail("data.create_drop_rate", self.create_drop_rate, "must be in [0, 1]")
    if self.fixed_level not in range(5):
      fail("data.fixed_level", self.fixed_level, "must be 0..4")
    if self.num_valid < 0:
      fail("data.num_valid", self.num_valid, "must be >= 0 (0: no validation split)")
    if not 0 <= self.train_tasks <= self.num_train:
      fail("data.train_tasks", self.train_tasks,
            f"must be in [0, data.num_train={self.num_train}] (0: every train task)")
    for field in ("num_buckets", "bucket_pool"):
      if getattr(self, field) < 1:
        fail(f"data.{field}", getattr(self, field), "must be >= 1")

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> DataConfig:
    """From a whole planning config: its task and data groups."""
    return _pick(cls, c.data, task=TaskConfig.from_config(c.task))

