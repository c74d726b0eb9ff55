"""Encoder-decoder Transformer (PAPER.md "Model and training") with a decode cache.

Pre-norm RMSNorm blocks, RoPE in self-attention only (cross-attention has no
positions), SwiGLU feed-forward, no biases; the layers are model/layers.py's,
shared with the LM. Pad id 0 is masked out of encoder
self-attention and cross-attention; the decoder is causal (its trailing pads
are never attended by real tokens, and the loss mask drops them).

Every attention (encoder, decoder, cross, cached decoding) goes through
model/attention.py, whose implementation `cfg.attention` picks (plain,
blockwise O(T) memory, cuDNN, splash). The only cached decoding is
`init_cache` + `decode_step`: a self-attention cache kept in blocks of
positions and cross-attention K/V computed once per prompt, for many
sampled rows per prompt (infer/sampler.py drives it).

Params are float32 and carry logical axis names (`model/sharding.py` maps
them to the mesh); they are never sharded at creation, so the model builds
the same with or without a mesh. Compute runs in `cfg.dtype`; norms, softmax
and logits are float32. Encoder and decoder have their own input embeddings
(one shared vocabulary) and the output head is untied: with a vocabulary of a
few hundred tokens tying saves nothing and couples input and output scales.

Shape legend: B batch, P prompt (encoder) length, T decoder length, D model
dim, H heads, K head dim, F feed-forward dim, V vocabulary, L decoder layers;
decoding: Np prompts, S samples per prompt, R = Np x S rows, W cache block
length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dualformer_jax.data.vocab import PAD_ID
from dualformer_jax.model import attention as attn_lib
from dualformer_jax.model import layers
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.sharding import abstract_of, constrain_batch, replicate_table


def _attention_weights(cfg: ModelConfig, rngs: nnx.Rngs) -> tuple[nnx.Param, ...]:
  """Q, K, V [D, H, K] and output [H, K, D] kernels (self- and cross-attention alike)."""
  d, h, k = cfg.dim, cfg.heads, cfg.head_dim
  init = layers.dense_init(d)
  qkv = [layers.param(rngs, init, (d, h, k), ("embed", "heads", "kv")) for _ in range(3)]
  return (*qkv, layers.param(rngs, init, (h, k, d), ("heads", "kv", "embed")))


class SelfAttention(nnx.Module):
  """Multi-head self-attention with RoPE on queries and keys.

  Separate Q/K/V kernels rather than one fused [D, 3, H, K], for the reason
  given in layers.SwiGLU.
  """

  def __init__(self, cfg: ModelConfig, causal: bool, *, rngs: nnx.Rngs):
    self.cfg, self.causal = cfg, causal
    self.wq, self.wk, self.wv, self.wo = _attention_weights(cfg, rngs)

  def qkv(self, x_BxTxD: jax.Array, pos_T: np.ndarray | jax.Array, num_pos: int | None = None
          ) -> tuple[jax.Array, ...]:
    inv_freq = layers.rope_inv_freq(self.cfg.head_dim, self.cfg.rope_base)
    return layers.rotary_qkv(x_BxTxD, self.wq[...], self.wk[...], self.wv[...], pos_T,
                             inv_freq, self.cfg.compute_dtype, num_pos)

  def out(self, o_BxTxHxK: jax.Array) -> jax.Array:
    return layers.project_out(o_BxTxHxK, self.wo[...], self.cfg.compute_dtype)

  def __call__(self, x_BxTxD: jax.Array, valid_BxT: jax.Array | None) -> jax.Array:
    """Full sequence; valid_BxT marks real tokens as keys (None: all)."""
    q, k, v = self.qkv(x_BxTxD, np.arange(x_BxTxD.shape[1]))
    return self.out(attn_lib.attention(q, k, v, kv_valid_BxS=valid_BxT, causal=self.causal,
                                       impl=self.cfg.attention))

  def step(self, x_Rx1xD: jax.Array, pos: jax.Array, k_blocks: list[jax.Array],
           v_blocks: list[jax.Array], num_blocks: int
           ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """One position of every row against the cache; writes its K/V into block num_blocks - 1.

    k_blocks/v_blocks: [R, H, W, K] each; positions <= pos are visible, and pos
    must lie in block num_blocks - 1 (blocks past it are neither read nor written).
    """
    q, k, v = self.qkv(x_Rx1xD, pos[None], len(k_blocks) * k_blocks[0].shape[2])  # [R, 1, H, K]
    o_RxHx1xK, k_blocks, v_blocks = attn_lib.cached_step(
        q.transpose(0, 2, 1, 3), k[:, 0], v[:, 0], k_blocks, v_blocks, pos, num_blocks)
    return self.out(o_RxHx1xK.transpose(0, 2, 1, 3)), k_blocks, v_blocks


class CrossAttention(nnx.Module):
  """Decoder-to-encoder attention, no positional rotation."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wq, self.wk, self.wv, self.wo = _attention_weights(cfg, rngs)

  def kv(self, enc_BxPxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    dt = self.cfg.compute_dtype
    return layers.project(enc_BxPxD, self.wk[...], dt), layers.project(enc_BxPxD, self.wv[...], dt)

  def __call__(self, x_BxTxD: jax.Array, k_BxPxHxK: jax.Array, v_BxPxHxK: jax.Array,
               enc_valid_BxP: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    o = attn_lib.attention(layers.project(x_BxTxD, self.wq[...], dt), k_BxPxHxK, v_BxPxHxK,
                           kv_valid_BxS=enc_valid_BxP, impl=self.cfg.attention)
    return layers.project_out(o, self.wo[...], dt)


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> layers.RMSNorm:
  return layers.RMSNorm(cfg.dim, cfg.norm_eps, cfg.compute_dtype, rngs=rngs)


def _mlp(cfg: ModelConfig, rngs: nnx.Rngs) -> layers.SwiGLU:
  return layers.SwiGLU(cfg.dim, cfg.ffn, cfg.compute_dtype, rngs=rngs)


class EncoderBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.norm1, self.attn = _norm(cfg, rngs), SelfAttention(cfg, False, rngs=rngs)
    self.norm2, self.mlp = _norm(cfg, rngs), _mlp(cfg, rngs)

  def __call__(self, x_BxPxD: jax.Array, valid_BxP: jax.Array) -> jax.Array:
    x_BxPxD = x_BxPxD + self.attn(self.norm1(x_BxPxD), valid_BxP)
    return x_BxPxD + self.mlp(self.norm2(x_BxPxD))


class DecoderBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.norm1, self.attn = _norm(cfg, rngs), SelfAttention(cfg, True, rngs=rngs)
    self.norm2, self.cross = _norm(cfg, rngs), CrossAttention(cfg, rngs=rngs)
    self.norm3, self.mlp = _norm(cfg, rngs), _mlp(cfg, rngs)

  def __call__(self, x_BxTxD: jax.Array, enc_BxPxD: jax.Array, enc_valid_BxP: jax.Array
               ) -> jax.Array:
    """Teacher-forced, causal; the decoder's trailing pads are never attended by real tokens."""
    x_BxTxD = x_BxTxD + self.attn(self.norm1(x_BxTxD), None)
    k, v = self.cross.kv(enc_BxPxD)
    x_BxTxD = x_BxTxD + self.cross(self.norm2(x_BxTxD), k, v, enc_valid_BxP)
    return x_BxTxD + self.mlp(self.norm3(x_BxTxD))

  def step(self, x_Rx1xD: jax.Array, pos: jax.Array, k_blocks: list[jax.Array],
           v_blocks: list[jax.Array], num_blocks: int, cross_k_NpxPxHxK: jax.Array,
           cross_v_NpxPxHxK: jax.Array, enc_valid_NpxP: jax.Array
           ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """`__call__` for one position of R = Np x S rows against the cache."""
    h, k_blocks, v_blocks = self.attn.step(self.norm1(x_Rx1xD), pos, k_blocks, v_blocks,
                                           num_blocks)
    x_Rx1xD = x_Rx1xD + h
    # A prompt's S rows enter cross-attention as its S query positions, so its
    # K/V are read once per prompt rather than once per row.
    r, _, d = x_Rx1xD.shape
    np_ = cross_k_NpxPxHxK.shape[0]
    h_NpxSxD = self.norm2(x_Rx1xD).reshape(np_, r // np_, d)
    h_NpxSxD = self.cross(h_NpxSxD, cross_k_NpxPxHxK, cross_v_NpxPxHxK, enc_valid_NpxP)
    x_Rx1xD = x_Rx1xD + h_NpxSxD.reshape(r, 1, d)
    return x_Rx1xD + self.mlp(self.norm3(x_Rx1xD)), k_blocks, v_blocks


class DecodeCache(NamedTuple):
  """What `decode_step` reads and writes: a pytree that rides in a while_loop."""
  self_k: tuple[tuple[jax.Array, ...], ...]  # [layer][block] -> [R, H, W, K] zeros at first
  self_v: tuple[tuple[jax.Array, ...], ...]
  cross_k: tuple[jax.Array, ...]  # [layer] -> [Np, P, H, K], once per prompt
  cross_v: tuple[jax.Array, ...]
  enc_valid: jax.Array  # [Np, P] bool: real prompt tokens


def run_stack(blocks: nnx.List, x: jax.Array, *args: jax.Array, remat: str) -> jax.Array:
  """x through every block (each called as block(x, *args)).

  remat "none": a plain loop. Otherwise `layers.scan_layers` over the blocks'
  params, stacked here on every call (they are small next to the activations;
  the LM, whose are not, stores its layers stacked instead).
  """
  if remat == "none":
    for block in blocks:
      x = constrain_batch(block(x, *args))
    return x
  graphdef, first = nnx.split(blocks[0])
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), first,
                         *[nnx.state(b) for b in list(blocks)[1:]])
  return layers.scan_layers(
      lambda x, state: constrain_batch(nnx.merge(graphdef, state)(x, *args)), x, stacked, remat)


class Transformer(nnx.Module):
  """Encoder-decoder: `__call__` for training, `init_cache` + `decode_step` for sampling."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, v = cfg.dim, cfg.vocab_size
    emb_init = nnx.initializers.normal(stddev=1.0)
    self.enc_embed = layers.param(rngs, emb_init, (v, d), ("vocab", "embed"))
    self.dec_embed = layers.param(rngs, emb_init, (v, d), ("vocab", "embed"))
    self.encoder = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.enc_norm = _norm(cfg, rngs)
    self.decoder = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.dec_norm = _norm(cfg, rngs)
    self.head = layers.param(rngs, layers.dense_init(d), (d, v), ("embed", "vocab"))

  def embed_decoder(self, dec_ids: jax.Array) -> jax.Array:
    """Decoder input embeddings [..., D] in the compute dtype."""
    return self._embed(self.dec_embed, dec_ids)

  def _embed(self, table: nnx.Param, ids: jax.Array) -> jax.Array:
    rows = jnp.take(replicate_table(table[...]), ids, axis=0)
    return constrain_batch(rows.astype(self.cfg.compute_dtype))

  def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
    x = self.dec_norm(x_BxTxD)
    return layers.dense(x, self.head[...].astype(self.cfg.compute_dtype), dtype=jnp.float32)

  def encode(self, enc_ids_BxP: jax.Array) -> jax.Array:
    """Prompt ids -> encodings [B, P, D] (compute dtype); pads are not attended."""
    _check_ids("enc_ids", enc_ids_BxP, 2)
    valid_BxP = enc_ids_BxP != PAD_ID
    x_BxPxD = self._embed(self.enc_embed, enc_ids_BxP)
    x_BxPxD = run_stack(self.encoder, x_BxPxD, valid_BxP, remat=self.cfg.remat)
    return self.enc_norm(x_BxPxD)

  def decode(self, dec_ids_BxT: jax.Array, enc_BxPxD: jax.Array, enc_valid_BxP: jax.Array
             ) -> jax.Array:
    """Teacher-forced decoder pass -> logits [B, T, V] float32 (causal)."""
    _check_ids("dec_ids", dec_ids_BxT, 2)
    return self.decode_embedded(self.embed_decoder(dec_ids_BxT), enc_BxPxD, enc_valid_BxP)

  def decode_embedded(self, x_BxTxD: jax.Array, enc_BxPxD: jax.Array, enc_valid_BxP: jax.Array
                      ) -> jax.Array:
    """`decode` from input embeddings on (the decoder stack, norm and head)."""
    x_BxTxD = run_stack(self.decoder, x_BxTxD, enc_BxPxD, enc_valid_BxP.astype(bool),
                        remat=self.cfg.remat)
    return self._logits(x_BxTxD)

  def __call__(self, enc_ids_BxP: jax.Array, dec_ids_BxT: jax.Array) -> jax.Array:
    enc_BxPxD = self.encode(enc_ids_BxP)
    return self.decode(dec_ids_BxT, enc_BxPxD, enc_ids_BxP != PAD_ID)

  def init_cache(self, enc_ids_NpxP: jax.Array, samples: int, max_len: int, block_len: int
                 ) -> DecodeCache:
    """An empty cache for `samples` rows per prompt and positions 0 .. max_len - 1.

    Encodes the prompts (pads = PAD_ID are not attended); self-attention K/V
    start as zeros in ceil(max_len / block_len) blocks, cross-attention K/V
    are computed here, once per prompt. The same call as `LM.init_cache`, so
    infer/sampler.py drives both models.
    """
    cfg = self.cfg
    blocks = attn_lib.empty_cache(enc_ids_NpxP.shape[0], samples, max_len, block_len, cfg.heads,
                                  cfg.head_dim, cfg.compute_dtype)
    enc_NpxPxD = self.encode(enc_ids_NpxP)
    enc_valid_NpxP = enc_ids_NpxP != PAD_ID
    cross = [blk.cross.kv(enc_NpxPxD) for blk in self.decoder]
    return DecodeCache(self_k=tuple(blocks for _ in self.decoder),
                       self_v=tuple(blocks for _ in self.decoder),
                       cross_k=tuple(k for k, _ in cross), cross_v=tuple(v for _, v in cross),
                       enc_valid=enc_valid_NpxP.astype(bool))

  def decode_step(self, tok_R: jax.Array, pos: jax.Array, cache: DecodeCache,
                  num_blocks: int | None = None) -> tuple[jax.Array, DecodeCache]:
    """Feeds token tok_R at position pos (the same for all rows) -> (logits [R, V], cache).

    Equals `decode` on each row's prefix ending at pos, given that positions
    < pos were fed before. num_blocks (static; default all): pos lies in block
    num_blocks - 1, and only blocks up to it are read, so a sampler that runs
    one loop per block reads only the cache filled so far. pos may be traced.
    """
    num_blocks = len(cache.self_k[0]) if num_blocks is None else num_blocks
    pos = jnp.asarray(pos, jnp.int32)
    x_Rx1xD = self.embed_decoder(tok_R[:, None])
    self_k, self_v = list(cache.self_k), list(cache.self_v)
    for i, blk in enumerate(self.decoder):
      x_Rx1xD, k_blocks, v_blocks = blk.step(
          x_Rx1xD, pos, self_k[i], self_v[i], num_blocks, cache.cross_k[i], cache.cross_v[i],
          cache.enc_valid)
      self_k[i], self_v[i] = tuple(k_blocks), tuple(v_blocks)
    cache = cache._replace(self_k=tuple(self_k), self_v=tuple(self_v))
    return self._logits(x_Rx1xD)[:, 0], cache


def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  """The static half of the Transformer of `cfg` (nnx.merge(graphdef, params) rebuilds it)."""
  return layers.graphdef_of(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def abstract_params(cfg: ModelConfig, mesh: Mesh) -> nnx.State:
  """The params of `cfg` as ShapeDtypeStructs on `mesh` (a restore target); no arrays made."""
  return abstract_of(lambda: nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param), mesh)


def _check_ids(name: str, ids: jax.Array, ndim: int) -> None:
  if ids.ndim != ndim or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name}: expected int ids of rank {ndim}, got {ids.dtype}{list(ids.shape)}")

