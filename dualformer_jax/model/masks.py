"""Attention masks and the layouts every attention implementation shares.

Masks: `kv_valid` [B, S] marks real keys (pads False); `causal` lets query i
see keys j <= i; `window` > 0 (with causal) keeps only j > i - window
(Mistral's sliding window). A masked score is NEG, finite, so a query with no
visible key gets a finite (meaningless) output, never NaN.

Shape legend: B batch, T queries, S keys, H query heads, G key/value heads,
K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -1e30  # masked score: finite, so a fully masked row gives no NaN


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


def repeat_kv(k_BxSxGxK: jax.Array, heads: int) -> jax.Array:
  """[B, S, G, K] -> [B, S, heads, K], each key/value head repeated for its query heads."""
  g = k_BxSxGxK.shape[2]
  return k_BxSxGxK if g == heads else jnp.repeat(k_BxSxGxK, heads // g, axis=2)


def pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """x padded with `value` at the end of `axis` to `size`."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def heads_first(x_BxTxHxK: jax.Array, length: int) -> jax.Array:
  """[B, T, H, K] zero-padded along T to `length`, as [B, H, length, K] (the kernels' layout)."""
  return pad_to(x_BxTxHxK, 1, length).transpose(0, 2, 1, 3)
