"""Input pipelines: ArrayRecord shards -> dropped, length-bucketed, padded batches.

Train (grain dataset API, one stream per process):
  records -> global shuffle(seed, epoch) -> repeat -> [random] parse + draw level + drop trace
  -> this process's share [p::n] -> (workers) pool of `bucket_pool` batches, sorted by length,
  cut into batches padded to bucket boundaries, emitted in a seeded random order -> stats.
The drop is keyed by the example's position in the global stream, so every draw
of a task (every epoch) gets a fresh level and fresh create drops, and the
whole stream is a function of config.data.seed. The iterator's state is a
small JSON dict (grain.checkpoint.CheckpointSave/CheckpointRestore): a resumed
iterator yields exactly the batches the uninterrupted one would have.

Batch (numpy; B rows, P prompt / T decoder width, both bucket boundaries):
  enc_ids int32 [B, P]  bos prompt eos, pad 0
  dec_ids int32 [B, T]  bos trace plan, pad 0
  targets int32 [B, T]  trace plan eos (dec_ids shifted left), pad 0
  trace_mask, plan_mask float32 [B, T]  1 where the target is a trace / plan-or-eos token
  level int32 [B]  the drop level drawn (-1 in eval batches)
Examples longer than config.data.max_prompt_len / max_decoder_len (bos and eos
included, after dropping) are skipped and counted in PipelineStats.

Buckets are per process; with several processes the shapes of one step may
differ between processes: take the max over processes and `pad_to` it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import grain
import ml_collections
import numpy as np

from dualformer_jax import config as config_lib
from dualformer_jax.data import buckets as buckets_lib
from dualformer_jax.data import dropping, records
from dualformer_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab

_BOUNDARY_SAMPLE = 2048  # train records read to design the buckets
# Per-example work is Python (json + numpy) under the GIL: reader threads only add
# hand-off overhead (measured ~25% slower with 1-2 threads). Parallelism comes from
# grain worker processes (config.data.num_workers).
_READ_OPTIONS = dict(num_threads=0, prefetch_buffer_size=0)
_WORKER_BUFFER = 8  # batches each worker may hold ready (a pool is emitted in a burst)
# PipelineStats counters; batches carry them as int64 [5 + NUM_LEVELS] (then level counts).
_COUNTERS = ("examples", "overlong_prompt", "overlong_decoder", "real_tokens", "padded_tokens")
_OK, _LONG_PROMPT, _LONG_DECODER = 0, 1, 2


@dataclasses.dataclass
class StoredDataset:
  """meta.json, checked, plus what the pipelines derive from it."""
  directory: str
  meta: dict
  vocab: Vocab
  grammar: dropping.TraceGrammar

  def paths(self, split: str) -> list[str]:
    return records.shard_paths(self.directory, split, self.meta["num_shards"][split])

  def source(self, split: str):
    """grain random-access source over a split; DatasetError when it does not match meta."""
    src = records.read_shards(self.paths(split))
    if len(src) != self.meta["counts"][split]:
      raise records.DatasetError(f"{self.directory}: {split} shards hold {len(src)} records, "
                                 f"meta.json says {self.meta['counts'][split]}")
    return src


def open_dataset(data_dir: str) -> StoredDataset:
  """Reads and checks meta.json; DatasetError names what is missing or wrong."""
  meta = records.read_meta(data_dir)
  if meta.get("status", "complete") != "complete":
    raise records.DatasetError(f"dataset in {data_dir} is incomplete (status="
                               f"{meta['status']!r}); rerun generation to finish it")
  for key in ("vocab", "num_shards", "counts"):
    if key not in meta:
      raise records.DatasetError(f"{data_dir}/{records.META} has no {key!r} field")
  for key in ("num_shards", "counts"):
    if not (isinstance(meta[key], dict)
            and all(isinstance(meta[key].get(s), int) for s in records.SPLITS)):
      raise records.DatasetError(
          f"{data_dir}/{records.META}: {key}={meta[key]!r} needs an int per split {records.SPLITS}")
  try:
    vocab = Vocab.from_list(meta["vocab"])
    grammar = dropping.TraceGrammar.from_vocab(vocab)
  except (ValueError, KeyError) as e:
    raise records.DatasetError(f"{data_dir}/{records.META}: bad vocabulary ({e})") from None
  return StoredDataset(data_dir, meta, vocab, grammar)


# ----------------------------------------------------------------------------- statistics

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

  def add(self, vec: np.ndarray) -> None:
    vec = [int(v) for v in vec]
    for name, v in zip(_COUNTERS, vec):
      setattr(self, name, getattr(self, name) + v)
    self.levels = [a + b for a, b in zip(self.levels, vec[len(_COUNTERS):])]

  def to_state(self) -> dict:
    return {**{k: getattr(self, k) for k in _COUNTERS}, "levels": list(self.levels)}

  @classmethod
  def from_state(cls, state: dict) -> "PipelineStats":
    return cls(**{k: int(state[k]) for k in _COUNTERS},
                levels=[int(v) for v in state["levels"]])


def design_buckets(config: ml_collections.ConfigDict,
                   ds: StoredDataset) -> buckets_lib.Buckets:
  """Bucket widths from a seeded sample of train records under the config's trace mode.

  See buckets.choose_buckets for the shape budget. Decoder lengths are weighted
  by the level probabilities (level 3 drawn once). Every process reads the same
  sample, so all processes share the widths.
  """
  d = config.data
  src = ds.source("train")
  rng = np.random.default_rng([d.seed, 0xB0C4])
  idx = np.sort(rng.choice(len(src), min(len(src), _BOUNDARY_SAMPLE), replace=False))
  if d.trace_mode == "dualformer":
    level_w = dropping.check_level_probs(d.level_probs)
  else:
    level_w = np.eye(dropping.NUM_LEVELS)[dropping.draw_level(rng, d.trace_mode, d.level_probs,
                                                              d.fixed_level)]
  enc_len, dec_len, dec_w = [], [], []
  for i in idx:
    rec = records.decode_record(src[int(i)])
    enc_len.append(rec["prompt"].size + 2)
    for level in np.flatnonzero(level_w):
      trace = dropping.drop_trace(rec["trace"], int(level), ds.grammar, rng, d.create_drop_rate)
      dec_len.append(trace.size + rec["plan"].size + 1)  # a row: bos trace plan
      dec_w.append(level_w[level])
  enc_len, dec_len, dec_w = np.array(enc_len), np.array(dec_len), np.array(dec_w)
  enc_top, dec_top = d.max_prompt_len, d.max_decoder_len
  if "lengths" in ds.meta:  # exact maxima over both splits: a tighter largest bucket
    lens = [ds.meta["lengths"][s] for s in records.SPLITS]
    longest_prompt = max(x["prompt"]["max"] for x in lens) + 2
    longest_row = max(x["trace"]["max"] + x["plan"]["max"] for x in lens) + 1
    enc_top = min(enc_top, buckets_lib.align(longest_prompt))
    dec_top = min(dec_top, buckets_lib.align(longest_row))
  enc_ok = enc_len <= enc_top
  dec_ok = (dec_len <= dec_top) & (dec_len < d.max_decoder_len)  # a row is T_i = full - 1
  return buckets_lib.choose_buckets(enc_len[enc_ok], dec_len[dec_ok], dec_w[dec_ok],
                                    d.num_buckets, enc_top, dec_top, d.max_prompt_len,
                                    d.max_decoder_len)


# ----------------------------------------------------------------------------- examples

def encode_example(index: int, level: int, prompt: np.ndarray, trace: np.ndarray,
                   plan: np.ndarray, max_prompt_len: int, max_decoder_len: int) -> dict:
  """One (already dropped) example as model ids, or a marker when it is too long."""
  if prompt.size + 2 > max_prompt_len:
    return {"index": index, "overlong": _LONG_PROMPT}
  if trace.size + plan.size + 2 > max_decoder_len:
    return {"index": index, "overlong": _LONG_DECODER}
  enc = np.concatenate([[BOS_ID], prompt, [EOS_ID]]).astype(np.int32)  # [P_i]
  dec = np.concatenate([[BOS_ID], trace, plan, [EOS_ID]]).astype(np.int32)  # [T_i + 1]
  return {"index": index, "overlong": _OK, "level": level, "enc": enc, "dec": dec,
          "n_trace": trace.size}


def pad_examples(examples: list[dict], rows: int, enc_len: int, dec_len: int) -> dict:
  """Stacks encoded examples into a batch of `rows` rows (extra rows empty, masks 0)."""
  enc_ids = np.zeros((rows, enc_len), np.int32)  # [B, P]
  dec_ids = np.zeros((rows, dec_len), np.int32)  # [B, T]
  targets = np.zeros((rows, dec_len), np.int32)  # [B, T]
  trace_mask = np.zeros((rows, dec_len), np.float32)
  plan_mask = np.zeros((rows, dec_len), np.float32)
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


def pad_to(batch: dict, enc_len: int, dec_len: int) -> dict:
  """Right-pads a batch to wider P / T (e.g. the max over processes); masks stay 0 there."""
  out = dict(batch)
  for key, width in (("enc_ids", enc_len), ("dec_ids", dec_len), ("targets", dec_len),
                     ("trace_mask", dec_len), ("plan_mask", dec_len)):
    extra = width - batch[key].shape[1]
    if extra < 0:
      raise ValueError(f"pad_to: {key} is {batch[key].shape[1]} wide, wider than {width}")
    out[key] = np.pad(batch[key], ((0, 0), (0, extra)))
  return out


def _batch_stats(batch: dict, num_real: int) -> np.ndarray:
  real = int((batch["enc_ids"][:num_real] != PAD_ID).sum() +
             (batch["dec_ids"][:num_real] != PAD_ID).sum())
  padded = batch["enc_ids"].size + batch["dec_ids"].size
  levels = np.bincount(batch["level"][:num_real], minlength=dropping.NUM_LEVELS)
  return np.array([num_real, 0, 0, real, padded, *levels], np.int64)


class _TagRecord(grain.transforms.MapWithIndex):
  """raw -> (record index, raw). Indices past the end (epochs > 0) wrap, as MapDataset does."""

  def __init__(self, num_records: int):
    self._n = num_records

  def map_with_index(self, index: int, raw: bytes) -> tuple[int, bytes]:
    return index % self._n, raw


def _tag_position(position: int, example: dict) -> dict:
  return {**example, "position": position}


class DrawExample(grain.transforms.RandomMap):
  """(record index, record bytes) -> a freshly dropped, encoded example (grain random map)."""

  def __init__(self, config: ml_collections.ConfigDict, grammar: dropping.TraceGrammar):
    d = config.data
    self._levels = dropping.LevelSampler(d.trace_mode, d.level_probs, d.fixed_level)
    self._grammar, self._rate = grammar, d.create_drop_rate
    self._max = (d.max_prompt_len, d.max_decoder_len)

  def random_map(self, item: tuple[int, bytes], rng: np.random.Generator) -> dict:
    index, raw = item
    rec = records.decode_record(raw)
    level = self._levels(rng)
    trace = dropping.drop_trace(rec["trace"], level, self._grammar, rng, self._rate)
    return encode_example(index, level, rec["prompt"], trace, rec["plan"], *self._max)


# ----------------------------------------------------------------------------- train stream

class _PoolBatchIterDataset(grain.IterDataset):
  """Examples -> batches: a pool of `pool` batches' worth is sorted by length, cut, padded."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, pool: int,
               buckets: buckets_lib.Buckets, seed: int, max_skips: int):
    super().__init__(parent)
    self._args = (batch_size, pool, buckets, seed, max_skips)

  def __iter__(self) -> grain.DatasetIterator:
    return _PoolBatchIterator(self._parent.__iter__(), *self._args)


