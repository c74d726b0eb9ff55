"""Train-pipeline speed and padding on 10x10 maze data.

  python benchmarks/pipeline_bench.py [--num_train=4000] [--batches=300] [--workdir=DIR]
                                      [--workers=1,2] [--gen_workers=0]

Generates the dataset with data/generate.py (into a temporary directory unless
--workdir is given), then measures examples/s of the full train pipeline
(read, shuffle, drop, bucket, pad, batch) in-process and with each --workers
count of grain worker processes, after a warm-up that absorbs worker start-up.
Padding efficiency = real tokens / padded tokens of enc_ids + dec_ids, with the
designed buckets and with one fixed shape (the data's longest prompt/decoder row,
i.e. num_buckets=1). Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import maze  # noqa: E402
from dualformer_jax import config as config_lib  # noqa: E402
from dualformer_jax.data import records  # noqa: E402
from dualformer_jax.data.dataset import open_dataset  # noqa: E402
from dualformer_jax.data.generate import generate  # noqa: E402
from dualformer_jax.data.train_stream import train_iterator  # noqa: E402

_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "training tasks to generate")
_BATCHES = flags.DEFINE_integer("batches", 300, "timed batches per setting")
_WORKDIR = flags.DEFINE_string("workdir", None, "reuse/keep the dataset here (default: temp)")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"],
                             "grain worker counts to time besides in-process (empty: none)")
_GEN_WORKERS = flags.DEFINE_integer("gen_workers", 0, "generation processes (0: all cores)")


def bench_config(num_train: int, num_workers: int,
                 num_buckets: int | None = None) -> config_lib.RunConfig:
  """The maze default with these data settings, checked (the benchmark's entry)."""
  c = maze.get_config()
  c.task.size = 10
  c.data.num_train = num_train
  c.data.num_test = 200
  c.data.max_prompt_len = 256
  c.data.max_decoder_len = 1024
  c.data.num_workers = num_workers
  if num_buckets is not None:
    c.data.num_buckets = num_buckets
  return config_lib.validate(c)


def run(config: config_lib.RunConfig, data_dir: str, batches: int) -> dict:
  """Times `batches` batches after a warm-up of one pool; returns rate, padding, shapes."""
  batch_size = config.train.batch_size
  it = train_iterator(config.data, open_dataset(data_dir), batch_size, 0, 1)
  for _ in range(config.data.bucket_pool):  # warm-up: worker start-up, first pools
    next(it)
  before = it.stats.to_state()
  shapes = set()
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    shapes.add((batch["enc_ids"].shape[1], batch["dec_ids"].shape[1]))
  seconds = time.perf_counter() - start
  s = it.stats
  real, padded = s.real_tokens - before["real_tokens"], s.padded_tokens - before["padded_tokens"]
  max_shape = batch_size * (config.data.max_prompt_len + config.data.max_decoder_len) * batches
  it.close()
  return {"examples_per_s": batches * batch_size / seconds, "padding_efficiency": real / padded,
          "padding_efficiency_config_max": real / max_shape, "shapes_seen": len(shapes),
          "buckets": {"enc": it.buckets.enc, "dec": it.buckets.dec},
          "num_shapes": it.buckets.num_shapes, "overlong": s.overlong}


def main(argv):
  del argv
  if _WORKDIR.value:
    bench(_WORKDIR.value)
  else:
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as workdir:
      bench(workdir)


def _rate_key(workers: int) -> str:
  """The JSON key of a rate (the names the README's figures were reported under)."""
  if workers == 0:
    return "examples_per_s_in_process"
  return f"examples_per_s_{workers}_worker" + ("s" if workers > 1 else "")


def bench(workdir: str) -> None:
  counts = [int(w) for w in _WORKERS.value]
  if any(w < 1 for w in counts):
    raise SystemExit(f"--workers={','.join(_WORKERS.value)}: expected counts >= 1 "
                     "(in-process is always timed)")
  config = bench_config(_NUM_TRAIN.value, 0)
  t = time.perf_counter()
  meta = generate(config.data, workdir, workers=_GEN_WORKERS.value or None)
  print(f"dataset: {meta['counts']} in {workdir} ({time.perf_counter() - t:.1f}s)", flush=True)
  data_dir = records.data_dir(workdir)
  results = {}
  for workers in [0, *counts]:
    results[workers] = run(bench_config(_NUM_TRAIN.value, workers), data_dir, _BATCHES.value)
    print(f"workers={workers}: {json.dumps(results[workers])}", flush=True)
  flat = run(bench_config(_NUM_TRAIN.value, 0, num_buckets=1), data_dir, _BATCHES.value)
  print(f"one shape: {json.dumps(flat)}", flush=True)
  print(json.dumps({
      **{_rate_key(w): round(r["examples_per_s"], 1) for w, r in sorted(results.items())},
      "padding_efficiency": round(results[0]["padding_efficiency"], 4),
      "padding_efficiency_no_buckets": round(flat["padding_efficiency"], 4),
      "padding_efficiency_pad_to_config_max": round(results[0]["padding_efficiency_config_max"], 4),
      "num_shapes": results[0]["num_shapes"],
      "shapes_seen": results[0]["shapes_seen"],
  }))


if __name__ == "__main__":
  app.run(main)
