"""The dataset on disk: ArrayRecord shards of token ids plus meta.json.

Layout under `<workdir>/data/`:
  meta.json                               generator config, seed, counts, vocabulary, lengths
  train-00000-of-00004.arrayrecord ...    one JSON record per task
  test-00000-of-00001.arrayrecord ...
  valid-00000-of-00001.arrayrecord ...    only when generated with data.num_valid > 0
A shard is written to a temporary name and renamed when complete, so a shard
file that exists is whole and an interrupted one is simply redone.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np

from dualformer_jax import io_utils

SPLITS = ("train", "test")  # every dataset has these
VALID = "valid"  # optional: held-out tasks of the training distribution, for model selection
ALL_SPLITS = (*SPLITS, VALID)  # the order also fixes each split's generation seed
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
  n = 0
  try:
    writer = ArrayRecordWriter(tmp, "group_size:1")  # group_size 1: fast random access
    for rec in records:
      writer.write(rec)
      n += 1
    writer.close()
  except RuntimeError as e:  # array_record's word for a failed write (a full disk, EIO)
    if os.path.lexists(tmp):
      os.remove(tmp)
    raise OSError(f"cannot write dataset shard {path} ({_first_line(e)})") from None
  os.replace(tmp, path)
  return n


def read_shards(paths: list[str]):
  """A random-access source over shards; DatasetError naming the shard that is missing or
  unreadable (generation rewrites a deleted shard, byte for byte)."""
  import grain
  for p in paths:
    if not os.path.exists(p):
      raise DatasetError(f"missing dataset shard {p}; run with --mode=generate to rewrite it")
  for p in paths if len(paths) > 1 else ():  # one at a time, to name the bad one
    try:
      grain.sources.ArrayRecordDataSource([p])
    except Exception as e:  # array_record raises plain RuntimeErrors on bad files
      raise DatasetError(f"corrupt dataset shard {p} ({_first_line(e)}); delete it and run "
                         "with --mode=generate to rewrite it") from None
  try:
    return grain.sources.ArrayRecordDataSource(paths)
  except Exception as e:
    where = paths[0] if len(paths) == 1 else f"{len(paths)} shards in {os.path.dirname(paths[0])}"
    raise DatasetError(f"cannot read dataset shard {where} ({_first_line(e)}); delete it and "
                       "run with --mode=generate to rewrite it") from None


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300] if lines else 'no details'}"


def write_meta(directory: str, meta: dict) -> None:
  io_utils.write_json(os.path.join(directory, META), meta, indent=1, sort_keys=True)


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, META)
  if not os.path.exists(path):
    raise DatasetError(f"no dataset at {directory} ({META} missing); run with --mode=generate")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise DatasetError(f"corrupt {path}: {e}") from None
