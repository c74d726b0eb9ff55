"""Encoder-decoder Transformer (PAPER.md "Model and training") with a decode cache.

Pre-norm RMSNorm blocks, RoPE in self-attention only (cross-attention has no
positions), SwiGLU feed-forward, no biases. Pad id 0 is masked out of encoder
self-attention and cross-attention; the decoder is causal (its trailing pads
are never attended by real tokens, and the loss mask drops them).

Params are float32 and carry logical axis names (`model/sharding.py` maps
them to the mesh); they are never sharded at creation, so the model builds
the same with or without a mesh. Compute runs in `cfg.dtype`; norms, softmax
and logits are float32. Encoder and decoder have their own input embeddings
(one shared vocabulary) and the output head is untied: with a vocabulary of a
few hundred tokens tying saves nothing and couples input and output scales.

Shape legend: B batch, P prompt (encoder) length, T decoder length, S cache
length (max_len), D model dim, H heads, K head dim, F feed-forward dim,
V vocabulary, L decoder layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualformer_jax.data.vocab import PAD_ID

# (dim, layers, heads), the same for encoder and decoder (PAPER.md sizes + tiny).
SIZES = {
    "tiny": (128, 2, 4),
    "s": (192, 6, 3),
    "m-s": (384, 8, 4),
    "l": (768, 9, 4),
    "xl-2": (1152, 16, 12),
}
_NEG = -1e30  # masked attention score; finite so an all-pad row gives no NaN
BATCH_AXES = ("data", "fsdp")  # mesh axes that split the batch (model/sharding.py)

Cache = dict[str, jax.Array]


def ffn_dim(dim: int) -> int:
  """SwiGLU hidden size: 2/3 * 4 * dim rounded up to a multiple of 256."""
  hidden = -(-8 * dim // 3)
  return -(-hidden // 256) * 256


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the model needs; built once from `config.model`."""
  dim: int
  layers: int
  heads: int
  vocab_size: int
  ffn: int = 0  # 0: ffn_dim(dim)
  dtype: str = "float32"  # compute dtype; params are float32
  remat: bool = False  # recompute each block in the backward pass
  rope_base: float = 10000.0
  norm_eps: float = 1e-6

  def __post_init__(self):
    if self.ffn == 0:
      object.__setattr__(self, "ffn", ffn_dim(self.dim))
    for field in ("dim", "layers", "heads", "vocab_size", "ffn"):
      if getattr(self, field) < 1:
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)}: must be >= 1")
    if self.dim % self.heads or (self.dim // self.heads) % 2:
      raise ValueError(f"ModelConfig.heads={self.heads}: must divide dim={self.dim} "
                       "into an even head dim (RoPE rotates pairs)")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"ModelConfig.dtype={self.dtype!r}: expected float32 or bfloat16")

  @property
  def head_dim(self) -> int:
    return self.dim // self.heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int) -> "ModelConfig":
    """`config.model` (size name, dtype, remat, rope_base) + vocabulary size."""
    if model_cfg.size not in SIZES:
      raise ValueError(f"config.model.size={model_cfg.size!r}: expected one of {tuple(SIZES)}")
    dim, layers, heads = SIZES[model_cfg.size]
    return cls(dim=dim, layers=layers, heads=heads, vocab_size=vocab_size,
               dtype=model_cfg.dtype, remat=bool(model_cfg.remat),
               rope_base=float(model_cfg.rope_base))


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str | None, ...]
           ) -> nnx.Param:
  # eager_sharding=False: placement is done by jit out_shardings (train/step.py),
  # so building a model never needs a mesh in context.
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=names,
                   eager_sharding=False)


def _dense_init(fan_in: int):
  return nnx.initializers.normal(stddev=fan_in ** -0.5)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale, computed in float32, returned in the compute dtype."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.eps, self.dtype = cfg.norm_eps, cfg.compute_dtype
    self.scale = _param(rngs, nnx.initializers.ones, (cfg.dim,), ("norm",))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...][None, None, :]).astype(self.dtype)


