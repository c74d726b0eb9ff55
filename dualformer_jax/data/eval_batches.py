"""A held-out split (test, or valid) as padded batches in the run's own target format (for the
eval loss, and the validation loss that selects a checkpoint)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from dualformer_jax.data import buckets as buckets_lib
from dualformer_jax.data import dropping, examples
from dualformer_jax.data.bucket_design import design_buckets
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.dataset import StoredDataset
from dualformer_jax.data.stats import PipelineStats
from dualformer_jax.data.train_stream import process_share


class EvalBatches:
  """A split (`split`: test by default) once, in order, no shuffle, in the run's own format.

  Complete traces (level 0) for dualformer and complete runs, the empty trace
  for solution_only, `data.fixed_level` for fixed_level (level 3's drops are
  seeded, so every pass is the same). A loss is then comparable across runs on
  the plan tokens, and a Solution-Only run is not scored on traces it never saw.

  Global batch j holds the next batch_size * process_count examples; process p
  gets rows [p * batch_size, (p + 1) * batch_size). Shapes depend on the whole
  global batch, so all processes agree. The last batch is filled with empty
  rows (masks 0). Overlong examples are skipped and counted in `stats`.
  Iterate as often as needed; each pass yields the same batches.
  buckets: the run's (bucket_design.design_buckets), designed here when not given.
  """

  def __init__(self, data: DataConfig, ds: StoredDataset, batch_size: int,
               process_index: int | None = None, process_count: int | None = None, *,
               buckets: buckets_lib.Buckets | None = None, split: str = "test"):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    self._p, self._n = process_share(process_index, process_count)
    self._batch_size = batch_size
    self.buckets = design_buckets(data, ds) if buckets is None else buckets
    self._examples, self.stats = [], PipelineStats()
    level = dropping.eval_level(data.trace_mode, data.fixed_level)
    rng = np.random.default_rng([data.seed, level])  # level 3 only
    for i, rec in enumerate(ds.records(split)):
      trace = dropping.drop_trace(rec["trace"], level, ds.grammar, rng, data.create_drop_rate)
      ex = examples.encode_example(i, -1, rec["prompt"], trace, rec["plan"],
                                   data.max_prompt_len, data.max_decoder_len)
      if ex["overlong"] == examples.LONG_PROMPT:
        self.stats.overlong_prompt += 1
      elif ex["overlong"] == examples.LONG_DECODER:
        self.stats.overlong_decoder += 1
      else:
        self._examples.append(ex)
    self.stats.examples = len(self._examples)

  def __len__(self) -> int:
    return math.ceil(len(self._examples) / (self._batch_size * self._n))

  def __iter__(self) -> Iterator[dict]:
    global_batch = self._batch_size * self._n
    for j in range(len(self)):
      group = self._examples[j * global_batch:(j + 1) * global_batch]
      enc_width = self.buckets.enc_width(max(examples.enc_len(ex) for ex in group))
      dec_width = self.buckets.dec_width(max(examples.dec_len(ex) for ex in group))
      mine = group[self._p * self._batch_size:(self._p + 1) * self._batch_size]
      batch = examples.pad_examples(mine, self._batch_size, enc_width, dec_width)
      batch.pop("index")
      yield batch
