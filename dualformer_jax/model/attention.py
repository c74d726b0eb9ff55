"""The one attention of every model here: its masks and four implementations.

Encoder self-attention, decoder self-attention, cross-attention and cached
decoding all come through this file, so masking and the softmax are written
once. `attention()` serves full sequences and picks an implementation:

  xla        plain einsum; materialises the [B, H, T, S] scores. The CPU default
             only for tiny products (decode-time cross-attention, short prompts).
  blockwise  flash-style attention in pure JAX: blocks of queries and keys,
             online softmax, and a custom VJP that recomputes scores per block,
             so forward and backward both stay in O(T x block) memory. Runs on
             every backend; the long-sequence path on CPU, the fallback elsewhere.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")`: flash
             attention on NVIDIA GPUs (bf16/fp16; right-padded keys).
  splash     Pallas splash attention on TPU (interpreted elsewhere, for tests).
  auto       by target platform, dtype and length (`resolve`).

The target platform is that of the mesh in context (`jax.set_mesh`), i.e. of
the devices the program is compiled for, which may not be this host's (a TPU
program compiled deviceless on a CPU machine: compile.py). The two kernels
(cudnn, splash) are custom calls that XLA cannot partition, so under a mesh
they run inside `shard_map`: each device attends over its own rows (batch
axes data x fsdp) and heads (tensor), which needs no communication.

`cached_step()` / `attend_cached()`: one query per row of sampling over a KV
cache in blocks (model/transformer.py, lm/model.py), same masked softmax.

Masks: `kv_valid` [B, S] marks real keys (pads False); `causal` lets query i
see keys j <= i; `window` > 0 (with causal) keeps only j > i - window
(Mistral's sliding window). Grouped-query attention: k/v may have G heads
where G divides the H query heads. A query with no visible key gets a finite
(meaningless) output, never NaN; such rows are pads and carry no loss.

Shape legend: B batch, T queries, S keys, H query heads, G key/value heads,
K head dim, W cache block length.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dualformer_jax.model.sharding import BATCH_AXES

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")
NEG = -1e30  # masked score: finite, so a fully masked row gives no NaN
# `auto` on CPU: plain attention while T x S stays at or under this many scores
# per head, blockwise above. Blockwise won already at 384 tokens: the preset-s
# train step ran 8-30% faster than with plain attention, alternating runs on a
# 2-core AMD EPYC (benchmarks/train_bench.py --attention=...), as its backward
# keeps no probabilities and its [B, H, T, K] layout needs fewer transposes.
XLA_MAX_SCORES = 128 * 128
BLOCK = 512  # blockwise: queries and keys per block


# ------------------------------------------------------------------ masks

def visible(t: int, s: int, kv_valid_BxS: jax.Array | None, causal: bool, window: int = 0,
            q_start: jax.Array | int = 0, k_start: jax.Array | int = 0) -> jax.Array:
  """Which keys each query may see: bool [B or 1, 1, t, s] (queries q_start.., keys k_start..)."""
  q_T1 = (q_start + jnp.arange(t))[:, None]
  k_1S = (k_start + jnp.arange(s))[None, :]
  ok_TxS = jnp.ones((t, s), bool)
  if causal:
    ok_TxS = k_1S <= q_T1
    if window:
      ok_TxS &= k_1S > q_T1 - window
  ok = ok_TxS[None, None]
  if kv_valid_BxS is not None:
    ok = ok & kv_valid_BxS.astype(bool)[:, None, None, :]
  return ok


def masked_softmax(s: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax over the last axis of float32 scores, masked entries excluded.

  The differentiable path (jax.nn.softmax's compact VJP); `attend_cached`
  evaluates the same function block by block for decoding.
  """
  return jax.nn.softmax(jnp.where(mask, s, NEG), axis=-1)


