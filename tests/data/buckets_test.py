"""Bucket widths: the exact padding DP and the split of the shape budget."""

import numpy as np
import pytest

from dualformer_jax.data import buckets


def test_optimal_boundaries_exact():
  lengths = np.array([8] * 10 + [30] * 5 + [64] * 10)
  out = buckets.optimal_boundaries(lengths, np.ones(lengths.size), 4, 64)
  assert out[0] == (10 * 56 + 5 * 34, (64,))
  assert out[1] == (5 * 34, (8, 64))  # cheaper than (32, 64): 10 * 24 + 5 * 2
  assert out[2] == (5 * 2, (8, 32, 64))
  assert out[3] == out[2]  # a 4th width cannot help: it is not used


def test_optimal_boundaries_weights_and_unaligned_top():
  lengths = np.array([10, 20, 50])
  # Heavy 20s pull a width to 24; the top stays the unaligned 50.
  out = buckets.optimal_boundaries(lengths, np.array([1.0, 100.0, 1.0]), 2, 50)
  assert out[1][1] == (24, 50)
  assert out[1][0] == 14 + 100 * 4 + 0


def test_optimal_boundaries_matches_brute_force():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 120, 300)
  weights = rng.random(300)
  cands = sorted(set(-(-lengths // 8) * 8) | {120})

  def padding(widths):
    w = np.array(widths)
    return float(np.sum(weights * (w[np.searchsorted(w, lengths)] - lengths)))

  best = min(padding((a, b, 120)) for a in cands for b in cands if a < b < 120)
  cost, widths = buckets.optimal_boundaries(lengths, weights, 3, 120)[2]
  assert np.isclose(cost, best) and np.isclose(padding(widths), best)


def test_choose_buckets_spends_the_budget_on_the_spread_side():
  rng = np.random.default_rng(1)
  enc = rng.integers(100, 110, 500)  # narrow
  dec = rng.integers(10, 1000, 500)  # wide
  b = buckets.choose_buckets(enc, dec, np.ones(500), 3, 112, 1000, 128, 1024)
  assert b.num_shapes <= 9 and len(b.dec) > len(b.enc)
  assert b.enc[-1] == 112 and b.dec[-1] == 1000
  assert b.enc_width(101) in b.enc and b.dec_width(11) == b.dec[0]
  assert b.dec_width(1001) == 1024  # past the last width (stale meta.json): the limit


def test_widths_past_the_limit_raise():
  b = buckets.Buckets((16,), (32,), 16, 40)
  assert b.dec_width(33) == 40
  with pytest.raises(ValueError, match="length 41 exceeds the limit 40"):
    b.dec_width(41)
