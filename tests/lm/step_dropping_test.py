"""step_dropping: steps dropped with probability p per draw, never the prompt or answer;
reproducible from the seed; the loss mask covers exactly the solution."""

import numpy as np
import pytest

from dualformer_jax.lm import math_data as md
from dualformer_jax.lm import step_dropping as sd

VOCAB = md.WordVocab.for_synthetic(20, 9)


def _examples(n=64, seed=0):
  train, _ = md.synthetic_splits(n, 1, seed, 3, 5, 20, 9)
  return [md.tokenize(VOCAB, e) for e in train], train


def test_drop_keeps_prompt_and_answer_and_masks_the_solution():
  toks, raw = _examples(1)
  ex, src = toks[0], raw[0]
  rng = np.random.default_rng(0)
  for p in (0.0, 0.5, 0.99):
    out = sd.drop_steps(ex, p, rng, 64, VOCAB.pad_id)
    ids, mask = out["ids"], out["loss_mask"]
    n = int((ids != VOCAB.pad_id).sum())
    text = VOCAB.decode(ids)
    assert text.startswith(f"Problem: {src.problem} Solution:")
    assert text.endswith(f"The answer is {src.answer}") and ids[n - 1] == VOCAB.eos_id
    kept = [s for s in src.steps if f"Step: {s}" in text]
    assert len(kept) == out["num_kept"] and out["num_steps"] == len(src.steps)
    assert text == " ".join([f"Problem: {src.problem} Solution:"] + [f"Step: {s}" for s in kept]
                            + [f"The answer is {src.answer}"])  # kept steps stay in order
    p_len = len(ex.prompt_P)
    assert mask[:p_len].sum() == 0 and mask[p_len:n].all() and mask[n:].sum() == 0
    assert out["valid"][:n].all() and not out["valid"][n:].any()
    if p == 0.0:
      assert out["num_kept"] == len(src.steps)


def test_drop_rate_matches_p():
  toks, _ = _examples(200)
  for p in (0.2, 0.4):
    ds = sd.train_batches(toks, p, seed=1, batch_size=50, max_len=64, pad_id=VOCAB.pad_id)
    steps = kept = 0
    for s in range(20):
      b = ds[s]
      steps, kept = steps + b["num_steps"].sum(), kept + b["num_kept"].sum()
    # ~4000 steps: the binomial standard deviation of the drop share is < 0.01.
    assert abs(1 - kept / steps - p) < 0.03


def test_batches_are_reproducible_and_redrawn_each_epoch():
  toks, _ = _examples(8)
  ds = sd.train_batches(toks, 0.5, seed=3, batch_size=8, max_len=64, pad_id=VOCAB.pad_id)
  again = sd.train_batches(toks, 0.5, seed=3, batch_size=8, max_len=64, pad_id=VOCAB.pad_id)
  for s in range(3):
    assert all(np.array_equal(ds[s][k], again[s][k]) for k in ds[s])
  # Epochs 0 and 1 hold the same 8 problems; their drawn solutions differ.
  prompts = lambda b: sorted(VOCAB.decode(r).split(" Solution:")[0] for r in b["ids"])
  assert prompts(ds[0]) == prompts(ds[1])
  assert sorted(map(VOCAB.decode, ds[0]["ids"])) != sorted(map(VOCAB.decode, ds[1]["ids"]))
  other = sd.train_batches(toks, 0.5, seed=4, batch_size=8, max_len=64, pad_id=VOCAB.pad_id)
  assert not np.array_equal(ds[0]["ids"], other[0]["ids"])


def test_order_does_not_depend_on_p():
  toks, _ = _examples(32)
  a = sd.train_batches(toks, 0.0, seed=5, batch_size=8, max_len=64, pad_id=VOCAB.pad_id)[2]
  b = sd.train_batches(toks, 0.3, seed=5, batch_size=8, max_len=64, pad_id=VOCAB.pad_id)[2]
  prompt = lambda x: x["ids"] * (x["loss_mask"] == 0)  # prompt ids, zeros elsewhere
  np.testing.assert_array_equal(prompt(a), prompt(b))  # the same problem in every row
  assert (a["num_kept"] >= b["num_kept"]).all() and (a["num_kept"] == a["num_steps"]).all()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.2", None])
def test_bad_p_is_refused(p):
  with pytest.raises(ValueError, match="step drop probability"):
    sd.StepDrop(p, 64, 0)


def test_overlong_and_empty_are_refused():
  toks, _ = _examples(1)
  with pytest.raises(ValueError, match="does not fit"):
    sd.drop_steps(toks[0], 0.0, np.random.default_rng(0), 10, 0)
  with pytest.raises(ValueError, match="no training examples"):
    sd.train_batches([], 0.1, 0, 4, 64, 0)
