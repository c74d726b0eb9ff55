"""The math config's typed pieces: the modes rule (lm/math_config.py)."""

import pytest

from dualformer_jax.lm import math_config


def test_modes_are_validated():
  assert math_config.parse_modes(" slow, auto ") == ["slow", "auto"]
  for bad in ("", "slow,slow", "slow,quick"):
    with pytest.raises(ValueError, match="eval.modes"):
      math_config.parse_modes(bad)


def test_cpu_devices_must_be_positive():
  from configs import math as math_configs
  c = math_configs.get_config()
  c.mesh.cpu_devices = 0
  with pytest.raises(ValueError, match=r"config.mesh.cpu_devices=0: must be >= 1"):
    math_config.validate(c)
