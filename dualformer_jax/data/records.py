"""The dataset on disk: ArrayRecord shards of token ids plus meta.json.

Layout under `<workdir>/data/`:
  meta.json                               generator config, seed, counts, vocabulary, lengths
  train-00000-of-00004.arrayrecord ...    one JSON record per task
  test-00000-of-00001.arrayrecord ...
A shard is written to a temporary name and renamed when complete, so a shard
file that exists is whole and an interrupted one is simply redone.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np

SPLITS = ("train", "test")
META = "meta.json"


class DatasetError(RuntimeError):
  """Missing, corrupt or mismatched dataset files."""


def data_dir(workdir: str) -> str:
  return os.path.join(workdir, "data")


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.arrayrecord"


def shard_paths(directory: str, split: str, count: int) -> list[str]:
  return [os.path.join(directory, shard_name(split, i, count)) for i in range(count)]


def encode_record(prompt: np.ndarray, trace: np.ndarray, plan: np.ndarray) -> bytes:
  """Token ids of one task -> record bytes (compact JSON: readable, robust)."""
  return json.dumps({"prompt": prompt.tolist(), "trace": trace.tolist(), "plan": plan.tolist()},
                    separators=(",", ":")).encode()


def decode_record(raw: bytes) -> dict[str, np.ndarray]:
  """Record bytes -> {"prompt", "trace", "plan"} int32 id arrays."""
  try:
    obj = json.loads(raw)
    return {k: np.asarray(obj[k], dtype=np.int32) for k in ("prompt", "trace", "plan")}
  except (ValueError, KeyError, TypeError) as e:
    raise DatasetError(f"corrupt dataset record ({type(e).__name__}: {e}); "
                       "delete the data directory to regenerate it") from None


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes records atomically (temp file + rename); returns their count."""
  from array_record.python.array_record_module import ArrayRecordWriter
  tmp = path + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")  # group_size 1: fast random access
  n = 0
  for rec in records:
    writer.write(rec)
    n += 1
  writer.close()
  os.replace(tmp, path)
  return n


def read_shards(paths: list[str]):
  """A random-access source over shards; clear error when one is missing or unreadable."""
  import grain
  for p in paths:
    if not os.path.exists(p):
      raise DatasetError(f"missing dataset shard {p}; run with --mode=generate")
  try:
    return grain.sources.ArrayRecordDataSource(paths)
  except Exception as e:  # array_record raises plain RuntimeErrors on bad files
    raise DatasetError(f"cannot read dataset shards {paths}: {e}") from None


def write_meta(directory: str, meta: dict) -> None:
  tmp = os.path.join(directory, META + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(directory, META))


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, META)
  if not os.path.exists(path):
    raise DatasetError(f"no dataset at {directory} ({META} missing); run with --mode=generate")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise DatasetError(f"corrupt {path}: {e}") from None
