"""Transformer behaviour: sizes, cached decoding, causality, prompt padding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dualformer_jax.model.layers import count_params
from dualformer_jax.model.model_config import SIZES, ModelConfig, ffn_dim
from dualformer_jax.model.transformer import Transformer

V = 40
CFG = ModelConfig(dim=64, layers=2, heads=4, vocab_size=V)


def _ids(rng, shape, low=3):
  return rng.integers(low, V, shape).astype(np.int32)


def _build(cfg: ModelConfig) -> Transformer:
  return nnx.jit(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))()  # jitted: eager init is slow


def _variant(model: Transformer, cfg: ModelConfig) -> Transformer:
  """The same params under another config (dtype, remat): no new init to compile."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


_forward = nnx.jit(lambda m, enc_ids, dec_ids: m(enc_ids, dec_ids))
_encode = nnx.jit(lambda m, enc_ids: m.encode(enc_ids))


@pytest.fixture(scope="module")
def model():
  return _build(CFG)


def test_size_table_and_ffn():
  expected_ffn = {"tiny": 512, "s": 512, "m-s": 1024, "l": 2048, "xl-2": 3072}
  for size, (dim, layers, heads) in SIZES.items():
    mc = ml_collections.ConfigDict(dict(size=size, dtype="bfloat16", remat="dots",
                                        attention="blockwise", rope_base=500.0))
    cfg = ModelConfig.from_config(mc, vocab_size=77)
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.vocab_size) == (dim, layers, heads, 77)
    assert cfg.ffn == expected_ffn[size] and cfg.ffn % 256 == 0 and cfg.ffn >= 8 * dim / 3
    assert cfg.dtype == "bfloat16" and cfg.remat == "dots" and cfg.rope_base == 500.0
    assert cfg.attention == "blockwise"
  assert ffn_dim(96) == 256 and ffn_dim(97) == 512  # 8*96/3 = 256 exactly; 97 rounds up


def test_shape_overrides_replace_the_sizes_values():
  base = dict(size="tiny", dtype="float32", remat="none", rope_base=1e4)
  cfg = ModelConfig.from_config(ml_collections.ConfigDict(
      dict(base, dim=96, layers=3, heads=0, ffn=256)), vocab_size=10)
  assert (cfg.dim, cfg.layers, cfg.heads, cfg.ffn) == (96, 3, SIZES["tiny"][2], 256)
  zeros = ModelConfig.from_config(ml_collections.ConfigDict(
      dict(base, dim=0, layers=0, heads=0, ffn=0)), vocab_size=10)
  assert zeros == ModelConfig.from_config(ml_collections.ConfigDict(base), vocab_size=10)
  with pytest.raises(ValueError, match="model.layers=-1"):
    ModelConfig.from_config(ml_collections.ConfigDict(dict(base, layers=-1)), vocab_size=10)
  with pytest.raises(ValueError, match="heads=4: must divide dim=100"):
    ModelConfig.from_config(ml_collections.ConfigDict(dict(base, dim=100)), vocab_size=10)


def test_bad_config_names_the_value():
  with pytest.raises(ValueError, match="'huge'"):
    ModelConfig.from_config(ml_collections.ConfigDict(
        dict(size="huge", dtype="float32", remat="none", rope_base=1e4)), 10)
  # Older configs said remat=True/False: those mean the full / no policy.
  old = ml_collections.ConfigDict(dict(size="tiny", dtype="float32", remat=True, rope_base=1e4))
  assert ModelConfig.from_config(old, 10).remat == "full"
  with pytest.raises(ValueError, match="remat='some'"):
    ModelConfig(dim=64, layers=1, heads=4, vocab_size=10, remat="some")
  with pytest.raises(ValueError, match="attention='flash'"):
    ModelConfig(dim=64, layers=1, heads=4, vocab_size=10, attention="flash")
  with pytest.raises(ValueError, match="heads=5"):
    ModelConfig(dim=64, layers=1, heads=5, vocab_size=10)
  with pytest.raises(ValueError, match="float16"):
    ModelConfig(dim=64, layers=1, heads=4, vocab_size=10, dtype="float16")


