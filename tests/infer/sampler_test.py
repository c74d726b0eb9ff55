"""The sampler against the model's full forward pass (tiny random model)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dualformer_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dualformer_jax.infer import sampler
from dualformer_jax.model import sharding
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.transformer import Transformer

V = 24
CFG = ModelConfig(dim=32, layers=2, heads=2, vocab_size=V)
MAX_LEN = 14
BLOCK = 4  # several cache blocks (stages) even at this length


@pytest.fixture(scope="module")
def model():
  return Transformer(CFG, rngs=nnx.Rngs(0))


def prompts():
  """Two prompts [2, 7]; the second is padded."""
  enc = np.array([[BOS_ID, 5, 9, 11, 7, 13, EOS_ID],
                  [BOS_ID, 6, 8, EOS_ID, 0, 0, 0]], np.int32)
  return enc


# Per row (2 prompts x 3 samples): a bare bos, or bos + forced tokens.
PREFIXES = [[BOS_ID], [BOS_ID, 7], [BOS_ID, 7, 9, 4],
            [BOS_ID, 10], [BOS_ID], [BOS_ID, 3, 3]]


def run(model, key=0, num_samples=3, prefixes=PREFIXES, **kw):
  pre, pre_len = sampler.stack_prefixes(prefixes)
  kw = {"max_len": MAX_LEN, "block_len": BLOCK, **kw}
  out = sampler.sample_model(model, prompts(), pre, pre_len, jax.random.key(key),
                             num_samples=num_samples, **kw)
  return tuple(np.asarray(x) for x in out)


def full_logits(model, ids_RxL, num_samples):
  """Teacher-forced logits [R, L-1, V] of the rows, pad masked as the sampler does."""
  enc = np.repeat(prompts(), num_samples, axis=0)
  logits = np.array(model(jnp.asarray(enc), jnp.asarray(ids_RxL[:, :-1])))
  logits[..., PAD_ID] = -np.inf
  return logits


def test_forced_prefixes_verbatim(model):
  ids, lengths, _ = run(model)
  assert ids.shape == (6, MAX_LEN) and ids.dtype == np.int32
  for r, p in enumerate(PREFIXES):
    assert list(ids[r, :len(p)]) == p
    assert lengths[r] > len(p)


def test_greedy_equals_argmax_of_full_forward(model):
  # eos out of the vocabulary: every row runs through all cache blocks.
  ids, lengths, finished = run(model, top_k=1, eos_id=V)
  assert not finished.any() and (lengths == MAX_LEN).all()
  pred_RxT = full_logits(model, ids, 3).argmax(-1)
  for r, p in enumerate(PREFIXES):
    np.testing.assert_array_equal(pred_RxT[r, len(p) - 1:], ids[r, len(p):])
  # Greedy rows of one prompt with one prefix are equal, whatever their batch-mates.
  same, _, _ = run(model, top_k=1, eos_id=V, prefixes=[[BOS_ID, 7]] * 6)
  assert (same[0] == same[1]).all() and (same[0] == same[2]).all()
  assert (same[3] == same[5]).all() and not (same[0] == same[3]).all()
  assert (same[0] == ids[1]).all()  # the other rows of the batch do not matter


def test_rows_stop_independently_at_eos(model):
  prefixes = [[BOS_ID]] * 32
  ids, lengths, finished = run(model, num_samples=16, prefixes=prefixes, max_len=40,
                               temperature=3.0, key=3)
  assert finished.sum() >= 2 and len(set(lengths[finished].tolist())) >= 2
  for r in range(32):
    gen = ids[r, 1:lengths[r]]
    assert (gen != PAD_ID).all()  # pad is never sampled
    if finished[r]:
      assert gen[-1] == EOS_ID and (gen[:-1] != EOS_ID).all()
      assert (ids[r, lengths[r]:] == PAD_ID).all()
    else:
      assert lengths[r] == 40 and (gen != EOS_ID).all()


def test_rows_without_eos_come_back_unfinished(model):
  ids, lengths, finished = run(model, eos_id=V, max_len=9)
  assert ids.shape == (6, 9)
  assert not finished.any() and (lengths == 9).all() and (ids != PAD_ID).all()


def test_same_key_same_samples(model):
  a, b, c = (run(model, key=k) for k in (5, 5, 6))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_top_k_keeps_to_the_k_best_tokens(model):
  ids, lengths, _ = run(model, top_k=3, temperature=5.0, eos_id=V, key=1)
  logits = full_logits(model, ids, 3)
  rank_RxT = (logits > np.take_along_axis(logits, ids[:, 1:, None], -1)).sum(-1)
  for r, p in enumerate(PREFIXES):
    assert rank_RxT[r, len(p) - 1:].max() <= 2
  assert rank_RxT[:, 3:].max() >= 1  # not simply greedy


@pytest.mark.parametrize("data,fsdp,tensor,in_context", [(2, 2, 2, False), (2, 1, 4, True)])
def test_params_sharded_on_a_mesh(model, data, fsdp, tensor, in_context):
  """As after training: params placed on a mesh, with or without jax.set_mesh around."""
  ref = run(model, top_k=1, eos_id=V)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(
      {"data": data, "fsdp": fsdp, "tensor": tensor}))
  graphdef, params = nnx.split(model)
  params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(params))
  pre, pre_len = sampler.stack_prefixes(PREFIXES)

  def go():
    out = sampler.sample(graphdef, params, prompts(), pre, pre_len, jax.random.key(0),
                         num_samples=3, max_len=MAX_LEN, top_k=1, eos_id=V, block_len=BLOCK)
    return np.asarray(out.ids)

  if in_context:
    with jax.set_mesh(mesh):
      ids = go()
  else:
    ids = go()
  np.testing.assert_array_equal(ids, ref[0])


def test_one_loop_per_device_on_a_data_mesh(model):
  """A data-only mesh gives each device its own prompts' rows and loop (shard_map); the
  samples, lengths and stops equal one program's, as each row draws the same uniforms."""
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 1, "tensor": 1}),
                            devices=jax.devices()[:2])
  assert sampler.row_split(mesh, num_prompts=2, num_samples=3) == 2
  assert sampler.row_split(mesh, num_prompts=1, num_samples=4) == 2  # a prompt's samples
  assert sampler.row_split(mesh, num_prompts=3, num_samples=3) == 1
  assert sampler.row_split(
      sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 1}),
                         devices=jax.devices()[:4]), num_prompts=2, num_samples=3) == 1
  graphdef, params = nnx.split(model)
  cases = [(prompts(), PREFIXES, {"temperature": 1.0}),
           (prompts(), PREFIXES, {"top_k": 3, "temperature": 2.0}),
           (prompts()[:1], PREFIXES[:4], {"temperature": 1.0})]  # 1 prompt: its rows split
  lengths = set()
  for enc, prefixes, kw in cases:
    pre, pre_len = sampler.stack_prefixes(prefixes)
    n = len(prefixes) // len(enc)
    ref = sampler.sample(graphdef, params, enc, pre, pre_len, jax.random.key(5), num_samples=n,
                         max_len=MAX_LEN, block_len=BLOCK, eos_id=EOS_ID, **kw)
    out = sampler.sample(graphdef, params, enc, pre, pre_len, jax.random.key(5), num_samples=n,
                         max_len=MAX_LEN, block_len=BLOCK, eos_id=EOS_ID, mesh=mesh, **kw)
    assert len(out.ids.sharding.device_set) == 2 and not out.ids.sharding.is_fully_replicated
    for x, y in zip(out, ref):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lengths |= set(np.asarray(ref.lengths).tolist())
  assert len(lengths) > 1  # rows stopped at different steps


