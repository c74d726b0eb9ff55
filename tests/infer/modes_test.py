"""The sampling front: its rules (length, batches, widths) and its rows against the sampler's."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dualformer_jax.data.vocab import BOS, EOS, PAD_ID, Vocab
from dualformer_jax.infer import modes, sampler
from dualformer_jax.model import sharding
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.transformer import Transformer
from dualformer_jax.tasks.base import CREATE, PLAN

VOCAB = Vocab(["<pad>", BOS, EOS, CREATE, PLAN, *"abcdefghij"])
SETTINGS = modes.Settings(num_samples=2, max_len=12, temperature=1.0, top_k=0,
                          prompts_per_batch=2)
PROMPTS = [list("abc"), list("defghij"), list("ab")]  # 3 prompts: the last batch has a filler


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig(dim=32, layers=1, heads=2, vocab_size=len(VOCAB))
  return nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))


def _mesh(data: int):
  return sharding.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": 1, "tensor": 1}),
                            jax.devices()[:data])


def test_the_rules():
  assert modes.decode_len(0, 160) == 160 and modes.decode_len(32, 160) == 32
  assert list(modes.batches(5, 2)) == [(0, [0, 1]), (2, [2, 3]), (4, [4, 4])]
  assert modes.prompt_width([list("abc"), ["a"] * 14]) == 16  # 14 + bos + eos
  assert modes.prompt_width([["a"] * 15]) == 32
  assert modes.prompts_per_batch(3, _mesh(2)) == 4  # whole prompts per device


def test_encode_and_read_back():
  enc = modes.encode_prompts([list("abc")], VOCAB, 8)
  assert enc.shape == (1, 8) and enc[0, 5:].tolist() == [PAD_ID] * 3
  row = np.concatenate([VOCAB.encode([BOS, PLAN, "a", EOS]), [PAD_ID] * 2])
  assert modes.response_tokens(row, VOCAB) == [PLAN, "a"]


@pytest.mark.parametrize("mode", ["fast", "slow"])
def test_rows_are_the_samplers_for_each_prompt(model, mode):
  """Every prompt comes back once, with the rows one sampler call on its batch gives (on
  one device: the samples do not depend on the split)."""
  graphdef, params = model
  mesh = _mesh(2)  # each device samples one prompt of a batch in its own loop
  key = jax.random.key(3)
  got = dict(modes.sample_prompts(graphdef, params, VOCAB, mesh, PROMPTS, mode, key, SETTINGS,
                                  quiet=True))
  assert sorted(got) == [0, 1, 2]
  prefix = [int(i) for i in VOCAB.encode(modes.MODE_PREFIX[mode])]
  for start, chunk in ((0, PROMPTS[:2]), (2, [PROMPTS[2], PROMPTS[2]])):
    enc = modes.encode_prompts(chunk, VOCAB, modes.prompt_width(PROMPTS))
    pre, pre_len = sampler.stack_prefixes([prefix] * 4)
    want = np.asarray(sampler.sample(
        graphdef, params, enc, pre, pre_len, jax.random.fold_in(key, start), num_samples=2,
        max_len=12, eos_id=VOCAB.id(EOS)).ids)
    for i in range(len(chunk)):
      if start + i < len(PROMPTS):
        np.testing.assert_array_equal(got[start + i], want[2 * i:2 * i + 2])
        assert got[start + i][:, :len(prefix)].tolist() == [prefix] * 2
