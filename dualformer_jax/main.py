"""Entry point: generate the dataset if missing, train, evaluate, print the mode table.

  python -m dualformer_jax.main --config=configs/maze.py[:preset] --workdir=DIR \
      [--mode=all|generate|train|evaluate] [--config.x.y=value ...]
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config file[:preset], e.g. configs/maze.py:paper_30", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for data, checkpoints, metrics, eval")
_MODE = flags.DEFINE_enum("mode", "all", ["all", "generate", "train", "evaluate"],
                          "all = generate (if missing) + train + evaluate")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
  from dualformer_jax import config as config_lib
  from dualformer_jax.data import records
  from dualformer_jax.train.checkpoint import CheckpointError

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise app.UsageError(str(e))
  try:
    _run(config, workdir, mode)
  except (records.DatasetError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _run(config, workdir: str, mode: str) -> None:
  import jax
  from dualformer_jax.data import generate, records
  os.makedirs(workdir, exist_ok=True)
  if config.compilation_cache_dir:  # re-runs and resumes skip XLA compilation
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if mode in ("all", "generate"):
    meta = generate.generate(config, workdir)
    print(f"dataset: {meta['counts']} tasks in {records.data_dir(workdir)}")
  if mode in ("all", "train"):
    from dualformer_jax.train import trainer
    result = trainer.train(config, workdir)
    if result.interrupted:
      print(f"stopped by signal {result.signal_number} at step {result.step}; a checkpoint "
            "was saved: run the same command again to resume")
      sys.exit(128 + result.signal_number)
  if mode in ("all", "evaluate"):
    from dualformer_jax.eval import evaluate
    evaluate.evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
