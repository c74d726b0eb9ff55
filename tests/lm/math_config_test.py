"""The math config's typed pieces: the modes rule (lm/math_config.py)."""

import pytest

from dualformer_jax.lm import math_config


def test_modes_are_validated():
  assert math_config.parse_modes(" slow, auto ") == ["slow", "auto"]
  for bad in ("", "slow,slow", "slow,quick"):
    with pytest.raises(ValueError, match="eval.modes"):
      math_config.parse_modes(bad)
