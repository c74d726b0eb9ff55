"""The accelerator kernels (cuDNN flash attention, TPU splash) and how they run sharded.

Both are custom calls that XLA cannot partition, so under a mesh `per_shard`
runs them inside `shard_map`: each device attends over its own rows (batch
axes data x fsdp) and heads (tensor), which needs no communication. Both take
(q [B, T, H, K], k = v [B, S, G, K], kv_valid [B, S] or None, causal, window)
and return [B, T, H, K].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dualformer_jax.model.masks import heads_first, pad_to, repeat_kv
from dualformer_jax.model.sharding import LOGICAL_RULES, auto_axes, batch_axes_dividing

HEAD_AXIS = dict(LOGICAL_RULES)["heads"]  # "tensor"


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
  free = set() if mesh.empty else auto_axes(mesh)
  if not free:
    return kernel(q, k, v, kv_valid, causal, window)
  (b, _, h, _), g = q.shape, k.shape[2]
  batch = batch_axes_dividing(b, mesh)
  heads = None
  if HEAD_AXIS in free and h % mesh.shape[HEAD_AXIS] == 0:
    heads = HEAD_AXIS
    if g % mesh.shape[HEAD_AXIS]:
      k, v = repeat_kv(k, h), repeat_kv(v, h)
  if kv_valid is None:
    kv_valid = jnp.ones(k.shape[:2], bool)
  rows = batch or None
  x_spec, valid_spec = P(rows, None, heads, None), P(rows, None)
  # check_vma=False: the kernels are opaque custom calls with no varying-axes rules.
  return jax.shard_map(
      lambda q, k, v, valid: kernel(q, k, v, valid, causal, window), mesh=mesh,
      in_specs=(x_spec, x_spec, x_spec, valid_spec), out_specs=x_spec,
      axis_names=free, check_vma=False)(q, k, v, kv_valid)


def cudnn(q, k, v, kv_valid, causal, window):
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


def splash(q, k, v, kv_valid, causal, window, *, interpret: bool):
  """Pallas splash attention per example; pads are a second kv segment that no query joins.

  Lengths are padded to multiples of 128 (the kernel's tiling); `interpret`
  (off TPU) runs the kernel in the Pallas interpreter, which is slow and meant
  for tests only.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, t, h, d = q.shape
  s = k.shape[1]
  k, v = repeat_kv(k, h), repeat_kv(v, h)
  tp, sp = -(-t // 128) * 128, -(-s // 128) * 128
  valid = jnp.ones((b, s), bool) if kv_valid is None else kv_valid
  valid = pad_to(valid.astype(bool), 1, sp, False)
  bq, bkv = math.gcd(tp, 512), math.gcd(sp, 512)
  kernel = sk.make_splash_mha(
      sm.MultiHeadMask([splash_mask(tp, sp, causal, window)] * h),
      block_sizes=sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                                block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                                block_q_dq=bq, block_kv_dq=bkv),
      head_shards=1, q_seq_shards=1, interpret=interpret)
  qh = heads_first((q * (d ** -0.5)).astype(q.dtype), tp)  # the kernel does not scale
  kh, vh = heads_first(k, sp), heads_first(v, sp)
  seg = sk.SegmentIds(q=jnp.zeros((b, tp), jnp.int32), kv=(~valid).astype(jnp.int32))
  o = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
  return o[:, :, :t].transpose(0, 2, 1, 3).astype(q.dtype)


def splash_dense_mask(t: int, s: int, causal: bool, window: int) -> np.ndarray:
  """The mask a splash kernel is given, as a dense bool array (for tests off TPU)."""
  return np.asarray(splash_mask(t, s, causal, window)[:, :])
