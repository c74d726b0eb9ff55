"""lm/model.py: parity with transformers, cached decoding through the sampler, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualformer_jax.infer import sampler
from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm.model import LM, LMConfig, log_probs
from dualformer_jax.model.layers import rope_inv_freq

_log_probs = nnx.jit(log_probs)


@pytest.mark.parametrize("name", ["llama3", "llama31_tied", "mistral_window"])
def test_log_probs_match_transformers(checkpoints, hf_log_probs, example_ids, name):
  path, hf = checkpoints[name]
  ids, valid = example_ids()
  want = hf_log_probs(hf, ids, valid)
  got = np.asarray(_log_probs(hf_checkpoint.load(path), jnp.asarray(ids), jnp.asarray(valid)))
  keep = valid[:, 1:]
  assert got.shape == want.shape == (3, 12)
  np.testing.assert_allclose(got[keep], want[keep], atol=1e-4)
  assert (got[~keep] == 0).all()  # pads score nothing
  # What makes each architecture differ must matter at this size, or the
  # comparison above could not catch it being dropped.
  off = {"llama31_tied": dict(rope_scaling=None), "mistral_window": dict(sliding_window=None),
         "llama3": dict(rope_theta=10000.0)}[name]
  wrong = np.asarray(_log_probs(hf_checkpoint.load(path, **off), jnp.asarray(ids),
                                jnp.asarray(valid)))
  assert np.abs(wrong - want)[keep].max() > 1e-3


def test_rope_scaling_equals_transformers(checkpoints):
  """Llama 3.1's inverse frequencies as transformers computes them; the scaling must change
  them (the lowest frequency is divided by the factor)."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  path, hf = checkpoints["llama31_tied"]
  cfg = hf_checkpoint.read_config(path)
  want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
  scaled = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  plain = rope_inv_freq(cfg.head_dim, cfg.rope_theta)
  np.testing.assert_allclose(scaled, want.numpy(), rtol=1e-6)
  np.testing.assert_allclose(scaled[-1], plain[-1] / 8.0, rtol=1e-6)


def test_blockwise_attention_and_remat_equal_plain(checkpoints, example_ids):
  path = checkpoints["mistral_window"][0]
  ids, valid = (jnp.asarray(x) for x in example_ids(length=40))
  plain = _log_probs(hf_checkpoint.load(path, attention="xla"), ids, valid)
  other = _log_probs(hf_checkpoint.load(path, attention="blockwise", remat="full"), ids, valid)
  np.testing.assert_allclose(other, plain, atol=2e-5)


def _step_all(model, ids_RxT, block_len):
  @nnx.jit(static_argnames="num_blocks")
  def step(model, tok, pos, cache, num_blocks):
    return model.decode_step(tok, pos, cache, num_blocks=num_blocks)

  r, t = ids_RxT.shape
  cache = model.init_cache(jnp.zeros((r, 0), jnp.int32), 1, t + 3, block_len)
  cols = []
  for pos in range(t):
    logits, cache = step(model, ids_RxT[:, pos], pos, cache, num_blocks=pos // block_len + 1)
    cols.append(logits)
  return np.stack(cols, axis=1)


@pytest.mark.parametrize("name", ["mistral_window", "llama31_tied"])
def test_cached_decoding_equals_full_forward(checkpoints, example_ids, name):
  """decode_step over a blocked cache (window 4 < block 8 < 13 positions) equals __call__."""
  model = hf_checkpoint.load(checkpoints[name][0])
  ids, _ = example_ids()
  full = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids))
  np.testing.assert_allclose(_step_all(model, jnp.asarray(ids), 8), full, atol=2e-5)


def test_greedy_sampling_through_the_sampler(checkpoints):
  """Prompts are forced prefixes of different lengths; each generated token is the
  argmax of the full forward pass over the row so far."""
  model = hf_checkpoint.load(checkpoints["mistral_window"][0])
  prompts = [[1, 5, 9, 17, 33, 62], [1, 7], [1, 4, 4, 4]]
  pre, pre_len = sampler.stack_prefixes(prompts)
  max_len = 16
  out = sampler.sample_model(model, None, pre, pre_len, jax.random.key(0), num_samples=1,
                             max_len=max_len, top_k=1, eos_id=(127, 126), pad_id=None,
                             block_len=4)
  ids = np.asarray(out.ids)
  for r, prompt in enumerate(prompts):
    assert ids[r, :len(prompt)].tolist() == prompt
    n = int(out.lengths[r])
    logits = np.asarray(model(jnp.asarray(ids[r:r + 1, :n])))[0]
    for t in range(len(prompt), n):
      assert ids[r, t] == logits[t - 1].argmax(), (r, t)
    if not out.finished[r]:
      assert n == max_len


def test_sampler_rows_per_prompt_and_eos(checkpoints):
  """num_samples rows per prompt sample independently; a row stops at any eos id."""
  model = hf_checkpoint.load(checkpoints["llama3"][0])
  pre, pre_len = sampler.stack_prefixes([[1, 3]] * 4)
  out = sampler.sample_model(model, None, pre, pre_len, jax.random.key(1), num_samples=4,
                             max_len=24, top_k=0, eos_id=tuple(range(64, 128)), pad_id=None)
  ids, lengths = np.asarray(out.ids), np.asarray(out.lengths)
  assert out.finished.all() and len({tuple(r) for r in ids}) > 1
  for r in range(4):
    assert ids[r, lengths[r] - 1] >= 64 and (ids[r, 2:lengths[r] - 1] < 64).all()
    assert (ids[r, lengths[r]:] == 64).all()  # filled with the first eos id


def test_init_cache_refuses_an_encoder_prompt():
  model = LM(LMConfig(vocab_size=16, dim=8, num_layers=1, num_heads=2, num_kv_heads=1,
                      ffn_dim=16), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="prefix"):
    model.init_cache(jnp.ones((2, 3), jnp.int32), 1, 8, 4)


def test_config_round_trips_and_is_validated(checkpoints):
  for path, _ in checkpoints.values():
    cfg = hf_checkpoint.read_config(path)
    assert LMConfig.from_hf(cfg.to_hf()) == cfg
  base = hf_checkpoint.read_config(checkpoints["llama3"][0]).to_hf()
  bad = [({"model_type": "gpt2"}, "model_type='gpt2'"),
         ({"architectures": ["LlamaModel"]}, "architectures"),
         ({"num_key_value_heads": 3}, "num_kv_heads=3"),
         ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_type='yarn'"),
         ({"hidden_act": "gelu"}, "hidden_act"),
         ({"attention_bias": True}, "attention_bias")]
  for change, message in bad:
    with pytest.raises(ValueError, match=message):
      LMConfig.from_hf({**base, **change})
  with pytest.raises(ValueError, match="missing"):
    LMConfig.from_hf({k: v for k, v in base.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="remat"):
    LMConfig.from_hf(base, remat="some")


def test_params_carry_logical_axes():
  cfg = LMConfig(vocab_size=16, dim=8, num_layers=3, num_heads=2, num_kv_heads=1, ffn_dim=16,
                 param_dtype="bfloat16")
  model = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))  # shapes and metadata only
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names, value = var.get_metadata()["out_sharding"], var.get_value()
    assert len(names) == value.ndim and value.dtype == jnp.bfloat16, path
    assert (path[0] == "layers") == (value.shape[0] == 3 and names[0] is None), path
