"""PipelineStats: what a pipeline has emitted so far, kept by its iterator (and checkpointed).

The train stream's batcher reports the counts of each global batch beside the
batch (never inside it); TrainIterator adds them up. They describe the whole
global batch, so every process holds the same numbers and none needs to ask
the others.
"""

from __future__ import annotations

import dataclasses

from dualformer_jax.data import dropping

COUNTERS = ("examples", "overlong_prompt", "overlong_decoder", "real_tokens", "padded_tokens")


@dataclasses.dataclass
class PipelineStats:
  """Counters of what a pipeline has emitted so far (log them; they are part of the state)."""
  examples: int = 0  # rows emitted in batches (empty eval padding rows excluded)
  overlong_prompt: int = 0  # examples skipped: prompt longer than max_prompt_len
  overlong_decoder: int = 0  # examples skipped: decoder longer than max_decoder_len
  real_tokens: int = 0  # non-pad tokens in enc_ids + dec_ids
  padded_tokens: int = 0  # all cells of enc_ids + dec_ids
  levels: list[int] = dataclasses.field(default_factory=lambda: [0] * dropping.NUM_LEVELS)

  @property
  def overlong(self) -> int:
    return self.overlong_prompt + self.overlong_decoder

  @property
  def padding_efficiency(self) -> float:
    return self.real_tokens / max(self.padded_tokens, 1)

  def add(self, other: "PipelineStats") -> None:
    for name in COUNTERS:
      setattr(self, name, getattr(self, name) + getattr(other, name))
    self.levels = [a + b for a, b in zip(self.levels, other.levels)]

  def to_state(self) -> dict:
    return {**{k: getattr(self, k) for k in COUNTERS}, "levels": list(self.levels)}

  @classmethod
  def from_state(cls, state: dict) -> "PipelineStats":
    return cls(**{k: int(state[k]) for k in COUNTERS},
               levels=[int(v) for v in state["levels"]])