def _check(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
    raise ValueError(f"attention: expected q [B, T, H, K], k = v [B, S, G, K]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: q {q.shape} and k {k.shape} disagree on batch or head dim, "
                     "or G key/value heads do not divide H query heads")


def _repeat_kv(k_BxSxGxK: jax.Array, heads: int) -> jax.Array:
  g = k_BxSxGxK.shape[2]
  return k_BxSxGxK if g == heads else jnp.repeat(k_BxSxGxK, heads // g, axis=2)


# ------------------------------------------------------------------ choice

def target_platform() -> str:
  """"cpu", "gpu" or "tpu": the platform of the mesh in context, else of this host.

  Under `jax.set_mesh(mesh)` the abstract mesh names its devices' platform, so a
  program built for TPU chips on a CPU host picks the TPU kernels.
  """
  mesh = jax.sharding.get_abstract_mesh()
  platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
  return "gpu" if platform in ("cuda", "rocm") else platform


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
    return _blockwise(*args, block=block)
  kernel = _cudnn if impl == "cudnn" else functools.partial(_splash, interpret=platform != "tpu")
  return per_shard(kernel, *args)


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
  s = [jnp.where(visible_S[:, None, None, i * w:(i + 1) * w],
                 jnp.einsum("rgqk,rgwk->rgqw", q_RxGxQxK, kb,
                            preferred_element_type=jnp.float32) * scale, NEG)
       for i, kb in enumerate(k_blocks)]  # [R, G, Q, W] each
  m = functools.reduce(jnp.maximum, [x.max(-1, keepdims=True) for x in s])
  e = [jnp.exp(x - m) for x in s]
  total = sum(x.sum(-1, keepdims=True) for x in e)
  o = sum(jnp.einsum("rgqw,rgwk->rgqk", x.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
          for x, vb in zip(e, v_blocks))
  return (o / total).astype(v_blocks[0].dtype)


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


# ------------------------------------------------------------------ blockwise

def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _heads_first(x_BxTxHxK: jax.Array, length: int) -> jax.Array:
  """[B, T, H, K] zero-padded along T to `length`, as [B, H, length, K] (the kernels' layout)."""
  return _pad_to(x_BxTxHxK, 1, length).transpose(0, 2, 1, 3)


def _blockwise(q, k, v, kv_valid, causal, window, *, block):
  (b, t, h, _), s = q.shape, k.shape[1]
  k, v = _repeat_kv(k, h), _repeat_kv(v, h)
  bq, bk = min(block, t), min(block, s)
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  valid = jnp.ones((b, s), bool) if kv_valid is None else kv_valid
  valid = _pad_to(valid.astype(bool), 1, sp, False)
  # [B, H, T, K] layout inside: every block product is a plain batched matmul.
  qh, kh, vh = _heads_first(q, tp), _heads_first(k, sp), _heads_first(v, sp)
  o = _flash(qh, kh, vh, valid, causal, window, bq, bk)
  return o[:, :, :t].transpose(0, 2, 1, 3)


def _kv_range(i, bq: int, bk: int, nk: int, causal: bool, window: int):
  """Key blocks [lo, hi) that query block i can see."""
  if not causal:
    return 0, nk
  hi = jnp.minimum(nk, ((i + 1) * bq - 1) // bk + 1)
  lo = jnp.maximum(0, (i * bq - window + 1) // bk) if window else 0
  return lo, hi


def _q_range(j, bq: int, bk: int, nq: int, causal: bool, window: int):
  """Query blocks [lo, hi) that see key block j."""
  if not causal:
    return 0, nq
  lo = (j * bk) // bq
  hi = jnp.minimum(nq, ((j + 1) * bk - 1 + window - 1) // bq + 1) if window else nq
  return lo, hi


def _scores(q_i, k_j, valid_j, i, j, bq, bk, causal, window):
  """Masked float32 scores [B, H, bq, bk] of query block i against key block j."""
  s = jnp.einsum("bhqk,bhsk->bhqs", q_i, k_j, preferred_element_type=jnp.float32)
  s = s * (q_i.shape[-1] ** -0.5)
  mask = visible(bq, bk, valid_j, causal, window, q_start=i * bq, k_start=j * bk)
  return jnp.where(mask, s, NEG), mask


def _blocks(x, n: int, axis: int = 2):
  """[B, H, n * c, ...] -> n blocks stacked first: [n, B, H, c, ...]."""
  shape = x.shape
  c = shape[axis] // n
  x = x.reshape(*shape[:axis], n, c, *shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _unblocks(x, axis: int = 2):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, valid, causal, window, bq, bk):
  return _flash_fwd(q, k, v, valid, causal, window, bq, bk)[0]


def _flash_fwd(q, k, v, valid, causal, window, bq, bk):
  """Online softmax over key blocks for each query block: O, and logsumexp for the VJP."""
  b, h, tp, d = q.shape
  nq, nk = tp // bq, k.shape[2] // bk

  def q_block(args):
    i, q_i = args

    def body(j, carry):
      m, l, acc = carry
      k_j = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
      valid_j = jax.lax.dynamic_slice_in_dim(valid, j * bk, bk, axis=1)
      s, _ = _scores(q_i, k_j, valid_j, i, j, bq, bk, causal, window)
      m_new = jnp.maximum(m, s.max(-1))
      corr = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      l = l * corr + p.sum(-1)
      acc = acc * corr[..., None] + jnp.einsum(
          "bhqs,bhsk->bhqk", p.astype(v.dtype), v_j, preferred_element_type=jnp.float32)
      return m_new, l, acc

    init = (jnp.full((b, h, bq), NEG, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, h, bq, d), jnp.float32))
    lo, hi = _kv_range(i, bq, bk, nk, causal, window)
    m, l, acc = jax.lax.fori_loop(lo, hi, body, init)
    l = jnp.maximum(l, 1e-30)
    return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

  o, lse = jax.lax.map(q_block, (jnp.arange(nq), _blocks(q, nq)))
  o, lse = _unblocks(o), _unblocks(lse)  # [B, H, Tp, K], [B, H, Tp]
  return o, (q, k, v, valid, o, lse)


def _flash_bwd(causal, window, bq, bk, res, do):
  """Recomputes each block's probabilities from the saved logsumexp (FlashAttention-2 style):
  one pass over query blocks for dQ, one over key blocks for dK and dV."""
  q, k, v, valid, o, lse = res
  b, h, tp, d = q.shape
  nq, nk = tp // bq, k.shape[2] // bk
  scale = d ** -0.5
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, H, Tp]

  def probs(i, j, q_i, k_j, valid_j, lse_i):
    s, mask = _scores(q_i, k_j, valid_j, i, j, bq, bk, causal, window)
    return jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)

  def dq_block(args):
    i, q_i, do_i, lse_i, delta_i = args

    def body(j, dq):
      k_j = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
      valid_j = jax.lax.dynamic_slice_in_dim(valid, j * bk, bk, axis=1)
      p = probs(i, j, q_i, k_j, valid_j, lse_i)
      dp = jnp.einsum("bhqk,bhsk->bhqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None])).astype(k.dtype)
      return dq + jnp.einsum("bhqs,bhsk->bhqk", ds, k_j, preferred_element_type=jnp.float32)

    lo, hi = _kv_range(i, bq, bk, nk, causal, window)
    dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros((b, h, bq, d), jnp.float32))
    return (dq * scale).astype(q.dtype)

  def dkv_block(args):
    j, k_j, v_j, valid_j = args

    def body(i, carry):
      dk, dv = carry
      q_i = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=2)
      do_i = jax.lax.dynamic_slice_in_dim(do, i * bq, bq, axis=2)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=2)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=2)
      p = probs(i, j, q_i, k_j, valid_j, lse_i)
      dv = dv + jnp.einsum("bhqs,bhqk->bhsk", p.astype(do.dtype), do_i,
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqk,bhsk->bhqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
      dk = dk + jnp.einsum("bhqs,bhqk->bhsk", ds, q_i, preferred_element_type=jnp.float32)
      return dk, dv

    lo, hi = _q_range(j, bq, bk, nq, causal, window)
    zeros = jnp.zeros((b, h, bk, d), jnp.float32)
    dk, dv = jax.lax.fori_loop(lo, hi, body, (zeros, zeros))
    return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

  dq = _unblocks(jax.lax.map(dq_block, (jnp.arange(nq), _blocks(q, nq), _blocks(do, nq),
                                        _blocks(lse, nq), _blocks(delta, nq))))
  valid_blocks = jnp.moveaxis(valid.reshape(b, nk, bk), 1, 0)  # [nk, B, bk]
  dk, dv = jax.lax.map(dkv_block, (jnp.arange(nk), _blocks(k, nk), _blocks(v, nk), valid_blocks))
  return dq, _unblocks(dk), _unblocks(dv), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------ accelerator kernels

HEAD_AXIS = "tensor"  # the mesh axis of the "heads" rule (model/sharding.py)


def _auto_axes(mesh) -> set[str]:
  """Mesh axes that GSPMD still places (not Manual, as inside an outer shard_map)."""
  return {a for a, kind in zip(mesh.axis_names, mesh.axis_types)
          if kind == jax.sharding.AxisType.Auto}


def per_shard(kernel, q, k, v, kv_valid, causal, window):
  """Runs a kernel XLA cannot partition on each device's share of a sharded call.

  Under a mesh with Auto axes the call goes through `jax.shard_map`: rows split
  over the batch axes that divide B, heads over `tensor` when it divides H (k/v
  are first repeated to H heads if it does not divide their G). Attention is
  independent per row and head, so the shards need no communication. No mesh in
  context (one device) or no Auto axis left (inside the sampler's shard_map):
  the kernel is called on the arrays as they are.
  """
  mesh = jax.sharding.get_abstract_mesh()
  free = set() if mesh.empty else _auto_axes(mesh)
  if not free:
    return kernel(q, k, v, kv_valid, causal, window)
  (b, _, h, _), g = q.shape, k.shape[2]
  batch = []
  for axis in BATCH_AXES:  # each batch axis, in order, that keeps the product dividing B
    if axis in free and b % math.prod(mesh.shape[a] for a in (*batch, axis)) == 0:
      batch.append(axis)
  heads = None
  if HEAD_AXIS in free and h % mesh.shape[HEAD_AXIS] == 0:
    heads = HEAD_AXIS
    if g % mesh.shape[HEAD_AXIS]:
      k, v = _repeat_kv(k, h), _repeat_kv(v, h)
  if kv_valid is None:
    kv_valid = jnp.ones(k.shape[:2], bool)
  rows = tuple(batch) or None
  x_spec, valid_spec = P(rows, None, heads, None), P(rows, None)
  # check_vma=False: the kernels are opaque custom calls with no varying-axes rules.
  return jax.shard_map(
      lambda q, k, v, valid: kernel(q, k, v, valid, causal, window), mesh=mesh,
      in_specs=(x_spec, x_spec, x_spec, valid_spec), out_specs=x_spec,
      axis_names=free, check_vma=False)(q, k, v, kv_valid)


def _cudnn(q, k, v, kv_valid, causal, window):
  """cuDNN flash attention. Keys must be right-padded (valid keys first), as prompts are."""
  lengths = None if kv_valid is None else jnp.sum(kv_valid.astype(jnp.int32), axis=-1)
  return jax.nn.dot_product_attention(
      q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
      local_window_size=(window - 1, 0) if window else None, implementation="cudnn")


def splash_mask(t: int, s: int, causal: bool, window: int):
  """The splash-attention mask object for these lengths (no padding: that is segment ids)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  if causal and window:
    return sm.LocalMask((t, s), window_size=(window - 1, 0), offset=0)
  if causal:
    return sm.CausalMask((t, s))
  return sm.FullMask((t, s))


def _splash(q, k, v, kv_valid, causal, window, *, interpret: bool):
  """Pallas splash attention per example; pads are a second kv segment that no query joins.

  Lengths are padded to multiples of 128 (the kernel's tiling); `interpret`
  (off TPU) runs the kernel in the Pallas interpreter, which is slow and meant
  for tests only.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, t, h, d = q.shape
  s = k.shape[1]
  k, v = _repeat_kv(k, h), _repeat_kv(v, h)
  tp, sp = -(-t // 128) * 128, -(-s // 128) * 128
  valid = jnp.ones((b, s), bool) if kv_valid is None else kv_valid
  valid = _pad_to(valid.astype(bool), 1, sp, False)
  bq, bkv = math.gcd(tp, 512), math.gcd(sp, 512)
  kernel = sk.make_splash_mha(
      sm.MultiHeadMask([splash_mask(tp, sp, causal, window)] * h),
      block_sizes=sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                                block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                                block_q_dq=bq, block_kv_dq=bkv),
      head_shards=1, q_seq_shards=1, interpret=interpret)
  qh = _heads_first((q * (d ** -0.5)).astype(q.dtype), tp)  # the kernel does not scale
  kh, vh = _heads_first(k, sp), _heads_first(v, sp)
  seg = sk.SegmentIds(q=jnp.zeros((b, tp), jnp.int32), kv=(~valid).astype(jnp.int32))
  o = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
  return o[:, :, :t].transpose(0, 2, 1, 3).astype(q.dtype)


def splash_dense_mask(t: int, s: int, causal: bool, window: int) -> np.ndarray:
  """The mask a splash kernel is given, as a dense bool array (for tests off TPU)."""
  return np.asarray(splash_mask(t, s, causal, window)[:, :])
