"""The trainer's typed config (`config.train`): frozen, checked when built.

As data/data_config.DataConfig and model/model_config.ModelConfig: an entry
point builds it once (config.validate), the trainer reads it and trusts it.
The rules of the batch split and the learning-rate schedule live with their
owners (model/sharding, train/schedule) and run in trainer.preflight.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dualformer_jax.data.data_config import fail

LOSS_NORMS = ("sequence", "token")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The training fields both halves share: the optimizer and schedule
  (train/step.make_optimizer, train/schedule) and the loop's steps, logs and saves.
  The language model trains with exactly these (lm/math_config); the planning
  trainer adds its own below."""
  num_steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  final_lr_frac: float
  weight_decay: float
  b1: float
  b2: float
  grad_clip: float
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int

  def __post_init__(self):
    for field in ("num_steps", "batch_size", "log_every", "checkpoint_every",
                  "keep_checkpoints"):
      if getattr(self, field) < 1:
        fail(f"train.{field}", getattr(self, field), "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig(OptimizerConfig):
  """`config.train`, typed and checked (field comments: config._train)."""
  grad_accum: int
  loss_norm: str  # LOSS_NORMS
  eval_every: int
  eval_batches: int
  init_from: str
  init_step: int

  def __post_init__(self):
    super().__post_init__()
    if self.eval_every < 1:
      fail("train.eval_every", self.eval_every, "must be >= 1")
    if self.init_step < -1:
      fail("train.init_step", self.init_step, "must be a step >= 0, or -1 (the latest)")
    if self.loss_norm not in LOSS_NORMS:
      fail("train.loss_norm", self.loss_norm, f"expected one of {LOSS_NORMS}")

  @classmethod
  def from_config(cls, train_cfg: ml_collections.ConfigDict) -> TrainConfig:
    return cls(**{f.name: train_cfg[f.name] for f in dataclasses.fields(cls)})