def test_compiled_once_per_shape(model):
  run(model, key=0)
  size = sampler._sample._cache_size()
  run(model, key=1, temperature=0.5)  # new key and temperature: traced, no recompile
  short = [[BOS_ID]] * 6  # prefix width 1 is padded to the same shape as width 4
  run(model, key=2, prefixes=short)
  assert sampler._sample._cache_size() == size


def test_rejects_bad_shapes(model):
  pre, pre_len = sampler.stack_prefixes(PREFIXES)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="rows"):
    sampler.sample_model(model, prompts(), pre, pre_len, key, num_samples=2, max_len=MAX_LEN)
  with pytest.raises(ValueError, match="prefix_len"):
    sampler.sample_model(model, prompts(), pre, pre_len * 0, key, num_samples=3, max_len=MAX_LEN)
  with pytest.raises(ValueError, match="no room"):
    sampler.sample_model(model, prompts(), pre, pre_len, key, num_samples=3, max_len=4)
  with pytest.raises(ValueError, match="at least one token"):
    sampler.stack_prefixes([[BOS_ID], []])


def test_default_block_len():
  assert sampler.default_block_len(10) == 32
  assert sampler.default_block_len(385) == 97
  assert sampler.default_block_len(1024) == 256


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (2.0, 3)])
def test_pick_follows_the_softmax(temperature, top_k):
  """Token frequencies over many rows match softmax(logits / T) (renormalised top k)."""
  logits_V = np.array([0.0, 2.0, 1.0, 0.5, -1.0, 1.5], np.float32)  # id 0 is pad
  n = 40000
  picked = np.asarray(sampler._pick(jnp.tile(logits_V, (n, 1)), jax.random.key(7),
                                    jnp.float32(temperature), top_k))
  p = np.exp(logits_V / temperature)
  p[0] = 0.0
  if top_k:
    p[np.argsort(-p)[top_k:]] = 0.0
  p /= p.sum()
  freq = np.bincount(picked, minlength=len(p)) / n
  np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(0.25 / n))
  assert freq[p == 0].sum() == 0
