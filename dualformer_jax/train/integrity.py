"""Checksums and a finiteness check of a train state, computed on the devices.

A checkpoint records one 64-bit checksum per array; restore recomputes them, so
bytes changed on disk (a flipped bit, garbage of the same size) are caught even
when the file still decodes. The sums are uint32 arithmetic (wrap-around), whose
result does not depend on the order of the additions: the same on any mesh,
sharding or process count, with no host copy of the arrays. Any single changed
element changes both sums (its weight is odd, so invertible mod 2**32).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _words(x: jax.Array) -> jax.Array:
  """The array's raw bits as a flat uint32 vector (2 words per 64-bit element)."""
  size = np.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).reshape(-1)
  if size in (4, 8):  # 64-bit elements become [..., 2] words
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  narrow = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32).reshape(-1)


def _leaf_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  w = _words(x)
  i = jnp.arange(w.shape[0], dtype=jnp.uint32)
  a = jnp.sum(w * (jnp.uint32(2) * i + jnp.uint32(1)), dtype=jnp.uint32)
  b = jnp.sum((w ^ (w >> jnp.uint32(15))) * (i * jnp.uint32(0x9E3779B1) | jnp.uint32(1)), dtype=jnp.uint32)
  finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
            else jnp.bool_(True))
  return jnp.stack([a, b]), finite


def _digest(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  sums, finite = zip(*[_leaf_sums(x) for x in leaves])
  return jnp.stack(sums), jnp.stack(finite)


@functools.lru_cache(maxsize=8)
def _jitted(mesh: jax.sharding.Mesh | None):
  """_digest jitted with replicated outputs on `mesh`, so every process can read them."""
  if mesh is None:
    return jax.jit(_digest)
  out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(_digest, out_shardings=(out, out))


def paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def digest(tree: Any) -> tuple[dict[str, str], list[str]]:
  """({leaf path: 16 hex digits}, [paths of leaves holding NaN or Inf]) of a pytree of arrays."""
  names = paths(tree)
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return {}, []
  sharding = getattr(leaves[0], "sharding", None)
  mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None
  sums, finite = jax.device_get(_jitted(mesh)(leaves))
  sums, finite = np.asarray(sums), np.asarray(finite)
  checks = {n: f"{int(s[0]):08x}{int(s[1]):08x}" for n, s in zip(names, sums)}
  return checks, [n for n, ok in zip(names, finite) if not ok]


def mismatches(recorded: dict[str, str], actual: dict[str, str]) -> list[str]:
  """Leaf paths whose checksum differs from the recorded one (or is missing on either side)."""
  return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))


def subtree(checksums: dict[str, str], prefix: str) -> dict[str, str]:
  """The checksums of the leaves under leaf path `prefix` (".params"); all when it is ""."""
  return {k: v for k, v in checksums.items()
          if not prefix or (k.startswith(prefix) and k[len(prefix):len(prefix) + 1] in "[.")}
