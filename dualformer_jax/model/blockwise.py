"""Flash-style attention in pure JAX: O(T x block) memory, forward and backward.

Blocks of queries and keys with an online softmax; a custom VJP recomputes
each block's probabilities once from the saved logsumexp (FlashAttention-2
style), so no [T, S] array is ever kept. Runs on every backend: the long-sequence
path on CPU and the fallback where no kernel fits (model/attention.py picks).
Causal and windowed masks skip the key blocks no query of a block can see.

Shape legend: B batch, H heads, T queries (Tp padded), S keys, K head dim;
bq, bk queries and keys per block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualformer_jax.model.masks import NEG, heads_first, pad_to, repeat_kv, visible

# Queries and keys per block, at most. On a 2-core Xeon (AMX-BF16), 128 against 512
# made forward + backward 2.4-2.8x faster at 384 tokens (the causal mask skips a
# third of the block pairs, and a block's scores stay in cache) and 1.25-1.6x at
# 2,048, with less memory; 64 was slower than 128 (docs/benchmarks.md).
BLOCK = 128


def block_len(n: int, block: int) -> int:
  """The length of each of ceil(n / block) equal blocks covering n: at most `block`,
  padding n by fewer positions than there are blocks (160 -> 2 x 80, not 2 x 128)."""
  return -(-n // -(-n // block))


def blockwise(q, k, v, kv_valid, causal, window, *, block: int = BLOCK):
  """Attention in blocks of at most `block` queries and keys -> [B, T, H, K] in q's dtype.

  q [B, T, H, K], k = v [B, S, G, K], kv_valid [B, S] or None. Memory O(T x block)
  in forward and backward (a custom VJP recomputes each block's scores).
  """
  (b, t, h, _), s = q.shape, k.shape[1]
  k, v = repeat_kv(k, h), repeat_kv(v, h)
  bq, bk = block_len(t, block), block_len(s, block)
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  valid = jnp.ones((b, s), bool) if kv_valid is None else kv_valid
  valid = pad_to(valid.astype(bool), 1, sp, False)
  # [B, H, T, K] layout inside: every block product is a plain batched matmul.
  qh, kh, vh = heads_first(q, tp), heads_first(k, sp), heads_first(v, sp)
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


def _scores(q_i, k_j, valid_j, i, j, bq, bk, causal, window, keys_first: bool = False):
  """Masked float32 scores [B, H, bq, bk] of query block i against key block j, and the
  mask; keys_first: both as [B, H, bk, bq] (the backward's layout, see _flash_bwd)."""
  eq = "bhsk,bhqk->bhsq" if keys_first else "bhqk,bhsk->bhqs"
  a, b = (k_j, q_i) if keys_first else (q_i, k_j)
  s = jnp.einsum(eq, a, b, preferred_element_type=jnp.float32) * (q_i.shape[-1] ** -0.5)
  mask = visible(bq, bk, valid_j, causal, window, q_start=i * bq, k_start=j * bk)
  mask = jnp.swapaxes(mask, -1, -2) if keys_first else mask
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
  """One pass over key blocks, each against the query blocks that see it (FlashAttention-2
  style): a block's probabilities are recomputed once from the saved logsumexp and give
  its dK, dV and its share of dQ, which accumulates across key blocks."""
  q, k, v, valid, o, lse = res
  b, h, tp, d = q.shape
  nq, nk = tp // bq, k.shape[2] // bk
  scale = d ** -0.5
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, H, Tp]

  def kv_block(dq, args):
    j, k_j, v_j, valid_j = args

    def body(i, carry):
      dq, dk, dv = carry
      q_i, do_i, lse_i, delta_i = (jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=2)
                                   for x in (q, do, lse, delta))
      # Keys first ([.., bk, bq]): dV and dK contract queries along the minor axis, which
      # YNNPACK takes in bfloat16 (otherwise XLA:CPU converts both operands for Eigen).
      s_t, mask_t = _scores(q_i, k_j, valid_j, i, j, bq, bk, causal, window, keys_first=True)
      p_t = jnp.where(mask_t, jnp.exp(s_t - lse_i[..., None, :]), 0.0)  # [B, H, bk, bq]
      dv = dv + jnp.einsum("bhsq,bhqk->bhsk", p_t.astype(do.dtype), do_i,
                           preferred_element_type=jnp.float32)
      dp_t = jnp.einsum("bhsk,bhqk->bhsq", v_j, do_i, preferred_element_type=jnp.float32)
      ds_t = (p_t * (dp_t - delta_i[..., None, :])).astype(q.dtype)
      dk = dk + jnp.einsum("bhsq,bhqk->bhsk", ds_t, q_i, preferred_element_type=jnp.float32)
      dq_i = jax.lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=2) + jnp.einsum(
          "bhsq,bhsk->bhqk", ds_t, k_j, preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=2), dk, dv

    lo, hi = _q_range(j, bq, bk, nq, causal, window)
    zeros = jnp.zeros((b, h, bk, d), jnp.float32)
    dq, dk, dv = jax.lax.fori_loop(lo, hi, body, (dq, zeros, zeros))
    return dq, ((dk * scale).astype(k.dtype), dv.astype(v.dtype))

  valid_blocks = jnp.moveaxis(valid.reshape(b, nk, bk), 1, 0)  # [nk, B, bk]
  dq, (dk, dv) = jax.lax.scan(kv_block, jnp.zeros((b, h, tp, d), jnp.float32),
                              (jnp.arange(nk), _blocks(k, nk), _blocks(v, nk), valid_blocks))
  return (dq * scale).astype(q.dtype), _unblocks(dk), _unblocks(dv), None


_flash.defvjp(_flash_fwd, _flash_bwd)