def rope(x_BxTxHxK: jax.Array, pos_T: jax.Array, base: float) -> jax.Array:
  """Rotary embedding (rotate-half form) at positions pos_T, same for every row."""
  k = x_BxTxHxK.shape[-1]
  inv_freq = base ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)  # [K/2]
  ang_TxK2 = pos_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
  sin = jnp.sin(ang_TxK2)[None, :, None, :]  # [1, T, 1, K/2]
  cos = jnp.cos(ang_TxK2)[None, :, None, :]
  x = x_BxTxHxK.astype(jnp.float32)
  x1, x2 = x[..., : k // 2], x[..., k // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def attend(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
           mask: jax.Array) -> jax.Array:
  """Softmax attention; mask broadcasts to [B, H, T, S] (True = attend)."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                         preferred_element_type=jnp.float32) * scale
  s_BxHxTxS = jnp.where(mask, s_BxHxTxS, _NEG)
  p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(v_BxSxHxK.dtype)
  return jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxSxHxK)


def _project(x_BxTxD: jax.Array, w: nnx.Param, dtype: jnp.dtype) -> jax.Array:
  """x [B, T, D] @ w [D, H, K] -> [B, T, H, K] in the compute dtype."""
  return jnp.einsum("btd,dhk->bthk", x_BxTxD.astype(dtype), w[...].astype(dtype))


def _attention_weights(cfg: ModelConfig, rngs: nnx.Rngs) -> tuple[nnx.Param, ...]:
  """Q, K, V [D, H, K] and output [H, K, D] kernels (self- and cross-attention alike)."""
  d, h, k = cfg.dim, cfg.heads, cfg.head_dim
  qkv = [_param(rngs, _dense_init(d), (d, h, k), ("embed", "heads", "kv")) for _ in range(3)]
  return (*qkv, _param(rngs, _dense_init(d), (h, k, d), ("heads", "kv", "embed")))


class SelfAttention(nnx.Module):
  """Multi-head self-attention with RoPE on queries and keys.

  Separate Q/K/V kernels rather than one fused [D, 3, H, K]: slicing a fused
  projection output costs a pad + add pass over the activations in the
  backward, which on CPU was slower than the larger fused matmul saves.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wq, self.wk, self.wv, self.wo = _attention_weights(cfg, rngs)

  def qkv(self, x_BxTxD: jax.Array, pos_T: jax.Array) -> tuple[jax.Array, ...]:
    q, k, v = (_project(x_BxTxD, w, self.cfg.compute_dtype) for w in (self.wq, self.wk, self.wv))
    return rope(q, pos_T, self.cfg.rope_base), rope(k, pos_T, self.cfg.rope_base), v

  def out(self, o_BxTxHxK: jax.Array) -> jax.Array:
    return jnp.einsum("bthk,hkd->btd", o_BxTxHxK, self.wo[...].astype(self.cfg.compute_dtype))

  def __call__(self, x_BxTxD: jax.Array, mask: jax.Array) -> jax.Array:
    q, k, v = self.qkv(x_BxTxD, jnp.arange(x_BxTxD.shape[1]))
    return self.out(attend(q, k, v, mask))


class CrossAttention(nnx.Module):
  """Decoder-to-encoder attention, no positional rotation."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wq, self.wk, self.wv, self.wo = _attention_weights(cfg, rngs)

  def kv(self, enc_BxPxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    dt = self.cfg.compute_dtype
    return _project(enc_BxPxD, self.wk, dt), _project(enc_BxPxD, self.wv, dt)

  def __call__(self, x_BxTxD: jax.Array, k_BxPxHxK: jax.Array, v_BxPxHxK: jax.Array,
               mask_Bx1x1xP: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    o = attend(_project(x_BxTxD, self.wq, dt), k_BxPxHxK, v_BxPxHxK, mask_Bx1x1xP)
    return jnp.einsum("bthk,hkd->btd", o, self.wo[...].astype(dt))


class SwiGLU(nnx.Module):
  """w2(silu(x w1) * (x w3)); separate kernels for the reason given in SelfAttention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = cfg.compute_dtype
    d, f = cfg.dim, cfg.ffn
    self.w1 = _param(rngs, _dense_init(d), (d, f), ("embed", "mlp"))
    self.w3 = _param(rngs, _dense_init(d), (d, f), ("embed", "mlp"))
    self.w2 = _param(rngs, _dense_init(f), (f, d), ("mlp", "embed"))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    gate_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, self.w1[...].astype(self.dtype))
    up_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, self.w3[...].astype(self.dtype))
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate_BxTxF) * up_BxTxF,
                      self.w2[...].astype(self.dtype))


class EncoderBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.norm1, self.attn = RMSNorm(cfg, rngs=rngs), SelfAttention(cfg, rngs=rngs)
    self.norm2, self.mlp = RMSNorm(cfg, rngs=rngs), SwiGLU(cfg, rngs=rngs)

  def __call__(self, x_BxPxD: jax.Array, mask_Bx1x1xP: jax.Array) -> jax.Array:
    x_BxPxD = x_BxPxD + self.attn(self.norm1(x_BxPxD), mask_Bx1x1xP)
    return x_BxPxD + self.mlp(self.norm2(x_BxPxD))


class DecoderBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.norm1, self.attn = RMSNorm(cfg, rngs=rngs), SelfAttention(cfg, rngs=rngs)
    self.norm2, self.cross = RMSNorm(cfg, rngs=rngs), CrossAttention(cfg, rngs=rngs)
    self.norm3, self.mlp = RMSNorm(cfg, rngs=rngs), SwiGLU(cfg, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, enc_BxPxD: jax.Array, enc_mask_Bx1x1xP: jax.Array,
               causal_1x1xTxT: jax.Array) -> jax.Array:
    x_BxTxD = x_BxTxD + self.attn(self.norm1(x_BxTxD), causal_1x1xTxT)
    k, v = self.cross.kv(enc_BxPxD)
    x_BxTxD = x_BxTxD + self.cross(self.norm2(x_BxTxD), k, v, enc_mask_Bx1x1xP)
    return x_BxTxD + self.mlp(self.norm3(x_BxTxD))


