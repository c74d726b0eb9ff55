"""Prints training examples exactly as the train pipeline feeds them to the model.

  python -m dualformer_jax.show_data --config=configs/maze.py --workdir=/tmp/maze --num=5

One JSON line per example: {"level", "prompt", "trace" (the complete stored
trace), "decoder" (the decoder tokens, bos to eos)}, string tokens. The
examples come from the real train pipeline (trace mode, level probabilities,
seed, buckets, workers as configured; process 0 of 1, batch train.batch_size),
so this is what the first training steps see. A missing dataset is generated;
one generated from another config is refused (data.generate).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from dualformer_jax import config as config_lib
from dualformer_jax import workdir_lock
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.generate import generate
from dualformer_jax.data.train_stream import train_iterator


def _needs_generate(data_dir: str) -> bool:
  """True unless a complete dataset is there that generate() did not write (hand-made).

  generate() returns at once for a complete dataset of the same config and
  refuses one of another config, so a stale workdir is an error, not a surprise.
  """
  if not os.path.exists(os.path.join(data_dir, records.META)):
    return True
  meta = records.read_meta(data_dir)
  return "generator" in meta or not dataset_lib.is_complete(meta)


def draw_examples(data: DataConfig, batch_size: int, workdir: str,
                  num: int) -> list[dict]:
  """The first `num` training examples of the pipeline (batches of `batch_size`), as string
  tokens."""
  if num < 1:
    raise ValueError(f"num={num!r} must be >= 1")
  data_dir = records.data_dir(workdir)
  if _needs_generate(data_dir):
    generate(data, workdir)
  stored = dataset_lib.open_dataset(data_dir)
  source = stored.source("train")
  it = train_iterator(data, stored, batch_size, 0, 1, include_index=True)
  out = []
  try:
    while len(out) < num:
      batch = next(it)
      for r in range(min(batch_size, num - len(out))):
        n = int((batch["trace_mask"][r] + batch["plan_mask"][r]).sum())  # decoder rows = targets
        decoder = [*batch["dec_ids"][r, :n], batch["targets"][r, n - 1]]  # bos ... eos
        rec = records.decode_record(source[int(batch["index"][r])])
        out.append({"level": int(batch["level"][r]),
                    "prompt": stored.vocab.decode(rec["prompt"]),
                    "trace": stored.vocab.decode(rec["trace"]),
                    "decoder": stored.vocab.decode(decoder)})
  finally:
    it.close()
  return out


def define_flags() -> None:
  """--config, --workdir, --num. Called under __main__ only: main.py defines --config
  too, and one process (a test run) may import both modules."""
  config_flags.DEFINE_config_file("config", None, "config file[:preset]", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory; the dataset is in <workdir>/data")
  flags.DEFINE_integer("num", 5, "number of examples to print")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    run = config_lib.validate(f.config)  # the entry point: checked once, here
    examples = draw_examples(run.data, run.train.batch_size, f.workdir, f.num)
  except (records.DatasetError, workdir_lock.WorkdirBusy, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)  # a user's dataset problem: one line
    sys.exit(1)
  for example in examples:
    print(json.dumps(example))


if __name__ == "__main__":
  define_flags()
  app.run(main)
