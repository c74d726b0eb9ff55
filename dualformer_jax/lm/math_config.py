"""The math run's typed config (configs/math.py): frozen pieces, each checked when built.

As config.RunConfig for the planning half: an entry point (main._run_math,
compile, benchmarks/lm_memory_bench) calls validate (below) once, and the
library code (lm/finetune.py, lm/math_eval.py, compile.lm_programs) takes the
pieces and trusts them. The mesh is the planning half's MeshConfig; the other
groups differ from the planning ones in their fields, so they are their own
here. The ConfigDict stays only for results.json (its JSON).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from dualformer_jax.data.data_config import fail
from dualformer_jax.lm.model import DTYPES
from dualformer_jax.model.sharding import MeshConfig
from dualformer_jax.train.train_config import OptimizerConfig

SOURCES = ("synthetic", "jsonl")


def _fields(cls, group: ml_collections.ConfigDict, **given) -> Any:
  """`cls` from a ConfigDict group's fields, values as they are (the checkpoint record
  holds some of them, so they are not converted)."""
  return cls(**{f.name: given[f.name] if f.name in given else group[f.name]
                for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class MathTaskConfig:
  """`config.task` (field comments: configs/math._task)."""
  name: str
  source: str  # SOURCES
  min_ops: int
  max_ops: int
  max_value: int
  max_operand: int

  def __post_init__(self):
    if self.source not in SOURCES:
      fail("task.source", self.source, "expected synthetic or jsonl")
    if self.source == "synthetic":
      if not 1 <= self.min_ops <= self.max_ops:
        fail("task.min_ops", self.min_ops, "need 1 <= min_ops <= max_ops")
      if self.max_value < 3 or self.max_operand < 2:
        fail("task.max_value", self.max_value, "need max_value >= 3 and max_operand >= 2")

  def record(self) -> dict:
    """The checkpoint record's `task`: config.task.to_dict(), keys sorted as it sorts them."""
    return dict(sorted(dataclasses.asdict(self).items()))


@dataclasses.dataclass(frozen=True)
class MathDataConfig:
  """`config.data` (field comments: configs/math._data); `source` is task.source."""
  drop_probs: tuple[float, ...]
  seed: int
  num_train: int
  num_test: int
  train_file: str
  test_file: str
  max_len: int
  source: str

  def __post_init__(self):
    probs = self.drop_probs
    if not probs or len(set(probs)) != len(probs):
      fail("data.drop_probs", probs, "need one or more distinct probabilities")
    for p in probs:
      if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        fail("data.drop_probs", probs, "every p must be a number in [0, 1)")
    if self.source == "synthetic" and (self.num_train < 1 or self.num_test < 1):
      fail("data.num_train", self.num_train, "both splits need >= 1 problem")
    if self.source == "jsonl":
      for field in ("train_file", "test_file"):
        path = getattr(self, field)
        if not path or not os.path.isfile(path):
          fail(f"data.{field}", path, "task.source=jsonl needs an existing JSON-lines file")
    if self.max_len < 8:
      fail("data.max_len", self.max_len, "must be >= 8")


@dataclasses.dataclass(frozen=True)
class MathLMConfig:
  """`config.lm` (field comments: configs/math._lm): a checkpoint to fine-tune, or the
  from-scratch architecture; `source` is task.source."""
  checkpoint: str
  dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  ffn_dim: int
  rope_theta: float
  dtype: str
  param_dtype: str
  attention: str
  remat: str
  source: str

  def __post_init__(self):
    if self.source == "jsonl" and not self.checkpoint:
      fail("lm.checkpoint", self.checkpoint, "task.source=jsonl fine-tunes a Hugging Face "
           "checkpoint directory (its tokenizer.json tokenizes the text)")
    if self.checkpoint and not os.path.isfile(os.path.join(self.checkpoint, "config.json")):
      fail("lm.checkpoint", self.checkpoint,
           "no config.json there: not a Hugging Face checkpoint directory")
    if not self.checkpoint and (self.dim % self.num_heads or
                                self.num_heads % self.num_kv_heads):
      fail("lm.num_heads", self.num_heads,
           "num_heads must divide dim and be a multiple of num_kv_heads")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        fail(f"lm.{field}", getattr(self, field), f"expected one of {DTYPES}")

  def execution(self) -> dict:
    """The settings a checkpoint's architecture is run with (hf_checkpoint overrides)."""
    return dict(dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention,
                remat=self.remat)


@dataclasses.dataclass(frozen=True)
class MathTrainConfig(OptimizerConfig):
  """`config.train` (field comments: configs/math._train): the shared optimizer and loop
  fields, without the planning trainer's (grad_accum, loss_norm, evals, init)."""

  def __post_init__(self):
    super().__post_init__()
    if self.learning_rate <= 0 or self.warmup_steps < 0:
      fail("train.learning_rate", self.learning_rate,
           "need learning_rate > 0 and warmup_steps >= 0")


MODES = ("slow", "fast", "auto")  # lm/math_eval.py: what each forces after the prompt


def parse_modes(modes: str) -> list[str]:
  """`eval.modes` parsed: a comma-separated subset of MODES, each once."""
  out = [m.strip() for m in modes.split(",") if m.strip()]
  if not out or any(m not in MODES for m in out) or len(set(out)) != len(out):
    raise ValueError(f"eval.modes={modes!r}: expected a comma-separated subset of {MODES}")
  return out


@dataclasses.dataclass(frozen=True)
class MathEvalConfig:
  """`config.eval` (field comments: configs/math._eval); scored by lm/math_eval.py."""
  modes: str
  num_problems: int
  num_samples: int
  pass_ks: tuple[int, ...]
  temperature: float
  top_k: int
  problems_per_batch: int

  def __post_init__(self):
    parse_modes(self.modes)
    ks = self.pass_ks
    if not ks or min(ks) < 1 or max(ks) > self.num_samples:
      fail("eval.pass_ks", ks, f"need 1 <= k <= eval.num_samples={self.num_samples}")
    if self.num_problems < 1 or self.problems_per_batch < 1 or self.temperature <= 0:
      fail("eval.num_problems", self.num_problems,
           "num_problems, problems_per_batch >= 1 and temperature > 0")

  @property
  def mode_list(self) -> list[str]:
    return parse_modes(self.modes)


@dataclasses.dataclass(frozen=True)
class MathRun:
  """A checked math run: its typed pieces, and the ConfigDict they came from (for
  results.json). Built by validate; change a piece with dataclasses.replace."""
  config: ml_collections.ConfigDict
  task: MathTaskConfig
  data: MathDataConfig
  lm: MathLMConfig
  mesh: MeshConfig
  train: MathTrainConfig
  eval: MathEvalConfig
  seed: int  # model init and sampling keys


def validate(c: ml_collections.ConfigDict) -> MathRun:
  """Raises ValueError naming the first bad field of a math config; returns the MathRun."""
  task = _fields(MathTaskConfig, c.task)
  lm = _fields(MathLMConfig, c.lm, source=task.source)  # jsonl: the checkpoint before files
  data = _fields(MathDataConfig, c.data, drop_probs=tuple(c.data.drop_probs),
                 source=task.source)
  train, mesh = _fields(MathTrainConfig, c.train), MeshConfig.from_config(c.mesh)
  eval_cfg = _fields(MathEvalConfig, c.eval, pass_ks=tuple(c.eval.pass_ks))
  return MathRun(c, task, data, lm, mesh, train, eval_cfg, int(c.seed))