def _mesh_has_batch_axes() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and set(BATCH_AXES) <= set(mesh.axis_names)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pins an activation's batch axis to data x fsdp when traced under jax.set_mesh.

  Without it GSPMD may copy the fsdp sharding of the params' embed axis onto
  activations and then reshard them by full rematerialisation. No mesh in
  context (tests, sampler), or a batch the mesh does not divide: unchanged.
  """
  if not _mesh_has_batch_axes():
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
    return x
  return jax.lax.with_sharding_constraint(x, jax.P(BATCH_AXES, *([None] * (x.ndim - 1))))


def _replicate(w: jax.Array) -> jax.Array:
  """Gathers a sharded table before a row lookup (GSPMD's sharded gather reshards badly)."""
  if not _mesh_has_batch_axes():
    return w
  return jax.lax.with_sharding_constraint(w, jax.P())


def _call_block(block: nnx.Module, *args: jax.Array) -> jax.Array:
  return block(*args)


_remat_block = nnx.remat(_call_block)


class Transformer(nnx.Module):
  """Encoder-decoder; `decode_step` + explicit cache for sampling."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, v = cfg.dim, cfg.vocab_size
    emb_init = nnx.initializers.normal(stddev=1.0)
    self.enc_embed = _param(rngs, emb_init, (v, d), ("vocab", "embed"))
    self.dec_embed = _param(rngs, emb_init, (v, d), ("vocab", "embed"))
    self.encoder = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.enc_norm = RMSNorm(cfg, rngs=rngs)
    self.decoder = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.dec_norm = RMSNorm(cfg, rngs=rngs)
    self.head = _param(rngs, _dense_init(d), (d, v), ("embed", "vocab"))

  def _run(self, block: nnx.Module, *args: jax.Array) -> jax.Array:
    return constrain_batch((_remat_block if self.cfg.remat else _call_block)(block, *args))

  def _embed(self, table: nnx.Param, ids: jax.Array) -> jax.Array:
    rows = jnp.take(_replicate(table[...]), ids, axis=0)
    return constrain_batch(rows.astype(self.cfg.compute_dtype))

  def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
    x = self.dec_norm(x_BxTxD)
    return jnp.einsum("btd,dv->btv", x, self.head[...].astype(self.cfg.compute_dtype),
                      preferred_element_type=jnp.float32)

  def encode(self, enc_ids_BxP: jax.Array) -> jax.Array:
    """Prompt ids -> encodings [B, P, D] (compute dtype); pads are not attended."""
    _check_ids("enc_ids", enc_ids_BxP, 2)
    mask_Bx1x1xP = (enc_ids_BxP != PAD_ID)[:, None, None, :]
    x_BxPxD = self._embed(self.enc_embed, enc_ids_BxP)
    for block in self.encoder:
      x_BxPxD = self._run(block, x_BxPxD, mask_Bx1x1xP)
    return self.enc_norm(x_BxPxD)

  def decode(self, dec_ids_BxT: jax.Array, enc_BxPxD: jax.Array, enc_mask_BxP: jax.Array
             ) -> jax.Array:
    """Teacher-forced decoder pass -> logits [B, T, V] float32 (causal)."""
    _check_ids("dec_ids", dec_ids_BxT, 2)
    t = dec_ids_BxT.shape[1]
    causal_1x1xTxT = jnp.tril(jnp.ones((t, t), bool))[None, None]
    enc_mask_Bx1x1xP = enc_mask_BxP.astype(bool)[:, None, None, :]
    x_BxTxD = self._embed(self.dec_embed, dec_ids_BxT)
    for block in self.decoder:
      x_BxTxD = self._run(block, x_BxTxD, enc_BxPxD, enc_mask_Bx1x1xP, causal_1x1xTxT)
    return self._logits(x_BxTxD)

  def __call__(self, enc_ids_BxP: jax.Array, dec_ids_BxT: jax.Array) -> jax.Array:
    enc_BxPxD = self.encode(enc_ids_BxP)
    return self.decode(dec_ids_BxT, enc_BxPxD, enc_ids_BxP != PAD_ID)

  def init_cache(self, enc_BxPxD: jax.Array, enc_mask_BxP: jax.Array, max_len: int) -> Cache:
    """Empty self-attention K/V for max_len positions + cross K/V computed once.

    Keys: self_k/self_v [L, B, S, H, K] zeros, cross_k/cross_v [L, B, P, H, K],
    enc_mask [B, P] bool. All arrays, so the cache can ride in a while_loop.
    """
    if max_len < 1:
      raise ValueError(f"max_len={max_len}: must be >= 1")
    cfg = self.cfg
    b = enc_BxPxD.shape[0]
    zeros = jnp.zeros((cfg.layers, b, max_len, cfg.heads, cfg.head_dim), cfg.compute_dtype)
    cross = [blk.cross.kv(enc_BxPxD) for blk in self.decoder]
    return {"self_k": zeros, "self_v": zeros,
            "cross_k": jnp.stack([k for k, _ in cross]),
            "cross_v": jnp.stack([v for _, v in cross]),
            "enc_mask": enc_mask_BxP.astype(bool)}

  def decode_step(self, tok_B: jax.Array, pos: jax.Array, cache: Cache
                  ) -> tuple[jax.Array, Cache]:
    """Feeds token tok_B at position pos (the same for all rows) -> (logits [B, V], cache).

    Equals `decode` on the prefix ending at pos, given that positions < pos were
    fed before. pos may be traced; pos >= max_len is not checked (it would clamp).
    """
    s = cache["self_k"].shape[2]
    pos = jnp.asarray(pos, jnp.int32)
    pos_1 = pos[None]
    seen_1x1x1xS = (jnp.arange(s) <= pos)[None, None, None, :]
    enc_mask_Bx1x1xP = cache["enc_mask"][:, None, None, :]
    self_k, self_v = cache["self_k"], cache["self_v"]
    x_Bx1xD = self._embed(self.dec_embed, tok_B[:, None])
    for i, blk in enumerate(self.decoder):
      q, k, v = blk.attn.qkv(blk.norm1(x_Bx1xD), pos_1)  # [B, 1, H, K]
      self_k = jax.lax.dynamic_update_slice(self_k, k[None].astype(self_k.dtype), (i, 0, pos, 0, 0))
      self_v = jax.lax.dynamic_update_slice(self_v, v[None].astype(self_v.dtype), (i, 0, pos, 0, 0))
      o = attend(q, self_k[i], self_v[i], seen_1x1x1xS)
      x_Bx1xD = x_Bx1xD + blk.attn.out(o)
      x_Bx1xD = x_Bx1xD + blk.cross(blk.norm2(x_Bx1xD), cache["cross_k"][i],
                                    cache["cross_v"][i], enc_mask_Bx1x1xP)
      x_Bx1xD = x_Bx1xD + blk.mlp(blk.norm3(x_Bx1xD))
    cache = {**cache, "self_k": self_k, "self_v": self_v}
    return self._logits(x_Bx1xD)[:, 0], cache


def _check_ids(name: str, ids: jax.Array, ndim: int) -> None:
  if ids.ndim != ndim or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name}: expected int ids of rank {ndim}, got {ids.dtype}{list(ids.shape)}")


def count_params(model: Transformer) -> int:
  """Number of parameters (all float32 leaves of the model)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
