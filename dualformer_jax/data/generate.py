"""Parallel, seeded, resumable dataset generation.

Each (split, shard) is one job with its own seed, so the output depends only
on the config (seed, shard count), never on how many processes ran it. A
layout (maze walls / Sokoban level) is owned by exactly one (split, shard),
decided by a content hash (hashlib, not the salted builtin hash): splits never
share a layout and shards never share a task, without any coordination.
Splits: train, test, and valid when data.num_valid > 0 (held-out layouts of the
training distribution, for model selection); with num_valid = 0 the train and
test splits are those of a dataset generated before valid existed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from dualformer_jax import workdir_lock
from dualformer_jax.data import records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.tasks import make_task
from dualformer_jax.tasks.base import Unsolvable

_HASH_BUCKETS = 1_000_000
# A shard gives up when this many layouts in a row gave it no new task: the
# task space is too small for the asked counts (e.g. a 3x3 maze).
_MAX_BARREN_DRAWS = 200_000


def generator_fingerprint(data: DataConfig) -> dict:
  """Everything that determines the dataset's content: a dataset is reused only if this matches."""
  fingerprint = {
      "task": dataclasses.asdict(data.task),
      "num_train": data.num_train,
      "num_test": data.num_test,
      "seed": data.seed,
      "num_shards": data.num_shards,
      "astar": data.astar,
  }
  if data.num_valid:  # absent when 0: datasets made before valid existed still match
    fingerprint["num_valid"] = data.num_valid
  return fingerprint


def split_counts(data: DataConfig) -> dict[str, int]:
  """Tasks per split: train, test, and valid when data.num_valid > 0."""
  counts = {"train": data.num_train, "test": data.num_test}
  if data.num_valid:
    counts[records.VALID] = data.num_valid
  return counts


def split_shards(data: DataConfig) -> dict[str, int]:
  return {s: min(data.num_shards, n) for s, n in split_counts(data).items()}