class _PoolBatchIterator(grain.DatasetIterator):
  """State: the parent's state at the start of the current pool and the position in it."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, pool: int,
               buckets: buckets_lib.Buckets, seed: int, max_skips: int):
    super().__init__(parent)
    self._batch_size, self._pool, self._buckets, self._seed = batch_size, pool, buckets, seed
    self._max_skips = max_skips  # this many overlong draws in a row: nothing fits, stop
    self._batches: list[dict] = []
    self._pos = 0
    self._pool_start: Any = None
    self._skip = 0  # batches of the next pool already emitted before a restore

  def _fill(self) -> None:
    self._pool_start = self._parent.get_state()
    kept, overlong, in_a_row = [], [0, 0, 0], 0
    while len(kept) < self._batch_size * self._pool:
      ex = next(self._parent)
      if ex["overlong"]:
        overlong[ex["overlong"]] += 1
        in_a_row += 1
        if in_a_row >= self._max_skips:
          raise ValueError(
              f"{in_a_row} examples in a row are too long (in this pool: "
              f"{overlong[_LONG_PROMPT]} prompts, {overlong[_LONG_DECODER]} decoders); "
              "raise config.data.max_prompt_len / max_decoder_len")
      else:
        kept.append(ex)
        in_a_row = 0
    enc_b = np.array([self._buckets.enc_width(ex["enc"].size) for ex in kept])
    dec_len = np.array([ex["dec"].size - 1 for ex in kept])
    dec_b = np.array([self._buckets.dec_width(n) for n in dec_len])
    order = np.lexsort((dec_len, enc_b, dec_b))  # by decoder bucket, then encoder bucket
    rng = np.random.default_rng([self._seed, kept[0]["position"]])
    batches = []
    for k in rng.permutation(self._pool):  # emit the pool's batches in random order
      rows = order[k * self._batch_size:(k + 1) * self._batch_size]
      batch = pad_examples([kept[r] for r in rows], self._batch_size,
                           int(enc_b[rows].max()), int(dec_b[rows].max()))
      batch["_stats"] = _batch_stats(batch, len(rows))
      batches.append(batch)
    batches[0]["_stats"][[1, 2]] += (overlong[_LONG_PROMPT], overlong[_LONG_DECODER])
    self._batches, self._pos = batches, self._skip
    self._skip = 0

  def __next__(self) -> dict:
    if self._pos >= len(self._batches):
      self._fill()
    batch = self._batches[self._pos]
    self._pos += 1
    return batch

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
  """The train stream: yields batches, keeps `stats`, checkpoints through grain/orbax."""

  def __init__(self, parent: grain.DatasetIterator, buckets: buckets_lib.Buckets,
               include_index: bool):
    super().__init__(parent)
    self.buckets = buckets
    self.stats = PipelineStats()
    self._include_index = include_index

  def __next__(self) -> dict:
    batch = dict(next(self._parent))
    self.stats.add(batch.pop("_stats"))
    if not self._include_index:
      batch.pop("index")
    return batch

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "stats": self.stats.to_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self.stats = PipelineStats.from_state(state["stats"])


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only here: grain workers import this module and must stay light
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} / process_count={process_count}: "
                     "need 0 <= process_index < process_count")
  return process_index, process_count


def train_dataset(config: ml_collections.ConfigDict, data_dir: str, batch_size: int,
                  process_index: int | None = None, process_count: int | None = None,
                  *, include_index: bool = False) -> grain.IterDataset:
  """The infinite train stream of this process as a grain IterDataset (iterate it for batches).

  batch_size is per process. include_index adds "index" int64 [B] (record index in the split).
  """
  config_lib.validate(config)
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1")
  if config.data.bucket_pool < 1:
    raise ValueError(f"config.data.bucket_pool={config.data.bucket_pool!r} must be >= 1")
  p, n = _process(process_index, process_count)
  ds = open_dataset(data_dir)
  buckets = design_buckets(config, ds)
  d = config.data
  src = ds.source("train")
  stream = (grain.MapDataset.source(src)
            .map_with_index(_TagRecord(len(src)))  # keep the record index through the shuffle
            .seed(d.seed)
            .shuffle()  # global, reseeded per epoch by repeat
            .repeat(None)
            .random_map(DrawExample(config, ds.grammar))  # keyed by global stream position
            .map_with_index(_tag_position)
            [p::n])  # after the random map, so processes draw independently
  it = stream.to_iter_dataset(grain.ReadOptions(**_READ_OPTIONS))
  it = _PoolBatchIterDataset(it, batch_size, d.bucket_pool, buckets, d.seed, max(len(src), 1))
  if d.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=d.num_workers, per_worker_buffer_size=_WORKER_BUFFER))
  return _StatsIterDataset(it, buckets, include_index)


def train_iterator(config: ml_collections.ConfigDict, data_dir: str, batch_size: int,
                   process_index: int | None = None, process_count: int | None = None,
                   *, include_index: bool = False) -> TrainIterator:
  """iter(train_dataset(...)): has .stats, .buckets, get_state/set_state; close() when done."""
  return iter(train_dataset(config, data_dir, batch_size, process_index, process_count,
                            include_index=include_index))


# ----------------------------------------------------------------------------- evaluation

def eval_records(config: ml_collections.ConfigDict, data_dir: str) -> list[dict[str, np.ndarray]]:
  """The test split in order: {"prompt", "trace", "plan"} int32 id arrays per task."""
  del config  # the split is fully described by meta.json
  src = open_dataset(data_dir).source("test")
  return [records.decode_record(src[i]) for i in range(len(src))]


class EvalBatches:
  """The test split once, in order, no shuffle, in the run's own target format.

  Complete traces (level 0) for dualformer and complete runs, the empty trace
  for solution_only, `data.fixed_level` for fixed_level (level 3's drops are
  seeded, so every pass is the same). A loss is then comparable across runs on
  the plan tokens, and a Solution-Only run is not scored on traces it never saw.

  Global batch j holds the next batch_size * process_count examples; process p
  gets rows [p * batch_size, (p + 1) * batch_size). Shapes depend on the whole
  global batch, so all processes agree. The last batch is filled with empty
  rows (masks 0). Overlong examples are skipped and counted in `stats`.
  Iterate as often as needed; each pass yields the same batches.
  """

  def __init__(self, config: ml_collections.ConfigDict, data_dir: str, batch_size: int,
               process_index: int | None = None, process_count: int | None = None):
    config_lib.validate(config)
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    self._p, self._n = _process(process_index, process_count)
    self._batch_size = batch_size
    ds = open_dataset(data_dir)
    self.buckets = design_buckets(config, ds)
    d = config.data
    self._examples, self.stats = [], PipelineStats()
    level = dropping.eval_level(d.trace_mode, d.fixed_level)
    rng = np.random.default_rng([d.seed, level])  # level 3 only
    for i, rec in enumerate(eval_records(config, data_dir)):
      trace = dropping.drop_trace(rec["trace"], level, ds.grammar, rng, d.create_drop_rate)
      ex = encode_example(i, -1, rec["prompt"], trace, rec["plan"],
                          d.max_prompt_len, d.max_decoder_len)
      if ex["overlong"] == _LONG_PROMPT:
        self.stats.overlong_prompt += 1
      elif ex["overlong"] == _LONG_DECODER:
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
      enc_len = self.buckets.enc_width(max(ex["enc"].size for ex in group))
      dec_len = self.buckets.dec_width(max(ex["dec"].size - 1 for ex in group))
      mine = group[self._p * self._batch_size:(self._p + 1) * self._batch_size]
      batch = pad_examples(mine, self._batch_size, enc_len, dec_len)
      batch.pop("index")
      yield batch


def eval_batches(config: ml_collections.ConfigDict, data_dir: str, batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> EvalBatches:
  """The test split as padded batches in the run's format; see EvalBatches."""
  return EvalBatches(config, data_dir, batch_size, process_index, process_count)
