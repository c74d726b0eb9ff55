"""Entry point: generate the dataset if missing, train, evaluate, print the mode table.

  python -m dualformer_jax.main --config=configs/maze.py[:preset] --workdir=DIR \
      [--mode=all|generate|train|evaluate] [--config.x.y=value ...]

configs/sokoban.py runs the same way; configs/math.py (task.name "math") runs the
language-model step-dropping experiment of lm/finetune.py instead.

The same line runs on every host of a multi-host launch (launch/*): see
distributed.py for when jax.distributed.initialize is called. The workdir must
then be one directory all hosts share (NFS, Lustre, a gcsfuse mount).
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dualformer_jax import config as config_lib
from dualformer_jax import distributed, workdir_lock
from dualformer_jax.data import generate, records
from dualformer_jax.eval import evaluate
from dualformer_jax.train import trainer
from dualformer_jax.train.errors import CheckpointError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config file[:preset], e.g. configs/maze.py:paper_30", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for data, checkpoints, metrics, eval")
_MODE = flags.DEFINE_enum("mode", "all", ["all", "generate", "train", "evaluate"],
                          "all = generate (if missing) + train + evaluate")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "multi-host jax: auto = initialize when launched by the coordinator flags below, a SLURM "
    "step with several tasks, or on a Cloud TPU VM; on = always (jax detects the cluster); "
    "off = never")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for launches jax cannot detect")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the launch")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process, 0 .. num_processes - 1")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if "://" in workdir:
    raise app.UsageError(
        f"--workdir={workdir}: URLs are not supported (the dataset, metrics and evaluation "
        "files are written with local file calls). Mount the bucket and pass the mount path, "
        "e.g. gcsfuse BUCKET /gcs/BUCKET, then --workdir=/gcs/BUCKET/run "
        "(launch/tpu_pod.sh does this on every TPU worker)")
  if config.task.name == "math":  # configs/math.py: the language-model run (lm/)
    _run_math(config, workdir, mode)
    return
  try:
    run = config_lib.validate(config)  # the one check of the config: library code trusts it
    launch = distributed.detect(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)
  except (ValueError, distributed.DistributedError) as e:
    raise app.UsageError(str(e))
  try:
    config_lib.configure_jax(config)  # CPU device count, XLA cache: before any device use
    distributed.initialize(launch)
    _run(run, workdir, mode, multi_process=launch is not None)
  except (records.DatasetError, CheckpointError, distributed.DistributedError,
          workdir_lock.WorkdirBusy, FloatingPointError, ValueError, OSError) as e:
    # User errors (a bad tasks file, a mesh that does not fit the devices, a diverged
    # run, a busy workdir, a read-only or full disk) get one line, not a traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _run(run: config_lib.RunConfig, workdir: str, mode: str, multi_process: bool) -> None:
  if mode != "generate":  # every mesh / schedule value, before any file is written
    trainer.preflight(run, training=mode != "evaluate")
  os.makedirs(workdir, exist_ok=True)
  if mode in ("all", "generate"):
    # One writer: process 0 generates into the shared workdir while the others wait
    # (launchers generate first in a single process, so here it is usually a check).
    # A single process does not ask jax: generation must not start a TPU runtime.
    if not multi_process or jax.process_index() == 0:
      start = time.perf_counter()
      meta = generate.generate(run.data, workdir)
      print(f"dataset: {meta['counts']} tasks in {records.data_dir(workdir)} "
            f"({time.perf_counter() - start:.0f} s)")
    if multi_process:
      distributed.barrier("dualformer_jax: dataset ready")
  if mode in ("all", "train"):
    start = time.perf_counter()
    result = trainer.train(run, workdir)
    if result.interrupted:
      if jax.process_index() == 0:
        print(f"stopped by signal {result.signal_number} at step {result.step}; a checkpoint "
              "was saved: run the same command again to resume")
      sys.exit(128 + result.signal_number)
    if jax.process_index() == 0:
      print(f"training: step {result.step} reached in {time.perf_counter() - start:.0f} s")
  if mode in ("all", "evaluate"):
    start = time.perf_counter()
    evaluate.evaluate(run, workdir)
    if jax.process_index() == 0:
      print(f"evaluation: {time.perf_counter() - start:.0f} s")


def _run_math(config, workdir: str, mode: str) -> None:
  """Step dropping for language models: train one LM per drop probability, evaluate, print."""
  from dualformer_jax.lm import finetune, math_config
  if mode == "generate":
    raise app.UsageError("configs/math.py builds its data in memory: use --mode=all, train or "
                         "evaluate")
  try:
    run = math_config.validate(config)  # the one check of the config: library code trusts it
  except ValueError as e:
    raise app.UsageError(str(e))
  config_lib.configure_jax(config)
  try:
    finetune.run(run, workdir, mode)
  except (CheckpointError, FloatingPointError, ValueError,
          workdir_lock.WorkdirBusy, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt as e:
    print(e or "interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
