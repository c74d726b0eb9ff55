"""One example as model ids, and examples stacked into a padded batch.

Batch (numpy; B rows, P prompt / T decoder width, both bucket boundaries):
  enc_ids int32 [B, P]  bos prompt eos, pad 0
  dec_ids int32 [B, T]  bos trace plan, pad 0
  targets int32 [B, T]  trace plan eos (dec_ids shifted left), pad 0
  trace_mask, plan_mask float32 [B, T]  1 where the target is a trace / plan-or-eos token
  level int32 [B]  the drop level drawn (-1 in eval batches)
  index int64 [B]  record index in the split (-1 for empty rows)
Examples longer than max_prompt_len / max_decoder_len (bos and eos included,
after dropping) are never truncated: encode_example marks them overlong.
"""

from __future__ import annotations

import grain
import numpy as np

from dualformer_jax.data import dropping, records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.vocab import BOS_ID, EOS_ID

OK, LONG_PROMPT, LONG_DECODER = 0, 1, 2  # the "overlong" field of an encoded example


def encode_example(index: int, level: int, prompt: np.ndarray, trace: np.ndarray,
                   plan: np.ndarray, max_prompt_len: int, max_decoder_len: int) -> dict:
  """One (already dropped) example as model ids, or a marker when it is too long."""
  if prompt.size + 2 > max_prompt_len:
    return {"index": index, "overlong": LONG_PROMPT}
  if trace.size + plan.size + 2 > max_decoder_len:
    return {"index": index, "overlong": LONG_DECODER}
  enc = np.concatenate([[BOS_ID], prompt, [EOS_ID]]).astype(np.int32)  # [P_i]
  dec = np.concatenate([[BOS_ID], trace, plan, [EOS_ID]]).astype(np.int32)  # [T_i + 1]
  return {"index": index, "overlong": OK, "level": level, "enc": enc, "dec": dec,
          "n_trace": trace.size}


def enc_len(example: dict) -> int:
  """Encoder row length P_i (bos prompt eos)."""
  return example["enc"].size


def dec_len(example: dict) -> int:
  """Decoder row length T_i (bos trace plan; the targets are one shorter than dec)."""
  return example["dec"].size - 1


def pad_examples(examples: list[dict], rows: int, enc_width: int, dec_width: int) -> dict:
  """Stacks encoded examples into a batch of `rows` rows (extra rows empty, masks 0)."""
  enc_ids = np.zeros((rows, enc_width), np.int32)  # [B, P]
  dec_ids = np.zeros((rows, dec_width), np.int32)  # [B, T]
  targets = np.zeros((rows, dec_width), np.int32)  # [B, T]
  trace_mask = np.zeros((rows, dec_width), np.float32)
  plan_mask = np.zeros((rows, dec_width), np.float32)
  level = np.full((rows,), -1, np.int32)
  index = np.full((rows,), -1, np.int64)
  for r, ex in enumerate(examples):
    enc, dec, k = ex["enc"], ex["dec"], ex["n_trace"]
    t = dec.size - 1
    enc_ids[r, :enc.size] = enc
    dec_ids[r, :t] = dec[:-1]
    targets[r, :t] = dec[1:]
    trace_mask[r, :k] = 1.0
    plan_mask[r, k:t] = 1.0
    level[r] = ex["level"]
    index[r] = ex["index"]
  # Empty rows still hold `bos eos` / `bos`, so no attention row is fully masked;
  # their loss masks are 0, so they weigh nothing.
  enc_ids[len(examples):, :2] = (BOS_ID, EOS_ID)
  dec_ids[len(examples):, 0] = BOS_ID
  return {"enc_ids": enc_ids, "dec_ids": dec_ids, "targets": targets, "trace_mask": trace_mask,
          "plan_mask": plan_mask, "level": level, "index": index}


class DrawExample(grain.transforms.RandomMap):
  """(record index, record bytes) -> a freshly dropped, encoded example (grain random map)."""

  def __init__(self, data: DataConfig, grammar: dropping.TraceGrammar):
    self._levels = dropping.LevelSampler(data.trace_mode, data.level_probs, data.fixed_level)
    self._grammar, self._rate = grammar, data.create_drop_rate
    self._max = (data.max_prompt_len, data.max_decoder_len)

  def random_map(self, item: tuple[int, bytes], rng: np.random.Generator) -> dict:
    index, raw = item
    rec = records.decode_record(raw)
    level = self._levels(rng)
    trace = dropping.drop_trace(rec["trace"], level, self._grammar, rng, self._rate)
    return encode_example(index, level, rec["prompt"], trace, rec["plan"], *self._max)
