"""The train stream: ArrayRecord shards -> dropped, length-bucketed, padded batches (grain).

  records -> global shuffle(seed, epoch) -> repeat -> [random] parse + draw level + drop trace
  -> (workers) pool of `bucket_pool` global batches, sorted by length, cut into global
  batches padded to bucket boundaries, emitted in a seeded random order
  -> this process's rows [p * B, (p + 1) * B) of each global batch.
The drop is keyed by the example's position in the global stream, so every draw
of a task (every epoch) gets a fresh level and fresh create drops, and the
whole stream is a function of data.seed. Every process draws the whole
global stream and keeps its own rows: the widths of a step come from the global
batch, so all processes agree on them without a collective (the price: each
process decodes and drops every example of the global batch; add
data.num_workers when that is the bottleneck). The iterator's state is
a small JSON dict (grain.checkpoint.CheckpointSave/CheckpointRestore): a
resumed iterator yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from dualformer_jax.data import buckets as buckets_lib
from dualformer_jax.data import dropping, examples
from dualformer_jax.data.bucket_design import design_buckets
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.dataset import StoredDataset
from dualformer_jax.data.stats import PipelineStats

# Per-example work is Python (json + numpy) under the GIL: reader threads only add
# hand-off overhead (measured ~25% slower with 1-2 threads). Parallelism comes from
# grain worker processes (data.num_workers).
_READ_OPTIONS = dict(num_threads=0, prefetch_buffer_size=0)
_WORKER_BUFFER = 8  # batches each worker may hold ready (a pool is emitted in a burst)


def process_share(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(p, n): the given values, or jax's; ValueError unless 0 <= p < n."""
  if process_index is None or process_count is None:
    import jax  # only here: grain workers import this module and must stay light
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} / process_count={process_count}: "
                     "need 0 <= process_index < process_count")
  return process_index, process_count


class _TagRecord(grain.transforms.MapWithIndex):
  """raw -> (record index, raw). Indices past the end (epochs > 0) wrap, as MapDataset does."""

  def __init__(self, num_records: int):
    self._n = num_records

  def map_with_index(self, index: int, raw: bytes) -> tuple[int, bytes]:
    return index % self._n, raw


def _tag_position(position: int, example: dict) -> dict:
  return {**example, "position": position}


class _PoolBatchIterDataset(grain.IterDataset):
  """Examples -> (this process's rows of a global batch, the global batch's stats, loss tokens)."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, share: tuple[int, int],
               pool: int, buckets: buckets_lib.Buckets, seed: int, max_skips: int):
    super().__init__(parent)
    self._args = (batch_size, share, pool, buckets, seed, max_skips)

  def __iter__(self) -> grain.DatasetIterator:
    return _PoolBatchIterator(self._parent.__iter__(), *self._args)


class _PoolBatchIterator(grain.DatasetIterator):
  """A pool of `pool` global batches' worth is sorted by length, cut, and each global batch
  padded to its own widths; this process keeps its rows.

  State: the parent's state at the start of the current pool and the position in it.
  """

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, share: tuple[int, int],
               pool: int, buckets: buckets_lib.Buckets, seed: int, max_skips: int):
    super().__init__(parent)
    self._batch_size, (self._p, n) = batch_size, share
    self._global_batch = batch_size * n
    self._pool, self._buckets, self._seed = pool, buckets, seed
    self._max_skips = max_skips  # this many overlong draws in a row: nothing fits, stop
    self._batches: list[tuple[dict, PipelineStats, int]] = []
    self._pos = 0
    self._pool_start: Any = None
    self._skip = 0  # batches of the next pool already emitted before a restore

  def _draw_pool(self) -> tuple[list[dict], PipelineStats]:
    """The pool's examples that fit, and the overlong ones skipped on the way, counted."""
    kept, skipped, in_a_row = [], PipelineStats(), 0
    while len(kept) < self._global_batch * self._pool:
      ex = next(self._parent)
      if ex["overlong"] == examples.OK:
        kept.append(ex)
        in_a_row = 0
        continue
      if ex["overlong"] == examples.LONG_PROMPT:
        skipped.overlong_prompt += 1
      else:
        skipped.overlong_decoder += 1
      in_a_row += 1
      if in_a_row >= self._max_skips:
        raise ValueError(
            f"{in_a_row} examples in a row are too long (in this pool: "
            f"{skipped.overlong_prompt} prompts, {skipped.overlong_decoder} decoders); "
            "raise config.data.max_prompt_len / max_decoder_len")
    return kept, skipped

  def _fill(self) -> None:
    self._pool_start = self._parent.get_state()
    kept, skipped = self._draw_pool()
    enc_b = np.array([self._buckets.enc_width(examples.enc_len(ex)) for ex in kept])
    dec_len = np.array([examples.dec_len(ex) for ex in kept])
    dec_b = np.array([self._buckets.dec_width(n) for n in dec_len])
    order = np.lexsort((dec_len, enc_b, dec_b))  # by decoder bucket, then encoder bucket
    rng = np.random.default_rng([self._seed, kept[0]["position"]])
    g, b = self._global_batch, self._batch_size
    batches = []
    for k in rng.permutation(self._pool):  # emit the pool's batches in random order
      rows = order[k * g:(k + 1) * g]  # the global batch
      enc_width, dec_width = int(enc_b[rows].max()), int(dec_b[rows].max())
      mine = [kept[r] for r in rows[self._p * b:(self._p + 1) * b]]
      batch = examples.pad_examples(mine, b, enc_width, dec_width)
      levels = np.bincount([kept[r]["level"] for r in rows], minlength=dropping.NUM_LEVELS)
      stats = PipelineStats(
          examples=len(rows), real_tokens=int(sum(examples.enc_len(kept[r]) for r in rows)
                                              + dec_len[rows].sum()),
          padded_tokens=g * (enc_width + dec_width), levels=[int(v) for v in levels])
      batches.append((batch, stats, int(dec_len[rows].sum())))
    batches[0][1].add(skipped)  # the pool's skips are counted with its first batch
    self._batches, self._pos = batches, self._skip
    self._skip = 0

  def __next__(self) -> tuple[dict, PipelineStats, int]:
    if self._pos >= len(self._batches):
      self._fill()
    item = self._batches[self._pos]
    self._pos += 1
    return item

  def get_state(self) -> dict:
    if self._skip or self._pos < len(self._batches):
      return {"parent": self._pool_start, "pos": self._skip or self._pos}
    return {"parent": self._parent.get_state(), "pos": 0}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._pool_start = state["parent"]
    self._batches, self._pos, self._skip = [], 0, int(state["pos"])