def test_param_count_and_names(model):
  d, f, layers = CFG.dim, CFG.ffn, CFG.layers
  enc_layer = 4 * d * d + 3 * d * f + 2 * d  # qkv+o, SwiGLU, 2 norms; no biases
  dec_layer = 8 * d * d + 3 * d * f + 3 * d  # + cross q, kv, o and a 3rd norm
  assert count_params(model) == layers * (enc_layer + dec_layer) + 3 * V * d + 2 * d
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    assert var.get_value().dtype == jnp.float32, path
    names = var.get_metadata()["out_sharding"]
    assert len(names) == var.get_value().ndim, path


@pytest.mark.parametrize("block_len", [4, 16])
def test_cached_decoding_equals_full_forward(model, block_len):
  """The production decode path (several rows per prompt, a blocked cache read
  block by block, as infer/sampler.py drives it) equals teacher forcing."""
  rng = np.random.default_rng(1)
  n_prompts, samples, p, t = 2, 3, 7, 10
  enc_ids = _ids(rng, (n_prompts, p))
  enc_ids[1, 4:] = 0  # padded prompt
  dec_ids = _ids(rng, (n_prompts * samples, t))  # every row its own continuation
  full_RxTxV = _forward(model, np.repeat(enc_ids, samples, axis=0), dec_ids)

  @nnx.jit(static_argnames="num_blocks")
  def step(model, tok, pos, cache, num_blocks):
    return model.decode_step(tok, pos, cache, num_blocks=num_blocks)

  cache = nnx.jit(lambda m, e: m.init_cache(e, samples, t + 3, block_len))(
      model, enc_ids)  # room for more positions than are fed
  cols = []
  for pos in range(t):
    logits, cache = step(model, dec_ids[:, pos], pos, cache, num_blocks=pos // block_len + 1)
    cols.append(logits)
  np.testing.assert_allclose(np.stack(cols, axis=1), full_RxTxV, atol=2e-5, rtol=1e-5)
  assert full_RxTxV.dtype == jnp.float32 and full_RxTxV.shape == (n_prompts * samples, t, V)


def test_decode_step_reads_ropes_table(model):
  """A decode step (traced position) computes no cosine: RoPE indexes a constant table
  of the cache's positions (layers.rope's num_pos), as the full forward does."""
  cache = model.init_cache(_ids(np.random.default_rng(3), (1, 5)), 2, 9, 4)
  step = nnx.jit(lambda m, tok, pos, c: m.decode_step(tok, pos, c, num_blocks=2)[0])
  hlo = step.lower(model, jnp.zeros((2,), jnp.int32), jnp.int32(5), cache).compile().as_text()
  assert "cosine" not in hlo and "sine" not in hlo


def test_cache_layout(model):
  enc_ids = _ids(np.random.default_rng(2), (2, 5))
  cache = model.init_cache(enc_ids, samples=3, max_len=9, block_len=4)
  assert len(cache.self_k) == CFG.layers and len(cache.self_k[0]) == 3  # ceil(9 / 4) blocks
  assert cache.self_k[0][0].shape == (6, CFG.heads, 4, CFG.head_dim)  # [rows, H, W, K]
  assert cache.cross_v[0].shape == (2, 5, CFG.heads, CFG.head_dim)  # once per prompt
  assert not any(b.any() for b in cache.self_v[0])
  with pytest.raises(ValueError, match="max_len=0"):
    model.init_cache(enc_ids, samples=1, max_len=0, block_len=4)


def test_decoder_is_causal(model):
  rng = np.random.default_rng(3)
  enc_ids, dec_ids = _ids(rng, (2, 6)), _ids(rng, (2, 12))
  j = 7
  changed = dec_ids.copy()
  changed[:, j] = (changed[:, j] - 3 + 1) % (V - 3) + 3
  a, b = _forward(model, enc_ids, dec_ids), _forward(model, enc_ids, changed)
  np.testing.assert_array_equal(a[:, :j], b[:, :j])
  assert np.abs(a[:, j:] - b[:, j:]).min(axis=-1).max() > 1e-4  # later logits do move

  # Gradient form: no earlier logit depends on a later input embedding.
  enc = _encode(model, enc_ids)
  emb = model.embed_decoder(jnp.asarray(dec_ids))

  def logit_sum_before_j(delta):  # the decoder stack from its input embeddings on
    return model.decode_embedded(emb + delta, enc, jnp.ones((2, 6), bool))[:, :j].sum()

  g = jax.jit(jax.grad(logit_sum_before_j))(jnp.zeros_like(emb))
  assert np.abs(np.asarray(g[:, j:])).max() == 0.0
  assert np.abs(np.asarray(g[:, :j])).max() > 0.0


def test_prompt_padding_does_not_change_outputs(model):
  rng = np.random.default_rng(4)
  enc_ids, dec_ids = _ids(rng, (2, 6)), _ids(rng, (2, 8))
  padded = np.concatenate([enc_ids, np.zeros((2, 5), np.int32)], axis=1)
  np.testing.assert_allclose(_encode(model, padded)[:, :6], _encode(model, enc_ids), atol=1e-5)
  base = _forward(model, enc_ids, dec_ids)
  np.testing.assert_allclose(_forward(model, padded, dec_ids), base, atol=1e-5)
  # The prompt does matter: changing a real token changes the logits.
  other = enc_ids.copy()
  other[:, 2] = (other[:, 2] - 3 + 1) % (V - 3) + 3
  assert np.abs(_forward(model, other, dec_ids) - base).max() > 1e-4


def test_bfloat16_compute_and_remat(model):
  rng = np.random.default_rng(5)
  enc_ids, dec_ids = _ids(rng, (2, 5)), _ids(rng, (2, 6))
  ref = model
  bf16 = _variant(model, ModelConfig(dim=64, layers=2, heads=4, vocab_size=V, dtype="bfloat16"))
  out = _forward(bf16, enc_ids, dec_ids)
  assert out.dtype == jnp.float32
  assert bf16.head[...].dtype == jnp.float32
  np.testing.assert_allclose(out, _forward(ref, enc_ids, dec_ids), atol=0.1)

  @nnx.jit
  def grads(m):
    return nnx.grad(lambda m: jnp.mean(m(enc_ids, dec_ids) ** 2))(m)

  g_ref = grads(ref)
  for policy in ("dots", "full"):
    remat = _variant(model, ModelConfig(dim=64, layers=2, heads=4, vocab_size=V, remat=policy))
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(grads(remat))):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_remat_cuts_the_compiled_step_memory(model):
  """Remat must hold after XLA's optimisations (on CPU too): the compiled gradient of
  a longer sequence keeps far less under "full" than under "none"."""
  enc = jax.ShapeDtypeStruct((4, 16), jnp.int32)
  dec = jax.ShapeDtypeStruct((4, 256), jnp.int32)

  def temp_bytes(policy):
    m = _variant(model, ModelConfig(dim=64, layers=2, heads=4, vocab_size=V, remat=policy,
                                    attention="xla"))
    graphdef, params = nnx.split(m)

    def loss(params, enc_ids, dec_ids):
      return jnp.mean(nnx.merge(graphdef, params)(enc_ids, dec_ids) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params, enc, dec).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes("full") < 0.6 * temp_bytes("none")


