"""Randomized step dropping for language models (the paper's math recipe) as a grain pipeline.

Each time an example is drawn into a batch, every intermediate step is dropped
independently with probability p; the prompt and the answer line are never
touched. As for the planning tasks (data/dropping.py), the randomness is part
of the pipeline, so one problem is seen with many different solutions over
training, and it comes from an explicit seed: grain's random_map derives the
generator of element i from (seed, i), and element i of epoch e is index
e * N + i, so every epoch draws afresh and every run draws the same.

The dataset is index-addressable: `train_batches(...)[s]` is the batch of
optimizer step s, so a resumed training continues from its step number alone.
The shuffle does not depend on p, so runs with different p see the problems
in the same order and differ only in what was dropped.

Element layout, T = max_len:
  ids_T int32        bos prompt kept-steps answer eos, then pad
  loss_mask_T f32    1 at the solution's tokens (kept steps, answer, eos)
  valid_T bool       True at the real tokens (the pad id may be a real token of a HF vocabulary)
  num_steps, num_kept int32: steps of the example, steps kept
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from dualformer_jax.lm.math_data import TokenizedExample


def check_p(p: float) -> float:
  if not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
    raise ValueError(f"step drop probability p={p!r}: must be in [0, 1)")
  return float(p)


def drop_steps(ex: TokenizedExample, p: float, rng: np.random.Generator, max_len: int,
               pad_id: int) -> dict[str, np.ndarray]:
  """One draw of `ex` with each step kept with probability 1 - p, padded to max_len.

  The sequence can only shrink, so an example that fits complete always fits.
  """
  keep_S = rng.random(len(ex.step_pieces)) >= p
  solution = [s for s, k in zip(ex.step_pieces, keep_S) if k] + [ex.answer_A]
  sol_len = sum(len(s) for s in solution)
  n = len(ex.prompt_P) + sol_len
  if n > max_len:
    raise ValueError(f"example of {n} tokens does not fit max_len={max_len}; "
                     "filter with math_data.tokenize_all first")
  ids_T = np.full((max_len,), pad_id, np.int32)
  ids_T[:n] = np.concatenate([ex.prompt_P, *solution])
  loss_mask_T = np.zeros((max_len,), np.float32)
  loss_mask_T[len(ex.prompt_P):n] = 1.0
  valid_T = np.arange(max_len) < n
  return {"ids": ids_T, "loss_mask": loss_mask_T, "valid": valid_T,
          "num_steps": np.int32(len(ex.step_pieces)), "num_kept": np.int32(keep_S.sum())}


class StepDrop(grain.transforms.RandomMap):
  """grain transform: TokenizedExample -> padded element with steps dropped (see drop_steps)."""

  def __init__(self, p: float, max_len: int, pad_id: int):
    self.p, self.max_len, self.pad_id = check_p(p), int(max_len), int(pad_id)

  def random_map(self, element: TokenizedExample, rng: np.random.Generator):
    return drop_steps(element, self.p, rng, self.max_len, self.pad_id)


def _stack(elements: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def train_batches(examples: Sequence[TokenizedExample], p: float, seed: int, batch_size: int,
                  max_len: int, pad_id: int) -> grain.MapDataset:
  """Endless batches: ds[s] = {ids, loss_mask, valid [B, T]; num_steps, num_kept [B]}.

  A fresh shuffle per epoch (seed), steps dropped per draw (seed + 1).
  """
  if not examples:
    raise ValueError("no training examples (all longer than max_len?)")
  ds = grain.MapDataset.source(list(examples)).shuffle(seed=seed).repeat()
  ds = ds.random_map(StepDrop(p, max_len, pad_id), seed=seed + 1)
  return ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)