class _StatsIterDataset(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, buckets: buckets_lib.Buckets,
               include_index: bool):
    super().__init__(parent)
    self._buckets, self._include_index = buckets, include_index

  def __iter__(self) -> "TrainIterator":
    return TrainIterator(self._parent.__iter__(), self._buckets, self._include_index)


class TrainIterator(grain.DatasetIterator):
  """The train stream: yields this process's batches and keeps, beside them, `stats` and
  `batch_tokens` of the global batches (the same on every process); checkpoints through
  grain/orbax."""

  def __init__(self, parent: grain.DatasetIterator, buckets: buckets_lib.Buckets,
               include_index: bool):
    super().__init__(parent)
    self.buckets = buckets
    self.stats = PipelineStats()
    self.batch_tokens = 0  # loss tokens (targets) of the last global batch
    self._include_index = include_index

  def __next__(self) -> dict:
    batch, stats, self.batch_tokens = next(self._parent)
    self.stats.add(stats)
    if not self._include_index:
      batch = {k: v for k, v in batch.items() if k != "index"}
    return batch

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "stats": self.stats.to_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self.stats = PipelineStats.from_state(state["stats"])


def train_dataset(data: DataConfig, ds: StoredDataset, batch_size: int,
                  process_index: int | None = None, process_count: int | None = None, *,
                  buckets: buckets_lib.Buckets | None = None,
                  include_index: bool = False) -> grain.IterDataset:
  """The infinite train stream of this process as a grain IterDataset (iterate it for batches).

  batch_size is per process (the global batch is batch_size * process_count).
  buckets: the run's (bucket_design.design_buckets), designed here when not given.
  include_index adds "index" int64 [B] (record index in the split).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1")
  share = process_share(process_index, process_count)
  buckets = design_buckets(data, ds) if buckets is None else buckets
  src = ds.source("train")
  stream = (grain.MapDataset.source(src)
            .map_with_index(_TagRecord(len(src)))  # keep the record index through the shuffle
            .seed(data.seed)
            .shuffle()  # global, reseeded per epoch by repeat
            .repeat(None)
            .random_map(examples.DrawExample(data, ds.grammar))  # keyed by stream position
            .map_with_index(_tag_position))
  it = stream.to_iter_dataset(grain.ReadOptions(**_READ_OPTIONS))
  it = _PoolBatchIterDataset(it, batch_size, share, data.bucket_pool, buckets, data.seed,
                             max(len(src), 1))
  if data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.num_workers, per_worker_buffer_size=_WORKER_BUFFER))
  return _StatsIterDataset(it, buckets, include_index)


def train_iterator(data: DataConfig, ds: StoredDataset, batch_size: int,
                   process_index: int | None = None, process_count: int | None = None, *,
                   buckets: buckets_lib.Buckets | None = None,
                   include_index: bool = False) -> TrainIterator:
  """iter(train_dataset(...)): has .stats, .batch_tokens, .buckets, get_state/set_state;
  close() when done."""
  return iter(train_dataset(data, ds, batch_size, process_index, process_count,
                            buckets=buckets, include_index=include_index))