def test_blockwise_attention_model_equals_plain(model):
  """The whole model (encoder pads, causal decoder, cross-attention) under blockwise
  attention: same logits and gradients as plain attention."""
  rng = np.random.default_rng(6)
  enc_ids, dec_ids = _ids(rng, (2, 9)), _ids(rng, (2, 11))
  enc_ids[0, 6:] = 0
  blockwise = _variant(model, ModelConfig(dim=64, layers=2, heads=4, vocab_size=V,
                                          attention="blockwise"))
  plain = _variant(model, ModelConfig(dim=64, layers=2, heads=4, vocab_size=V, attention="xla"))
  np.testing.assert_allclose(_forward(blockwise, enc_ids, dec_ids),
                             _forward(plain, enc_ids, dec_ids), atol=1e-5, rtol=1e-5)

  @nnx.jit
  def grads(m):
    return nnx.grad(lambda m: jnp.mean(m(enc_ids, dec_ids) ** 2))(m)

  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(blockwise))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bad_ids_rejected(model):
  with pytest.raises(ValueError, match="enc_ids"):
    model.encode(jnp.zeros((2, 3), jnp.float32))
  with pytest.raises(ValueError, match="dec_ids"):
    model.decode(jnp.zeros((4,), jnp.int32), jnp.zeros((1, 2, CFG.dim)), jnp.ones((1, 2), bool))
