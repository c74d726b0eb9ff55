"""Finished runs' results kept as small JSON files (for git), so that hours of training
survive the machine they ran on.

The tuning (tune.record_dir) and the sweep (sweep.record_dir) write one file per finished
run: its results, the CPU it trained on and the config it ran with. A later tuning or
sweep, on any machine, takes the results it finds instead of training again, and refuses
a file recorded with another config before any work, naming the fields that differ.
Only fields that change what a run computes are compared (not where it writes, how fast
it runs, or which other runs the grid or sweep holds), so a grid or sweep can grow.
"""

from __future__ import annotations

import json
import os
import platform

import ml_collections

from dualformer_jax import io_utils
from dualformer_jax.train.checkpoint import field_diffs

# Fields that say where or how fast a run goes, or which other runs its grid or sweep
# holds: not what this run computes. (bootstrap.* shapes only the bootstrap rounds, which
# the sweep records with those settings under another key.)
IGNORED = ("compilation_cache_dir", "data.num_workers", "data.gen_workers",
           "tune.record_dir", "tune.models", "tune.learning_rates", "tune.num_steps",
           "sweep.record_dir", "sweep.models", "sweep.num_train", "sweep.seeds",
           "sweep.tuned", "bootstrap")


def fingerprint(run_config: ml_collections.ConfigDict | dict) -> dict:
  """The run's config as plain JSON, without the IGNORED fields."""
  d = run_config if isinstance(run_config, dict) else run_config.to_dict()
  d = json.loads(json.dumps(d, default=list))
  for field in IGNORED:
    group, _, key = field.rpartition(".")
    (d.get(group, {}) if group else d).pop(key, None)
  return d


def machine() -> str:
  """The CPU a run trained on (results from other machines differ in rounding, as seeds do)."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0]} x {len(names)}" if names else (platform.processor() or "unknown")


def load(path: str, run_config: ml_collections.ConfigDict | dict, what: str) -> dict | None:
  """The result kept in `path` (None: no file, or no path); ValueError if it ran with
  another config. `what` names the file in errors ("tuning record")."""
  if not path or not os.path.exists(path):
    return None
  kept = io_utils.read_json(path, what)
  if not isinstance(kept, dict):
    raise ValueError(f"{what} {path} holds no JSON object; delete it")
  got, want = fingerprint(kept.pop("config", None) or {}), fingerprint(run_config)
  if got != want:
    fields = [f for f, _, _ in field_diffs(got, want)]
    raise ValueError(f"{what} {path}: recorded with another config ({', '.join(fields[:5])} "
                     "differ); delete it or choose another record_dir")
  return kept


def save(path: str, result: dict, run_config: ml_collections.ConfigDict | dict) -> None:
  """Keeps `result` (which names its `machine()`) with the run's config in `path`."""
  io_utils.write_json(path, {**result, "config": fingerprint(run_config)}, indent=1,
                      default=list)
