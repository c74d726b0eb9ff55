"""A stored dataset: meta.json checked once, its vocabulary and trace grammar, its splits.

Open it once per run (open_dataset) and hand the StoredDataset to the bucket
design, the train stream and the eval batches. `check_complete` is the one rule
for "is this dataset finished?": generation writes status=incomplete first and
status=complete last, so a missing status is a dataset this code did not finish.
A run may train on the first `train_tasks` tasks of the train split only (the
nested subsets of a data-efficiency sweep share one dataset, hence one valid
and one test split).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dualformer_jax.data import dropping, records
from dualformer_jax.data.vocab import Vocab


def is_complete(meta: dict) -> bool:
  """True when generation finished writing the dataset meta.json describes."""
  return meta.get("status") == "complete"


def check_complete(meta: dict, directory: str) -> None:
  """DatasetError unless the dataset in `directory` is complete."""
  if not is_complete(meta):
    raise records.DatasetError(f"dataset in {directory} is incomplete (status="
                               f"{meta.get('status')!r}); run --mode=generate to finish it")


class _First:
  """The first n records of a random-access source (grain reads it like the source)."""

  def __init__(self, source, n: int):
    self._source, self._n = source, n

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int):
    if not 0 <= index < self._n:
      raise IndexError(f"record {index} of a {self._n}-record subset")
    return self._source[index]


@dataclasses.dataclass
class StoredDataset:
  """meta.json, checked, plus what the pipelines derive from it."""
  directory: str
  meta: dict
  vocab: Vocab
  grammar: dropping.TraceGrammar
  train_tasks: int = 0  # > 0: the train split is its first train_tasks tasks

  def has_split(self, split: str) -> bool:
    return isinstance(self.meta["counts"].get(split), int) and split in self.meta["num_shards"]

  def paths(self, split: str) -> list[str]:
    if not self.has_split(split):
      raise records.DatasetError(
          f"the dataset in {self.directory} has no {split} split"
          + (" (generate it with data.num_valid > 0)" if split == records.VALID else ""))
    return records.shard_paths(self.directory, split, self.meta["num_shards"][split])

  def source(self, split: str):
    """grain random-access source over a split; DatasetError when it does not match meta."""
    src = records.read_shards(self.paths(split))
    if len(src) != self.meta["counts"][split]:
      raise records.DatasetError(f"{self.directory}: {split} shards hold {len(src)} records, "
                                 f"meta.json says {self.meta['counts'][split]}")
    if split == "train" and self.train_tasks:
      return _First(src, self.train_tasks)
    return src

  def records(self, split: str) -> list[dict[str, np.ndarray]]:
    """A split in order: {"prompt", "trace", "plan"} int32 id arrays per task."""
    src = self.source(split)
    return [records.decode_record(src[i]) for i in range(len(src))]


def open_dataset(data_dir: str, train_tasks: int = 0) -> StoredDataset:
  """Reads and checks meta.json; DatasetError names what is missing or wrong.

  train_tasks > 0 keeps the first train_tasks tasks of the train split (config.data.train_tasks).
  """
  meta = records.read_meta(data_dir)
  check_complete(meta, data_dir)
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
  if not 0 <= train_tasks <= meta["counts"]["train"]:
    raise records.DatasetError(f"data.train_tasks={train_tasks}: the dataset in {data_dir} has "
                               f"{meta['counts']['train']} train tasks")
  return StoredDataset(data_dir, meta, vocab, grammar, train_tasks)
