"""config.configure_jax: the process-wide settings a run applies before touching a device."""

import os
import subprocess
import sys

import pytest

from dualformer_jax import config as config_lib

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
