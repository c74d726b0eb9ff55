"""Bucket widths for a run, from a seeded sample of its train records (once per run).

Every process reads the same sample with the same seed, so all processes
design the same widths without talking to each other.
"""

from __future__ import annotations

import numpy as np

from dualformer_jax.data import buckets as buckets_lib
from dualformer_jax.data import dropping, records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.dataset import StoredDataset

SAMPLE = 2048  # train records read to design the buckets


def design_buckets(data: DataConfig, ds: StoredDataset) -> buckets_lib.Buckets:
  """Bucket widths from a seeded sample of train records under data.trace_mode.

  See buckets.choose_buckets for the shape budget. Decoder lengths are weighted
  by the level probabilities (level 3 drawn once).
  """
  src = ds.source("train")
  rng = np.random.default_rng([data.seed, 0xB0C4])
  idx = np.sort(rng.choice(len(src), min(len(src), SAMPLE), replace=False))
  if data.trace_mode == "dualformer":
    level_w = dropping.check_level_probs(data.level_probs)
  else:
    level_w = np.eye(dropping.NUM_LEVELS)[dropping.draw_level(
        rng, data.trace_mode, data.level_probs, data.fixed_level)]
  enc_len, dec_len, dec_w = [], [], []
  for i in idx:
    rec = records.decode_record(src[int(i)])
    enc_len.append(rec["prompt"].size + 2)
    for level in np.flatnonzero(level_w):
      trace = dropping.drop_trace(rec["trace"], int(level), ds.grammar, rng,
                                  data.create_drop_rate)
      dec_len.append(trace.size + rec["plan"].size + 1)  # a row: bos trace plan
      dec_w.append(level_w[level])
  enc_len, dec_len, dec_w = np.array(enc_len), np.array(dec_len), np.array(dec_w)
  enc_top, dec_top = data.max_prompt_len, data.max_decoder_len
  if "lengths" in ds.meta:  # exact maxima over both splits: a tighter largest bucket
    lens = [ds.meta["lengths"][s] for s in records.ALL_SPLITS if s in ds.meta["lengths"]]
    longest_prompt = max(x["prompt"]["max"] for x in lens) + 2
    longest_row = max(x["trace"]["max"] + x["plan"]["max"] for x in lens) + 1
    enc_top = min(enc_top, buckets_lib.align(longest_prompt))
    dec_top = min(dec_top, buckets_lib.align(longest_row))
  enc_ok = enc_len <= enc_top
  dec_ok = (dec_len <= dec_top) & (dec_len < data.max_decoder_len)  # a row is T_i = full - 1
  return buckets_lib.choose_buckets(enc_len[enc_ok], dec_len[dec_ok], dec_w[dec_ok],
                                    data.num_buckets, enc_top, dec_top, data.max_prompt_len,
                                    data.max_decoder_len)
