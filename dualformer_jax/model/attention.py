"""The one attention of every model here: the entry points and the choice of implementation.

Encoder self-attention, decoder self-attention, cross-attention and cached
decoding all come through this file, so masking (model/masks.py) and the
softmax are written once. `attention()` serves full sequences and picks an
implementation:

  xla        plain einsum; materialises the [B, H, T, S] scores. The CPU default
             only for tiny products (decode-time cross-attention, short prompts).
  blockwise  flash-style attention in pure JAX (model/blockwise.py): forward and
             backward in O(T x block) memory. Runs on every backend; the
             long-sequence path on CPU, the fallback elsewhere.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")`: flash
             attention on NVIDIA GPUs (bf16/fp16; right-padded keys).
  splash     Pallas splash attention on TPU (interpreted elsewhere, for tests).
             cudnn and splash: model/kernels.py.
  auto       by target platform, dtype and length (`resolve`).

The target platform is that of the mesh in context (`jax.set_mesh`), i.e. of
the devices the program is compiled for, which may not be this host's (a TPU
program compiled deviceless on a CPU machine: compile.py). The two kernels
(cudnn, splash) are custom calls that XLA cannot partition, so under a mesh
they run inside `shard_map` (`kernels.per_shard`).

`cached_step()` / `attend_cached()`: one query per row of sampling over a KV
cache in blocks (model/transformer.py, lm/model.py), same masked softmax.

Masks (model/masks.py): `kv_valid` [B, S] marks real keys (pads False);
`causal` lets query i see keys j <= i; `window` > 0 (with causal) keeps only
j > i - window (Mistral's sliding window). Grouped-query attention: k/v may
have G heads where G divides the H query heads. A query with no visible key
gets a finite (meaningless) output, never NaN; such rows are pads and carry
no loss.

Shape legend: B batch, T queries, S keys, H query heads, G key/value heads,
K head dim, W cache block length.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from dualformer_jax.model import kernels
from dualformer_jax.model.blockwise import BLOCK, blockwise
from dualformer_jax.model.masks import NEG, masked_softmax, visible
from dualformer_jax.model.sharding import target_platform

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")
# `auto` on CPU: plain attention while T x S stays at or under this many scores
# per head, blockwise above. Blockwise won already at 384 tokens: the preset-s
# train step ran 8-30% faster than with plain attention, alternating runs on a
# 2-core AMD EPYC (benchmarks/train_bench.py --attention=...), as its backward
# keeps no probabilities and its [B, H, T, K] layout needs fewer transposes.
XLA_MAX_SCORES = 128 * 128


# ------------------------------------------------------------------ choice

def resolve(impl: str, *, t: int, s: int, dtype: jnp.dtype, backend: str | None = None) -> str:
  """The concrete implementation `auto` stands for (others pass through).

  GPU: cuDNN flash attention in 16-bit floats, else as CPU. TPU: splash
  when both lengths are multiples of 128, else as CPU. CPU: plain einsum
  up to XLA_MAX_SCORES scores per head (tiny products), blockwise beyond.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
  if impl != "auto":
    return impl
  backend = backend or target_platform()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if backend == "tpu" and t % 128 == 0 and s % 128 == 0:
    return "splash"
  return "xla" if t * s <= XLA_MAX_SCORES else "blockwise"


def attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
              kv_valid_BxS: jax.Array | None = None, causal: bool = False, window: int = 0,
              impl: str = "auto", block: int = BLOCK) -> jax.Array:
  """Softmax attention of full sequences -> [B, T, H, K] in q's dtype."""
  _check(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK)
  if window and not causal:
    raise ValueError("attention: a sliding window needs causal=True")
  t, s = q_BxTxHxK.shape[1], k_BxSxGxK.shape[1]
  platform = target_platform()
  impl = resolve(impl, t=t, s=s, dtype=q_BxTxHxK.dtype, backend=platform)
  args = (q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, kv_valid_BxS, causal, window)
  if impl == "xla":
    return _xla(*args)
  if impl == "blockwise":
    return blockwise(*args, block=block)
  kernel = (kernels.cudnn if impl == "cudnn"
            else functools.partial(kernels.splash, interpret=platform != "tpu"))
  return kernels.per_shard(kernel, *args)