def _owner(layout_key: str, fracs: dict[str, float], shards: dict[str, int]) -> tuple[str, int]:
  """(split, shard) that owns a layout, from a content hash: the first buckets go to test,
  the next to valid, the rest to train (so valid = 0 leaves the old train/test owners)."""
  h = int.from_bytes(hashlib.sha256(layout_key.encode()).digest()[:8], "little")
  bucket = h % _HASH_BUCKETS
  if bucket < fracs["test"] * _HASH_BUCKETS:
    split = "test"
  elif bucket < (fracs["test"] + fracs.get(records.VALID, 0.0)) * _HASH_BUCKETS:
    split = records.VALID
  else:
    split = "train"
  return split, (h // _HASH_BUCKETS) % shards[split]


def _spec_id(task, spec) -> str:
  return json.dumps(task.spec_to_json(spec), sort_keys=True)


def _die_with_parent(parent_pid: int) -> None:
  """Worker initializer: exit when the generating process dies (kill -9 or SIGTERM),
  instead of writing shards for nobody. The kernel's parent-death signal acts at
  once on Linux; a watchdog thread covers other systems (and the race before prctl)."""
  if sys.platform.startswith("linux"):
    try:
      import ctypes
      pr_set_pdeathsig = 1
      ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
      pass

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _make_shard(job: dict) -> tuple[str, int]:
  """Worker: generates and writes one shard. Top-level so spawned workers can import it."""
  data = job["data"]
  task = make_task(data.task)
  vocab = Vocab(task.vocabulary())
  split, index, quota = job["split"], job["index"], job["quota"]
  shards = split_shards(data)
  counts = split_counts(data)
  fracs = {s: n / sum(counts.values()) for s, n in counts.items() if s != "train"}
  rng = np.random.default_rng([data.seed, records.ALL_SPLITS.index(split), index])
  nondeterministic = data.astar == "nondeterministic"
  seen: set[str] = set()
  out: list[bytes] = []

  def owned(layout_key: str) -> bool:
    return _owner(layout_key, fracs, shards) == (split, index)

  barren = 0
  while len(out) < quota:
    barren += 1
    if barren > _MAX_BARREN_DRAWS:
      raise records.DatasetError(
          f"{split} shard {index}: found only {len(out)} of {quota} distinct tasks after "
          f"{_MAX_BARREN_DRAWS} draws without a new one; the task space of this config is too "
          "small for data.num_train/num_test/num_valid")
    group = task.sample_group(rng, keep=owned)
    for spec in group:
      sid = _spec_id(task, spec)
      if sid in seen:
        continue
      seen.add(sid)
      seed = int(rng.integers(1 << 31)) if nondeterministic else None
      try:
        toks = task.solve_tokens(spec, seed)
      except Unsolvable:
        continue
      out.append(records.encode_record(
          vocab.encode(toks.prompt), vocab.encode(toks.trace), vocab.encode(toks.plan)))
      barren = 0
      if len(out) == quota:
        break
  records.write_shard(job["path"], out)
  return split, len(out)


def length_stats(paths: list[str]) -> dict:
  """min / mean / max / percentiles of prompt, trace and plan lengths over some shards."""
  lens = {"prompt": [], "trace": [], "plan": []}
  source = records.read_shards(paths)
  for i in range(len(source)):
    rec = records.decode_record(source[i])
    for k in lens:
      lens[k].append(len(rec[k]))
  stats = {}
  for k, v in lens.items():
    a = np.asarray(v)
    stats[k] = {"min": int(a.min()), "mean": float(a.mean()), "max": int(a.max()),
                "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                "p99": float(np.percentile(a, 99))}
  return stats


def check_dataset_config(meta: dict, data: DataConfig, directory: str) -> None:
  """DatasetError when the dataset of `meta` was generated from another task or data config:
  a run must not train or score on data of another grid size, seed or split."""
  if "generator" in meta:  # a hand-made dataset has no record to compare
    _check_compatible(meta, generator_fingerprint(data), directory, "another --workdir, or "
                      "the config it was generated with")


def _check_compatible(meta: dict, fingerprint: dict, directory: str,
                      advice: str = "another --workdir or delete that directory") -> None:
  old = meta.get("generator")
  if old == fingerprint:
    return
  diffs = []
  for key in sorted(set(old or {}) | set(fingerprint)):
    a, b = (old or {}).get(key), fingerprint.get(key)
    if a != b:
      if isinstance(a, dict) and isinstance(b, dict):
        diffs += [f"task.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                  if a.get(k) != b.get(k)]
      else:
        diffs.append(f"{key}: {a!r} -> {b!r}")
  raise records.DatasetError(
      f"the dataset in {directory} was generated from a different config ({'; '.join(diffs)}); "
      f"use {advice}")


def _any_shard(directory: str, meta: dict) -> bool:
  """Whether a shard file of `meta`'s layout exists (some generation work would be lost)."""
  shards = meta.get("num_shards")
  if not isinstance(shards, dict):
    return True  # unknown layout: keep it
  return any(os.path.exists(p) for split, n in shards.items()
             for p in records.shard_paths(directory, split, n))


def generate(data: DataConfig, workdir: str, workers: int | None = None) -> dict:
  """Writes (or completes) the dataset of `data` under <workdir>/data; returns meta.json's content.

  Holds the workdir's lock (workdir_lock.WorkdirBusy when another run has it).
  """
  with workdir_lock.hold(workdir, "generation"):
    return _generate(data, workdir, workers)


def _generate(data: DataConfig, workdir: str, workers: int | None) -> dict:
  directory = records.data_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  fingerprint = generator_fingerprint(data)
  meta_path = os.path.join(directory, records.META)
  task = make_task(data.task)
  try:  # a trial draw: a task config that cannot draw fails before the directory is claimed
    task.sample_group(np.random.default_rng(0))
  except ValueError as e:
    raise ValueError(f"config.task: {data.task.name} tasks cannot be generated "
                     f"({e})") from None
  if os.path.exists(meta_path):
    meta = records.read_meta(directory)
    if meta.get("status") != "complete" and not _any_shard(directory, meta):
      print(f"note: {directory} holds an unfinished dataset with no shard written; starting "
            "it again with this config", flush=True)
    else:
      _check_compatible(meta, fingerprint, directory)
    if meta.get("status") == "complete" and all(
        os.path.exists(p) for split, n in meta.get("num_shards", {}).items()
        for p in records.shard_paths(directory, split, n)):
      return meta
  vocab = Vocab(task.vocabulary())
  shards = split_shards(data)
  # Claim the directory first, so a second run with another config is refused.
  records.write_meta(directory, {"generator": fingerprint, "status": "incomplete",
                                 "vocab": vocab.to_list(), "num_shards": shards})
  counts = split_counts(data)
  jobs, done = [], 0
  for split, n in counts.items():
    for i, path in enumerate(records.shard_paths(directory, split, shards[split])):
      quota = n // shards[split] + (i < n % shards[split])
      if os.path.exists(path):
        done += quota
        continue
      jobs.append({"data": data, "split": split, "index": i,
                   "quota": quota, "path": path})
  workers = workers or data.gen_workers or os.cpu_count() or 1
  with tqdm(total=sum(counts.values()), initial=done, desc="generate", unit="task",
            disable=None) as bar:
    if workers == 1 or len(jobs) <= 1:
      for job in jobs:
        bar.update(_make_shard(job)[1])
    elif jobs:
      ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold jax threads
      with concurrent.futures.ProcessPoolExecutor(
          min(workers, len(jobs)), mp_context=ctx, initializer=_die_with_parent,
          initargs=(os.getpid(),)) as pool:
        for fut in concurrent.futures.as_completed([pool.submit(_make_shard, j) for j in jobs]):
          bar.update(fut.result()[1])
  lengths = {s: length_stats(records.shard_paths(directory, s, shards[s])) for s in counts}
  meta = {"generator": fingerprint, "status": "complete", "vocab": vocab.to_list(),
          "num_shards": shards, "counts": counts, "lengths": lengths}
  records.write_meta(directory, meta)
  return meta
