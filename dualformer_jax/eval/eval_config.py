"""The evaluation's typed config (`config.eval`): frozen, checked when built.

Built once at an entry point (config.validate); evaluate.evaluate reads it.
Scoring another step, split or set of modes is a `dataclasses.replace` of it
(experiments/compare.evaluate_at, select.valid_config), not an edited copy of
the whole ConfigDict.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dualformer_jax.data.data_config import fail

EVAL_MODES = ("fast", "slow", "auto")
SPLITS = ("test", "valid")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`, typed and checked (field comments: config._eval)."""
  modes: str  # comma-separated subset of EVAL_MODES (mode_list: the parsed tuple)
  num_samples: int
  num_tasks: int
  tasks_file: str
  checkpoint_step: int
  temperature: float
  top_k: int
  dtype: str  # "" = model.dtype
  prompts_per_batch: int
  max_decode_len: int
  num_pictures: int
  split: str  # SPLITS

  def __post_init__(self):
    if not self.mode_list or any(m not in EVAL_MODES for m in self.mode_list):
      fail("eval.modes", self.modes, f"expected a comma-separated subset of {EVAL_MODES}")
    if self.num_samples < 1 or self.num_tasks < 1 or self.prompts_per_batch < 1:
      fail("eval.num_samples", (self.num_samples, self.num_tasks, self.prompts_per_batch),
           "num_samples, num_tasks and prompts_per_batch must be >= 1")
    if self.temperature <= 0:
      fail("eval.temperature", self.temperature, "must be > 0 (use top_k=1 for greedy)")
    if self.top_k < 0:
      fail("eval.top_k", self.top_k, "must be >= 0")
    if self.split not in SPLITS:
      fail("eval.split", self.split, "expected test or valid")
    if self.dtype not in ("", "float32", "bfloat16"):
      fail("eval.dtype", self.dtype, "expected '', float32 or bfloat16 ('' = model.dtype)")

  @property
  def mode_list(self) -> tuple[str, ...]:
    return tuple(m.strip() for m in self.modes.split(",") if m.strip())

  @classmethod
  def from_config(cls, eval_cfg: ml_collections.ConfigDict) -> EvalConfig:
    return cls(**{f.name: eval_cfg[f.name] for f in dataclasses.fields(cls)})