def _check(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
    raise ValueError(f"attention: expected q [B, T, H, K], k = v [B, S, G, K]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: q {q.shape} and k {k.shape} disagree on batch or head dim, "
                     "or G key/value heads do not divide H query heads")


def _xla(q, k, v, kv_valid, causal, window):
  (b, t, h, d), (s, g) = q.shape, k.shape[1:3]
  mask = visible(t, s, kv_valid, causal, window)  # [B|1, 1, T, S]
  scale = d ** -0.5
  if g == h:
    s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * scale
    p = masked_softmax(s_BxHxTxS, mask).astype(v.dtype)
    return jnp.einsum("bhts,bshk->bthk", p, v)
  q5 = q.reshape(b, t, g, h // g, d)
  s_BxGxQxTxS = jnp.einsum("btgqk,bsgk->bgqts", q5, k, preferred_element_type=jnp.float32) * scale
  p = masked_softmax(s_BxGxQxTxS, mask[:, :, None]).astype(v.dtype)
  return jnp.einsum("bgqts,bsgk->btgqk", p, v).reshape(b, t, h, d)


# ------------------------------------------------------------------ cached decoding

def attend_cached(q_RxGxQxK: jax.Array, k_blocks: Sequence[jax.Array],
                  v_blocks: Sequence[jax.Array], visible_S: jax.Array) -> jax.Array:
  """One query position per row against a KV cache held in blocks [R, G, W, K].

  visible_S [R or 1, S] marks the filled, visible slots of the joined blocks.
  Returns [R, G, Q, K] (Q query heads per key/value head). Inference only:
  the softmax is taken across the blocks without joining them (no concatenated
  scores, no sliced probabilities) and normalised after the value product,
  which reads less; on CPU that made the step ~20% faster than
  `masked_softmax` over joined scores (preset s, 64 rows, 4 blocks).
  """
  scale = q_RxGxQxK.shape[-1] ** -0.5
  w = k_blocks[0].shape[2]
  q = q_RxGxQxK.astype(k_blocks[0].dtype)  # the cache's dtype (cache_dtype)
  s = [jnp.where(visible_S[:, None, None, i * w:(i + 1) * w],
                 jnp.einsum("rgqk,rgwk->rgqw", q, kb,
                            preferred_element_type=jnp.float32) * scale, NEG)
       for i, kb in enumerate(k_blocks)]  # [R, G, Q, W] each
  m = functools.reduce(jnp.maximum, [x.max(-1, keepdims=True) for x in s])
  e = [jnp.exp(x - m) for x in s]
  total = sum(x.sum(-1, keepdims=True) for x in e)
  o = sum(jnp.einsum("rgqw,rgwk->rgqk", x.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
          for x, vb in zip(e, v_blocks))
  return (o / total).astype(q_RxGxQxK.dtype)


def cache_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype a KV cache holds for a model computing in `dtype`: float32 on CPU.

  XLA:CPU has no batched matrix-vector product in bfloat16: over a bfloat16
  cache it converts each block to float32 every step (the cache's bytes read
  three times). A float32 cache holds the same bfloat16-rounded keys and
  values exactly (only the probabilities are no longer rounded before the
  value product); GPU and TPU keep `dtype` (half the bytes).
  """
  return jnp.float32 if target_platform() == "cpu" else jnp.dtype(dtype)


def empty_cache(prompts: int, samples: int, max_len: int, block_len: int, heads: int,
                head_dim: int, dtype: jnp.dtype) -> tuple[jax.Array, ...]:
  """One layer's empty K or V cache for prompts x samples rows and positions < max_len:
  ceil(max_len / block_len) zero blocks [R, G, W, K], the layout `cached_step` writes."""
  if samples < 1 or max_len < 1 or block_len < 1:
    raise ValueError(f"init_cache: samples={samples}, max_len={max_len}, "
                     f"block_len={block_len}: each must be >= 1")
  zeros_RxGxWxK = jnp.zeros((prompts * samples, heads, block_len, head_dim), cache_dtype(dtype))
  return tuple([zeros_RxGxWxK] * -(-max_len // block_len))


def cached_step(q_RxGxQxK: jax.Array, k_RxGxK: jax.Array, v_RxGxK: jax.Array, k_blocks: Sequence,
                v_blocks: Sequence, pos: jax.Array, num_blocks: int, window: int = 0) -> tuple:
  """Writes position pos's K/V into cache block num_blocks - 1 (which holds pos), then
  attends to positions <= pos (> pos - window if window) of blocks up to it -> (o, k, v)."""
  j, w = num_blocks - 1, k_blocks[0].shape[2]
  kv = [list(k_blocks), list(v_blocks)]
  for blocks, x_RxGxK in zip(kv, (k_RxGxK, v_RxGxK)):
    blocks[j] = jax.lax.dynamic_update_slice(
        blocks[j], x_RxGxK[:, :, None].astype(blocks[j].dtype), (0, 0, pos - j * w, 0))
  slot_S = jnp.arange(num_blocks * w)
  visible_S = (slot_S <= pos) & (slot_S > pos - window if window else True)
  o = attend_cached(q_RxGxQxK, kv[0][:num_blocks], kv[1][:num_blocks], visible_S[None])
  return o, kv[0], kv[1]
