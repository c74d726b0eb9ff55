"""Decoder-only Llama 3 / 3.1 and Mistral language model (Flax NNX), HF-compatible.

Pre-norm RMSNorm blocks, grouped-query attention with RoPE in Hugging Face's
rotate-half convention (so HF q/k weights load without permutation), a SwiGLU
MLP, no biases, Mistral's sliding window, tied or untied embeddings. Every
attention goes through model/attention.py: `attention()` for full sequences,
`cached_step()` for decoding, so masks and kernels are written once.

RMSNorm, RoPE, SwiGLU and the layer scan are model/layers.py's (shared with
the planning model). Layer params are stored stacked ([L, ...], layer axis
unsharded) and the forward pass is `layers.scan_layers` over them: one layer
is compiled, not L, and nothing is copied to stack them per call
(model/transformer.py's `run_stack` stacks its small layers on the fly, a
full weight copy at 8B). Params carry the planning model's logical axis names,
so model/sharding.py shards them over (data, fsdp, tensor) unchanged.

Cached decoding is the planning model's interface, `init_cache(enc_ids,
samples, max_len, block_len)` + `decode_step(tok, pos, cache, num_blocks=)`,
so infer/sampler.py drives both; the LM's prompt is the sampler's forced
prefix (enc_ids is [Np, 0]). A sliding window masks the cache, which still
holds every position (no ring buffer).

Shape legend: B batch, T tokens, D model dim, H query heads, G key/value heads,
K head dim, F MLP dim, V vocabulary, L layers; decoding: R rows, W cache block.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualformer_jax.model import attention as attn_lib
from dualformer_jax.model import layers
from dualformer_jax.model.layers import RopeScaling, rms_norm
from dualformer_jax.model.model_config import REMAT_POLICIES
from dualformer_jax.model.sharding import constrain_batch

DTYPES = ("float32", "bfloat16")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# Stacked layer params: name -> (shape of one layer from cfg, logical axis names).
LAYER_PARAMS = {
    "attn_norm": (lambda c: (c.dim,), ("norm",)),
    "wq": (lambda c: (c.dim, c.num_heads, c.head_dim), ("embed", "heads", "kv")),
    "wk": (lambda c: (c.dim, c.num_kv_heads, c.head_dim), ("embed", "heads", "kv")),
    "wv": (lambda c: (c.dim, c.num_kv_heads, c.head_dim), ("embed", "heads", "kv")),
    "wo": (lambda c: (c.num_heads, c.head_dim, c.dim), ("heads", "kv", "embed")),
    "mlp_norm": (lambda c: (c.dim,), ("norm",)),
    "w_gate": (lambda c: (c.dim, c.ffn_dim), ("embed", "mlp")),
    "w_up": (lambda c: (c.dim, c.ffn_dim), ("embed", "mlp")),
    "w_down": (lambda c: (c.ffn_dim, c.dim), ("mlp", "embed")),
}


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Architecture and numerics of one LM; hashable, so it rides in the graphdef."""
  vocab_size: int
  dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  ffn_dim: int
  head_dim: int = 0  # 0: dim // num_heads
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None  # a dict is converted
  rms_norm_eps: float = 1e-5
  sliding_window: int | None = None  # None or 0: full causal attention
  tie_embeddings: bool = False
  max_position_embeddings: int = 2048
  dtype: str = "float32"  # compute
  param_dtype: str = "float32"  # storage
  attention: str = "auto"  # attention.IMPLEMENTATIONS
  remat: str = "none"  # model_config.REMAT_POLICIES key
  bos_id: int | None = 1
  eos_id: int | tuple[int, ...] | None = 2  # a list is converted
  pad_id: int | None = None
  model_type: str = "llama"  # "llama" | "mistral": what to_hf writes

  def __post_init__(self):
    setattr_ = functools.partial(object.__setattr__, self)  # frozen: assign through object
    if self.head_dim == 0 and self.num_heads > 0:
      setattr_("head_dim", self.dim // self.num_heads)
    if isinstance(self.rope_scaling, dict):
      keys = {f.name for f in dataclasses.fields(RopeScaling)}
      if set(self.rope_scaling) != keys:
        raise ValueError(f"LMConfig.rope_scaling={self.rope_scaling}: expected keys {sorted(keys)}")
      setattr_("rope_scaling", RopeScaling(**self.rope_scaling))
    if isinstance(self.eos_id, list):
      setattr_("eos_id", tuple(self.eos_id))
    for field in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim",
                  "head_dim", "max_position_embeddings"):
      if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
        raise ValueError(f"LMConfig.{field}={getattr(self, field)!r}: must be an int >= 1")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LMConfig.num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"LMConfig.head_dim={self.head_dim}: must be even (RoPE rotates pairs)")
    if self.sliding_window is not None and self.sliding_window < 0:
      raise ValueError(f"LMConfig.sliding_window={self.sliding_window}: must be None or >= 0")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"LMConfig.{field}={getattr(self, field)!r}: expected one of {DTYPES}")
    if self.attention not in attn_lib.IMPLEMENTATIONS:
      raise ValueError(f"LMConfig.attention={self.attention!r}: expected one of "
                       f"{attn_lib.IMPLEMENTATIONS}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"LMConfig.remat={self.remat!r}: expected one of {tuple(REMAT_POLICIES)}")
    if self.model_type not in HF_ARCHITECTURES:
      raise ValueError(f"LMConfig.model_type={self.model_type!r}: expected one of "
                       f"{tuple(HF_ARCHITECTURES)}")
    if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
      raise ValueError(f"LMConfig: rope_theta={self.rope_theta} and rms_norm_eps="
                       f"{self.rms_norm_eps} must be > 0")

  @property
  def window(self) -> int:
    """The sliding window as attention.py takes it (0 = off)."""
    return self.sliding_window or 0

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return () if self.eos_id is None else tuple(np.atleast_1d(self.eos_id).tolist())

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides: Any) -> "LMConfig":
    """From a Hugging Face config.json dict (transformers 4.x or 5.x rope keys).

    overrides set what HF does not describe (dtype, attention, remat, ...).
    """
    model_type = hf.get("model_type")
    if model_type not in HF_ARCHITECTURES:
      raise ValueError(f"config.json: model_type={model_type!r} is not supported "
                       f"(expected one of {tuple(HF_ARCHITECTURES)})")
    archs = hf.get("architectures") or [HF_ARCHITECTURES[model_type]]
    if archs != [HF_ARCHITECTURES[model_type]]:
      raise ValueError(f"config.json: architectures={archs} is not supported "
                       f"(expected [{HF_ARCHITECTURES[model_type]!r}])")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                      ("partial_rotary_factor", 1.0)):
      if hf.get(key, want) != want:
        raise ValueError(f"config.json: {key}={hf[key]!r} is not supported (only {want!r})")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
      raise ValueError(f"config.json: missing {missing}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope_type not in ("default", "llama3"):
      raise ValueError(f"config.json: rope_type={rope_type!r} is not supported "
                       "(expected default or llama3)")
    heads = hf["num_attention_heads"]
    fields = dict(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        ffn_dim=hf["intermediate_size"], rope_theta=float(theta),
        rope_scaling=rope if rope_type == "llama3" else None,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        sliding_window=hf.get("sliding_window") if model_type == "mistral" else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        bos_id=hf.get("bos_token_id"), eos_id=hf.get("eos_token_id"),
        pad_id=hf.get("pad_token_id"), model_type=model_type)
    return cls(**{**fields, **overrides})

  def to_hf(self) -> dict[str, Any]:
    """A config.json dict that transformers (4.x and 5.x) loads as this model."""
    sc = self.rope_scaling
    hf = {
        "architectures": [HF_ARCHITECTURES[self.model_type]], "model_type": self.model_type,
        "vocab_size": self.vocab_size, "hidden_size": self.dim,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
        "intermediate_size": self.ffn_dim, "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
        "rope_scaling": None if sc is None else {"rope_type": "llama3",
                                                 **dataclasses.asdict(sc)},
        "tie_word_embeddings": self.tie_embeddings, "attention_bias": False,
        "bos_token_id": self.bos_id, "pad_token_id": self.pad_id,
        "eos_token_id": list(self.eos_id) if isinstance(self.eos_id, tuple) else self.eos_id,
        "torch_dtype": self.param_dtype,
    }
    if self.model_type == "mistral":
      hf["sliding_window"] = self.sliding_window or None
    else:
      hf["mlp_bias"] = False
    return hf


class Layers(nnx.Module):
  """All L blocks' params, stacked on a leading (unsharded) layer axis."""

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    for name, (shape_fn, names) in LAYER_PARAMS.items():
      shape = shape_fn(cfg)
      init = nnx.initializers.ones if name.endswith("norm") else layers.dense_init(shape[0])
      setattr(self, name, layers.param(rngs, init, (cfg.num_layers, *shape), (None, *names),
                                       cfg.param_dtype))

  def stacked(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name)[...] for name in LAYER_PARAMS}


