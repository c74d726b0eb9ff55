"""Length buckets: the few batch widths a pipeline may pad to (pure numpy, no I/O).

A batch is padded to the smallest encoder width >= its longest prompt and the
smallest decoder width >= its longest decoder row, so the model compiles at
most len(enc) * len(dec) shapes. The widths are chosen by an exact dynamic
program that minimises the expected padding over a sample of lengths.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ALIGN = 8  # widths are multiples of this (except a top that is not)


def align(n: int) -> int:
  """n rounded up to a multiple of ALIGN."""
  return -(-n // ALIGN) * ALIGN


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Allowed widths: enc for P, dec for T; at most len(enc) * len(dec) batch shapes.

  A length above the last width (only when meta.json's length statistics are
  wrong) gets the config's max length, so shapes stay valid.
  """
  enc: tuple[int, ...]
  dec: tuple[int, ...]
  enc_limit: int  # config.data.max_prompt_len
  dec_limit: int  # config.data.max_decoder_len

  @property
  def num_shapes(self) -> int:
    return len(self.enc) * len(self.dec)

  def enc_width(self, length: int) -> int:
    return _smallest_at_least(self.enc, length, self.enc_limit)

  def dec_width(self, length: int) -> int:
    return _smallest_at_least(self.dec, length, self.dec_limit)


def _smallest_at_least(bounds: tuple[int, ...], length: int, limit: int) -> int:
  for b in bounds:
    if b >= length:
      return b
  if length > limit:
    raise ValueError(f"length {length} exceeds the limit {limit}")
  return limit


def optimal_boundaries(lengths: np.ndarray, weights: np.ndarray, max_buckets: int,
                       top: int) -> list[tuple[float, tuple[int, ...]]]:
  """For k = 1..max_buckets: (padding, widths) with at most k widths, the largest `top`,
  the others multiples of ALIGN, minimising the padding sum(w * (width(L) - L)) (exact DP)."""
  # lengths: int [S] (all <= top), weights: float [S]
  cand = np.minimum(-(-lengths // ALIGN) * ALIGN, top)
  cand = np.unique(np.append(cand, top)).astype(np.float64)  # [C] candidate widths
  slot = np.searchsorted(cand, lengths)  # the smallest candidate >= each length
  w_cum = np.cumsum(np.bincount(slot, weights, cand.size))  # [C] weight of lengths <= cand
  s_cum = np.cumsum(np.bincount(slot, weights * lengths, cand.size))
  # cost[i, j]: padding of the bucket (cand[i], cand[j]]; i < j only.
  cost = cand[None, :] * (w_cum[None, :] - w_cum[:, None]) - (s_cum[None, :] - s_cum[:, None])
  cost[np.tril_indices(cand.size)] = np.inf
  best = cand * w_cum - s_cum  # [C]: one bucket covering everything <= cand[j]
  parents, out = [], []
  for k in range(1, max_buckets + 1):
    if k > 1:
      total = best[:, None] + cost  # [C, C]
      arg = total.argmin(axis=0)
      new = total[arg, np.arange(cand.size)]
      better = new < best
      parents.append(np.where(better, arg, -1))  # -1: the k-th bucket did not help
      best = np.where(better, new, best)
    j, bounds = cand.size - 1, [int(cand[-1])]
    for par in reversed(parents):
      if par[j] >= 0:
        j = int(par[j])
        bounds.append(int(cand[j]))
    out.append((float(best[-1]), tuple(sorted(bounds))))
  return out


def choose_buckets(enc_len: np.ndarray, dec_len: np.ndarray, dec_weights: np.ndarray,
                   num_buckets: int, enc_top: int, dec_top: int, enc_limit: int,
                   dec_limit: int) -> Buckets:
  """Widths for sampled lengths (each <= its top), within a budget of num_buckets**2 shapes.

  The budget is what num_buckets per side would give; it is split between the
  sides (k_enc * k_dec <= budget) to minimise the expected padded tokens per
  example, so a long-tailed decoder side gets most widths.
  """
  # enc_len: int [S]; dec_len, dec_weights: [S'] (several weighted levels per record)
  budget = num_buckets ** 2
  enc = optimal_boundaries(enc_len, np.ones(enc_len.size), budget, enc_top)
  dec = optimal_boundaries(dec_len, dec_weights, budget, dec_top)
  enc_n, dec_n = max(enc_len.size, 1), max(dec_weights.sum(), 1e-12)
  # Padding per example of each (k_enc, k_dec) split; ties go to fewer shapes.
  _, _, e, t = min((e[0] / enc_n + t[0] / dec_n, len(e[1]) * len(t[1]), e[1], t[1])
                   for ke, e in enumerate(enc, 1) for t in dec[:budget // ke])
  return Buckets(e, t, enc_limit, dec_limit)
