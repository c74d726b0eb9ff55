"""config: the typed pieces and validation, and configure_jax (the process-wide settings a run
applies before touching a device)."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from configs import maze as maze_configs
from configs import sokoban as sokoban_configs
from dualformer_jax import config as config_lib
from dualformer_jax.data.data_config import DataConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import sys; from dualformer_jax import config as c; cfg = c.base_config(); "
         "cfg.mesh.cpu_devices = int(sys.argv[1]); cfg.compilation_cache_dir = ''; "
         "c.configure_jax(cfg); import jax; print(jax.device_count())")


def _device_count(cpu_devices: int, xla_flags: str = "") -> int:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  out = subprocess.run([sys.executable, "-c", PROBE, str(cpu_devices)], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)
  return int(out.stdout.strip().splitlines()[-1])


def test_cpu_devices_sets_the_device_count_of_a_fresh_process():
  assert _device_count(3) == 3


def test_an_explicit_xla_device_count_wins():
  assert _device_count(3, "--xla_force_host_platform_device_count=4") == 4


def test_cpu_devices_must_be_positive():
  c = config_lib.base_config()
  c.mesh.cpu_devices = 0
  with pytest.raises(ValueError, match="mesh.cpu_devices"):
    config_lib.validate(c)


def test_the_eval_split_is_test_or_valid():
  c = config_lib.base_config()
  for split in ("test", "valid"):
    c.eval.split = split
    config_lib.validate(c)
  c.eval.split = "train"
  with pytest.raises(ValueError, match="config.eval.split='train': expected test or valid"):
    config_lib.validate(c)


@pytest.mark.parametrize("get_config", [maze_configs.get_config, sokoban_configs.get_config])
def test_the_data_config_holds_every_task_and_data_field(get_config):
  c = get_config("default")
  data = DataConfig.from_config(c)
  assert dataclasses.asdict(data.task) == c.task.to_dict()  # the dataset fingerprint's "task"
  fields = {f.name for f in dataclasses.fields(data)} - {"task"}
  assert fields == set(c.data) and all(getattr(data, k) == c.data[k] for k in fields)
  assert config_lib.validate(c).data == data


def test_the_typed_pieces_are_frozen_and_checked_when_built():
  c = config_lib.base_config()
  data = DataConfig.from_config(c)
  with pytest.raises(dataclasses.FrozenInstanceError):
    data.seed = 1
  with pytest.raises(ValueError, match="config.task.size=2: must be >= 3"):
    dataclasses.replace(data.task, size=2)
  with pytest.raises(ValueError, match="config.task.name='chess': expected one of"):
    dataclasses.replace(data.task, name="chess")
  with pytest.raises(ValueError, match="config.data.bucket_pool=0: must be >= 1"):
    dataclasses.replace(data, bucket_pool=0)
  c.data.level_probs = (0.5, 0.5, 0.5, 0.0, 0.0)
  with pytest.raises(ValueError, match="config.data.level_probs="):
    config_lib.validate(c)


@pytest.mark.parametrize("get_config", [maze_configs.get_config, sokoban_configs.get_config])
def test_the_run_config_holds_every_train_and_eval_field(get_config):
  c = get_config("default")
  run = config_lib.validate(c)
  assert run.config is c and run.data == DataConfig.from_config(c)
  assert dataclasses.asdict(run.train) == c.train.to_dict()
  assert dataclasses.asdict(run.eval) == c.eval.to_dict()
  assert run.eval.mode_list == ("fast", "slow", "auto")


@pytest.mark.parametrize("group, field, value, message", [
    ("train", "num_steps", 0, "config.train.num_steps=0: must be >= 1"),
    ("train", "init_step", -2, "config.train.init_step=-2: must be a step >= 0"),
    ("train", "loss_norm", "batch", "config.train.loss_norm='batch': expected one of"),
    ("eval", "modes", "fast,quick", "config.eval.modes='fast,quick': expected a comma"),
    ("eval", "modes", ",", "config.eval.modes=',': expected a comma"),
    ("eval", "temperature", 0.0, "config.eval.temperature=0.0: must be > 0"),
    ("eval", "top_k", -1, "config.eval.top_k=-1: must be >= 0"),
    ("eval", "dtype", "float16", "config.eval.dtype='float16': expected ''"),
])
def test_the_train_and_eval_pieces_check_their_fields(group, field, value, message):
  c = config_lib.base_config()
  c[group][field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.validate(c)
  run = config_lib.validate(config_lib.base_config())
  with pytest.raises(ValueError, match=re.escape(message)):  # a changed piece is checked too
    dataclasses.replace(getattr(run, group), **{field: value})
  with pytest.raises(dataclasses.FrozenInstanceError):
    setattr(getattr(run, group), field, value)