class LMCache(NamedTuple):
  """Self-attention K/V per layer per block, [R, G, W, K] (zeros until written)."""
  k: tuple[tuple[jax.Array, ...], ...]
  v: tuple[tuple[jax.Array, ...], ...]


class LM(nnx.Module):
  """`__call__` for training and scoring; `init_cache` + `decode_step` for sampling."""

  def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, v = cfg.dim, cfg.vocab_size
    self.embed = layers.param(rngs, nnx.initializers.normal(stddev=1.0), (v, d),
                              ("vocab", "embed"), cfg.param_dtype)
    self.layers = Layers(cfg, rngs=rngs)
    self.norm = layers.param(rngs, nnx.initializers.ones, (d,), ("norm",), cfg.param_dtype)
    self.head = None if cfg.tie_embeddings else layers.param(
        rngs, layers.dense_init(d), (d, v), ("embed", "vocab"), cfg.param_dtype)

  @property
  def _dtype(self) -> jnp.dtype:
    return jnp.dtype(self.cfg.dtype)

  def _embed(self, ids: jax.Array) -> jax.Array:
    return constrain_batch(jnp.take(self.embed[...], ids, axis=0).astype(self._dtype))

  def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
    x = rms_norm(x_BxTxD, self.norm[...], self.cfg.rms_norm_eps, self._dtype)
    if self.head is None:
      return jnp.einsum("btd,vd->btv", x, self.embed[...].astype(self._dtype),
                        preferred_element_type=jnp.float32)
    return layers.dense(x, self.head[...].astype(self._dtype), dtype=jnp.float32)

  def _qkv(self, p: dict[str, jax.Array], x_BxTxD: jax.Array, pos_T: np.ndarray | jax.Array,
           num_pos: int | None = None):
    cfg, dt = self.cfg, self._dtype
    h = rms_norm(x_BxTxD, p["attn_norm"], cfg.rms_norm_eps, dt)
    inv_freq = layers.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return layers.rotary_qkv(h, p["wq"], p["wk"], p["wv"], pos_T, inv_freq, dt, num_pos)

  def _finish(self, p: dict[str, jax.Array], x_BxTxD: jax.Array, o_BxTxHxK: jax.Array
              ) -> jax.Array:
    """Attention output projection + residual, then the SwiGLU MLP + residual."""
    cfg, dt = self.cfg, self._dtype
    x_BxTxD = x_BxTxD + layers.project_out(o_BxTxHxK, p["wo"], dt)
    h = rms_norm(x_BxTxD, p["mlp_norm"], cfg.rms_norm_eps, dt)
    return x_BxTxD + layers.swiglu(h, p["w_gate"], p["w_up"], p["w_down"], dt)

  def __call__(self, ids_BxT: jax.Array, valid_BxT: jax.Array | None = None) -> jax.Array:
    """Causal logits [B, T, V] float32 at positions 0..T-1; valid_BxT marks real
    tokens (right padding; None: all)."""
    if ids_BxT.ndim != 2 or not jnp.issubdtype(ids_BxT.dtype, jnp.integer):
      raise ValueError(f"LM: expected int ids [B, T], got {ids_BxT.dtype}{list(ids_BxT.shape)}")
    cfg = self.cfg
    pos_T = np.arange(ids_BxT.shape[1])
    valid = None if valid_BxT is None else valid_BxT.astype(bool)

    def layer(x_BxTxD, p):
      q, k, v = self._qkv(p, x_BxTxD, pos_T)
      o = attn_lib.attention(q, k, v, kv_valid_BxS=valid, causal=True, window=cfg.window,
                             impl=cfg.attention)
      return constrain_batch(self._finish(p, x_BxTxD, o))

    x_BxTxD = layers.scan_layers(layer, self._embed(ids_BxT), self.layers.stacked(), cfg.remat)
    return self._logits(x_BxTxD)

  def init_cache(self, enc_ids_NpxP: jax.Array, samples: int, max_len: int, block_len: int
                 ) -> LMCache:
    """An empty cache for Np x samples rows and positions 0 .. max_len - 1.

    The planning model's signature (infer/sampler.py calls both alike); a
    decoder-only LM has no encoder prompt, so enc_ids must be [Np, 0] and the
    prompt is fed as the forced prefix.
    """
    if enc_ids_NpxP.ndim != 2 or enc_ids_NpxP.shape[1]:
      raise ValueError(f"LM.init_cache: enc_ids must be [Np, 0], got {enc_ids_NpxP.shape}; "
                       "a decoder-only LM takes its prompt as the sampler's prefix")
    cfg = self.cfg
    blocks = attn_lib.empty_cache(enc_ids_NpxP.shape[0], samples, max_len, block_len,
                                  cfg.num_kv_heads, cfg.head_dim, self._dtype)
    return LMCache(k=tuple(blocks for _ in range(cfg.num_layers)),
                   v=tuple(blocks for _ in range(cfg.num_layers)))

  def decode_step(self, tok_R: jax.Array, pos: jax.Array, cache: LMCache,
                  num_blocks: int | None = None) -> tuple[jax.Array, LMCache]:
    """Feeds tok_R at position pos (same for all rows) -> (logits [R, V] float32, cache).

    Equals `__call__` on each row's tokens up to pos, given positions < pos
    were fed before. num_blocks (static; default all): pos lies in block
    num_blocks - 1 and only blocks up to it are read.
    """
    cfg = self.cfg
    num_blocks = len(cache.k[0]) if num_blocks is None else num_blocks
    pos = jnp.asarray(pos, jnp.int32)
    x_Rx1xD = self._embed(tok_R[:, None])
    r, g = tok_R.shape[0], cfg.num_kv_heads
    stacked = self.layers.stacked()
    new_k, new_v = [], []
    # A Python loop, not a scan: each layer's cache blocks are updated in place.
    for i in range(cfg.num_layers):
      p = {name: a[i] for name, a in stacked.items()}
      num_pos = len(cache.k[i]) * cache.k[i][0].shape[2]  # the cache's positions
      q, k, v = self._qkv(p, x_Rx1xD, pos[None], num_pos)  # [R, 1, H|G, K]
      o_RxGxQxK, k_blocks, v_blocks = attn_lib.cached_step(
          q[:, 0].reshape(r, g, cfg.num_heads // g, cfg.head_dim), k[:, 0], v[:, 0],
          cache.k[i], cache.v[i], pos, num_blocks, cfg.window)
      x_Rx1xD = self._finish(p, x_Rx1xD, o_RxGxQxK.reshape(r, 1, cfg.num_heads, cfg.head_dim))
      new_k.append(tuple(k_blocks))
      new_v.append(tuple(v_blocks))
    return self._logits(x_Rx1xD)[:, 0], LMCache(k=tuple(new_k), v=tuple(new_v))


def log_probs(model: LM, ids_BxT: jax.Array, valid_BxT: jax.Array | None = None) -> jax.Array:
  """log p(ids[t+1] | ids[:t+1]) -> [B, T-1] float32; 0 where ids[t+1] is not valid."""
  logits_BxTxV = model(ids_BxT, valid_BxT)[:, :-1]
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  out = jnp.take_along_axis(logp_BxTxV, ids_BxT[:, 1:, None], axis=-1)[..., 0]
  if valid_BxT is None:
    return out
  return jnp.where(valid_BxT[:, 1:].astype(bool), out, 0.0)

