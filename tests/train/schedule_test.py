"""Warm-up + cosine learning-rate schedule."""

import math

import jax
import ml_collections
import numpy as np
import pytest

from dualformer_jax.train.schedule import learning_rate, make_schedule


def _lr(step, peak=1.0, warmup=10, total=110, final=0.1):
  return float(learning_rate(step, peak=peak, warmup_steps=warmup, num_steps=total,
                             final_frac=final))


def test_warmup_is_linear_from_first_step():
  assert _lr(0) == pytest.approx(0.1)
  assert _lr(4) == pytest.approx(0.5)
  assert _lr(9) == pytest.approx(1.0)


def test_cosine_from_peak_to_floor():
  assert _lr(10) == pytest.approx(1.0)
  assert _lr(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: mid point of the cosine
  assert _lr(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-6)
  assert _lr(110) == pytest.approx(0.1)
  assert _lr(10_000) == pytest.approx(0.1)
  lrs = [_lr(s) for s in range(10, 111)]
  assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_warmup_and_traced_step():
  assert _lr(0, warmup=0) == pytest.approx(1.0)
  steps = np.arange(0, 120, 7)
  traced = jax.jit(lambda s: learning_rate(s, peak=2e-3, warmup_steps=10, num_steps=110,
                                           final_frac=0.1))(steps)
  np.testing.assert_allclose(traced, [_lr(int(s), peak=2e-3) for s in steps], rtol=1e-5)


def test_make_schedule_from_config_and_errors():
  cfg = ml_collections.ConfigDict(dict(learning_rate=3e-4, warmup_steps=10, num_steps=110,
                                       final_lr_frac=0.1))
  assert float(make_schedule(cfg)(60)) == pytest.approx(_lr(60, peak=3e-4))
  cfg.final_lr_frac = 1.5
  with pytest.raises(ValueError, match="final_frac=1.5"):
    make_schedule(cfg)
