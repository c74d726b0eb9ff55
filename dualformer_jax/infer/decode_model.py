"""What the sampler needs of a model: the one cached-decoding API both models offer.

`model/transformer.Transformer` (encoder-decoder) and `lm/model.LM` (decoder-only)
satisfy it (tests/infer/decode_model_test.py); infer/sampler.py calls nothing else.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class DecodeModel(Protocol):
  """A model the sampler can drive one position at a time through a blocked cache."""

  def init_cache(self, enc_ids_NpxP: jax.Array, samples: int, max_len: int, block_len: int
                 ) -> Any:
    """An empty cache for Np x samples rows (prompt-major) and positions 0 .. max_len - 1,
    in blocks of block_len positions; enc_ids [Np, P] (a decoder-only model: [Np, 0])."""
    ...

  def decode_step(self, tok_R: jax.Array, pos: jax.Array, cache: Any,
                  num_blocks: int | None = None) -> tuple[jax.Array, Any]:
    """Feeds tok_R [R] at position pos (the same for every row; may be traced) ->
    (logits [R, V], the cache); num_blocks (static): blocks up to pos's are read."""
    ...
