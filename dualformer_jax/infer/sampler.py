"""Batched autoregressive sampling with a per-row forced decoder prefix.

The mode of a Dualformer answer is chosen by the prefix the decoder is forced
to start with (PAPER.md, "Controlling the mode at inference"): `bos plan`
(fast), `bos create` (slow) or just `bos` (auto). The sampler itself knows
nothing about tasks: it gets encoder ids, a prefix per row, and a key.

Rows are prompts x samples, prompt-major: row r belongs to prompt
r // num_samples. Decoding is jitted `lax.while_loop`s over positions (their
carry a `_LoopState`) through the models' one cached-decoding API,
`init_cache(enc_ids, samples, max_len, block_len)` and `decode_step(tok, pos,
cache, num_blocks=...)` (the DecodeModel protocol), built for many rows per
prompt. The planning Transformer encodes `enc_ids`; a decoder-only LM
(lm/model.py) gets no enc_ids (None: [Np, 0]) and its prompt as the forced
prefix, fed through the same cache one position per step:
  * cross-attention K/V are computed once per prompt, not per row;
  * the self-attention cache is split into blocks of positions, and the
    sampler runs one loop per block, attending only to the blocks reached.
Small batches decode memory-bound on the cache, so both cut the bytes read
per token: preset s, 1 prompt x 64 rows x 384 tokens on 2 CPU cores went from
~0.9k tokens/s (one [L, R, max_len, H, Dh] cache per step) to ~7k.

Given a mesh whose only split is `data` (the CPU default: config.mesh.cpu_devices
devices, model/sharding.py), each device decodes its own prompts' rows in its own
loop (shard_map): no collective per step, and a row block stops when its rows are
done. A decode step of 64 rows is too small for XLA to spread over threads, so on
2 CPU cores this ran ~1.6x faster than one device. Other meshes (fsdp, tensor)
decode as one program with GSPMD. The samples do not depend on the split: every
step draws the uniforms of all R rows from one key and each device takes its own.

Shape legend: Np prompts, S samples per prompt, R = Np * S rows, P prompt
length, K prefix length, L max_len (output length), W cache block length,
H heads, Dh head dim, D model dim, V vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from dualformer_jax.data.vocab import EOS_ID, PAD_ID
from dualformer_jax.infer.decode_model import DecodeModel

# Cache blocks: compile time grows with their square, and past 4 blocks the
# extra ops ate the saved bytes (preset s, 385 positions, 2-core CPU).
_MAX_BLOCKS = 4
_MIN_BLOCK = 32  # positions per block, at least
_PREFIX_ROUND = 4  # prefix columns are padded to a multiple of this


class Samples(NamedTuple):
  ids: jax.Array  # [R, L] int32: prefix, generated tokens, eos, then pad (0)
  lengths: jax.Array  # [R] int32: tokens up to and including eos (L if none)
  finished: jax.Array  # [R] bool: the row emitted eos


class _LoopState(NamedTuple):
  """The carry of the decoding loops."""
  t: jax.Array  # [] int32: the position fed next
  out_RxL: jax.Array  # [R, L] int32: forced prefix, then the tokens picked so far, then fill
  cache: Any  # the model's decode cache (init_cache)
  done_R: jax.Array  # [R] bool: the row emitted eos
  len_R: jax.Array  # [R] int32: tokens up to and including eos (L until then)


def stack_prefixes(prefixes: Sequence[Sequence[int]], width: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-row prefixes -> (ids [R, K] zero-padded, lengths [R]); K = width, or the
  longest prefix (a fixed width keeps the shapes, and the compiled sampler, of every batch)."""
  if not prefixes or min(len(p) for p in prefixes) < 1:
    raise ValueError("every row needs a prefix of at least one token (bos)")
  k = max(len(p) for p in prefixes)
  if width is not None:
    if width < k:
      raise ValueError(f"width={width} is narrower than the longest prefix ({k} tokens)")
    k = width
  ids_RxK = np.zeros((len(prefixes), k), np.int32)
  for r, p in enumerate(prefixes):
    ids_RxK[r, :len(p)] = p
  return ids_RxK, np.asarray([len(p) for p in prefixes], np.int32)


def default_block_len(max_len: int) -> int:
  """Cache block length: at most _MAX_BLOCKS blocks, each >= _MIN_BLOCK positions."""
  return max(_MIN_BLOCK, -(-max_len // _MAX_BLOCKS))


def _pick(logits_RxV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int,
          pad_id: int | None = PAD_ID, rows: tuple[jax.Array | int, int] = (0, 0)) -> jax.Array:
  """Next token per row: argmax when top_k == 1, else a (top-k filtered) sample.

  Sampling inverts the CDF with one uniform per row: exact, and ~6x cheaper
  on CPU than Gumbel-max (`jax.random.categorical`), which draws R x V
  numbers per step. pad is never picked: it is never a training target, and
  a pad inside a row would blur where the response ends (pad_id None: a
  vocabulary without pad, nothing is masked). rows = (first, total): these
  logits are rows first.. of `total` drawn from `key` (0 total: all of them).
  """
  logits_RxV = logits_RxV.astype(jnp.float32)
  if pad_id is not None:
    logits_RxV = logits_RxV.at[:, pad_id].set(-jnp.inf)
  if top_k == 1:
    return jnp.argmax(logits_RxV, axis=-1).astype(jnp.int32)
  logits_RxV = logits_RxV / temperature
  if 0 < top_k < logits_RxV.shape[-1]:
    kth_Rx1 = jax.lax.top_k(logits_RxV, top_k)[0][:, -1:]
    logits_RxV = jnp.where(logits_RxV >= kth_Rx1, logits_RxV, -jnp.inf)
  cdf_RxV = jnp.cumsum(jax.nn.softmax(logits_RxV, axis=-1), axis=-1)
  # x in (0, total]: the first token whose cdf reaches x; zero-probability
  # tokens (pad, outside the top k) add no width, so they are never picked.
  r = logits_RxV.shape[0]
  u_Rx1 = jax.random.uniform(key, (rows[1] or r, 1))
  u_Rx1 = jax.lax.dynamic_slice_in_dim(u_Rx1, rows[0], r) if rows[1] else u_Rx1
  x_Rx1 = (1.0 - u_Rx1) * cdf_RxV[:, -1:]
  return jnp.sum(cdf_RxV < x_Rx1, axis=-1).astype(jnp.int32)


def _decode(graphdef: nnx.GraphDef, params: nnx.State, enc_ids_NpxP: jax.Array,
            prefix_RxK: jax.Array, prefix_len_R: jax.Array, key: jax.Array,
            temperature: jax.Array, *, num_samples: int, max_len: int, top_k: int,
            eos_id: int | tuple[int, ...], block_len: int, pad_id: int | None,
            rows: tuple[jax.Array | int, int] = (0, 0)) -> Samples:
  """The decoding loops for these rows (rows: their place among all rows, see _pick)."""
  model: DecodeModel = nnx.merge(graphdef, params)
  r, k = prefix_RxK.shape
  # Positions 0 .. max_len - 2 are fed (each yields the token after it).
  num_blocks = -(-(max_len - 1) // block_len)
  cache = model.init_cache(enc_ids_NpxP, num_samples, max_len - 1, block_len)
  eos_E = jnp.asarray(eos_id, jnp.int32).reshape(-1)
  # What fills a row after eos (never fed as a real token: lengths mark the end).
  fill = eos_E[0] if pad_id is None else pad_id
  in_prefix_RxK = jnp.arange(k)[None, :] < prefix_len_R[:, None]
  out_RxL = jnp.full((r, max_len), fill, jnp.int32)  # what is never written stays `fill`
  out_RxL = out_RxL.at[:, :k].set(jnp.where(in_prefix_RxK, prefix_RxK, fill).astype(jnp.int32))
  state = _LoopState(jnp.int32(0), out_RxL, cache, jnp.zeros((r,), bool),
                     jnp.full((r,), max_len, jnp.int32))

  # Stage b feeds the positions of cache block b.
  for b in range(num_blocks):
    end = min((b + 1) * block_len, max_len - 1)

    def cond(s: _LoopState, end=end):
      return (s.t < end) & ~jnp.all(s.done_R)

    def body(s: _LoopState, b=b) -> _LoopState:
      t = s.t
      tok_R = jax.lax.dynamic_index_in_dim(s.out_RxL, t, axis=1, keepdims=False)
      logits_RxV, cache = model.decode_step(tok_R, t, s.cache, num_blocks=b + 1)
      sampled_R = _pick(logits_RxV, jax.random.fold_in(key, t), temperature, top_k, pad_id,
                        rows)
      forced_R = t + 1 < prefix_len_R
      given_R = jax.lax.dynamic_index_in_dim(s.out_RxL, t + 1, axis=1, keepdims=False)
      nxt_R = jnp.where(forced_R, given_R, jnp.where(s.done_R, fill, sampled_R))
      out_RxL = jax.lax.dynamic_update_slice(s.out_RxL, nxt_R[:, None], (0, t + 1))
      stop_R = ~s.done_R & ~forced_R & jnp.isin(nxt_R, eos_E)
      return _LoopState(t + 1, out_RxL, cache, s.done_R | stop_R,
                        jnp.where(stop_R, t + 2, s.len_R))

    state = jax.lax.while_loop(cond, body, state)
  return Samples(state.out_RxL, state.len_R, state.done_R)


_STATIC = ("graphdef", "num_samples", "max_len", "top_k", "eos_id", "block_len", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sample(graphdef, params, enc_ids_NpxP, prefix_RxK, prefix_len_R, key, temperature, **kw
            ) -> Samples:
  """All rows in one program (GSPMD splits it over a mesh in context)."""
  return _decode(graphdef, params, enc_ids_NpxP, prefix_RxK, prefix_len_R, key, temperature,
                 **kw)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "mesh"))
def _sample_split(graphdef, params, enc_ids_NpxP, prefix_RxK, prefix_len_R, key, temperature, *,
                  mesh: Mesh, **kw) -> Samples:
  """Each device of mesh's data axis decodes its own prompts' rows in its own loops."""
  total = prefix_RxK.shape[0]

  def local(params, enc_ids, prefix, prefix_len, key, temperature):
    first = jax.lax.axis_index("data") * prefix.shape[0]
    return _decode(graphdef, params, enc_ids, prefix, prefix_len, key, temperature,
                   rows=(first, total), **kw)

  rows = P("data")
  # check_vma=False: the loop carries (cache, outputs) start as per-device constants.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows, rows, P(), P()),
                       out_specs=rows, check_vma=False)(
                           params, enc_ids_NpxP, prefix_RxK, prefix_len_R, key, temperature)


def row_split(mesh: Mesh | None, num_prompts: int, num_samples: int) -> int:
  """How many ways `sample` splits the rows over devices with a loop each (module doc):
  the data axis of a data-only mesh, when it divides the prompts, or else every
  prompt's samples (each device then encodes the prompt for its share); 1: no split."""
  if mesh is None or any(n > 1 for a, n in mesh.shape.items() if a != "data"):
    return 1
  d = mesh.shape["data"]
  return d if num_prompts % d == 0 or num_samples % d == 0 else 1


def sample(graphdef: nnx.GraphDef, params: nnx.State, enc_ids: jax.Array | np.ndarray | None,
           prefix: jax.Array | np.ndarray, prefix_len: jax.Array | np.ndarray,
           key: jax.Array, *, num_samples: int, max_len: int, temperature: float = 1.0,
           top_k: int = 0, eos_id: int | tuple[int, ...] = EOS_ID, block_len: int | None = None,
           pad_id: int | None = PAD_ID, mesh: Mesh | None = None) -> Samples:
  """Samples num_samples continuations per prompt; returns Samples(ids, lengths, finished).

  enc_ids [Np, P] (pad 0), or None for a decoder-only LM (its prompts are the
  prefixes; Np = R / num_samples); prefix [Np * num_samples, K] with prefix_len [R]
  (1 <= prefix_len <= K; the rest of a row's prefix is ignored); (graphdef,
  params) from `nnx.split(model)`. top_k: 0 = off, 1 = greedy; pad is never
  sampled (pad_id None: none is masked, and rows are filled after eos with
  the first eos id); a tuple eos_id stops a row at any of its ids. Compiled
  once per shape and static setting; the same key gives the same samples.
  Rows that never emit eos come back with finished=False and length max_len.
  block_len: cache block (default: default_block_len). mesh: the devices
  to decode on, rows split over its batch axes (row_split: one loop per
  device); None: as the inputs and any mesh in context place them.
  """
  lens = np.asarray(prefix_len)
  if lens.size and (lens.min() < 1 or lens.max() > np.shape(prefix)[-1]):
    raise ValueError(f"prefix_len must be in [1, {np.shape(prefix)[-1]}], "
                     f"got {lens.min()}..{lens.max()}")
  if enc_ids is None:
    enc_ids = np.zeros((np.shape(prefix)[0] // num_samples, 0), np.int32)
  enc_ids, prefix, prefix_len = (jnp.asarray(x, jnp.int32) for x in (enc_ids, prefix, prefix_len))
  if enc_ids.ndim != 2 or prefix.ndim != 2 or prefix_len.ndim != 1:
    raise ValueError(f"expected enc_ids [Np, P], prefix [R, K], prefix_len [R]; got "
                     f"{enc_ids.shape}, {prefix.shape}, {prefix_len.shape}")
  rows = enc_ids.shape[0] * num_samples
  if prefix.shape[0] != rows or prefix_len.shape[0] != rows:
    raise ValueError(f"{enc_ids.shape[0]} prompts x {num_samples} samples = {rows} rows, "
                     f"but prefix has {prefix.shape[0]} and prefix_len {prefix_len.shape[0]}")
  if not 1 <= prefix.shape[1] <= max_len - 1:
    raise ValueError(f"prefix length {prefix.shape[1]} leaves no room in max_len={max_len}")
  if top_k < 0 or temperature <= 0:
    raise ValueError(f"need top_k >= 0 and temperature > 0, got {top_k}, {temperature}")
  # Round K up (prefix_len decides what is forced) so that the modes' prefixes,
  # `bos` and `bos plan`, share one compiled sampler.
  k = prefix.shape[1]
  k_round = min(-(-k // _PREFIX_ROUND) * _PREFIX_ROUND, max_len - 1)
  prefix = jnp.pad(prefix, ((0, 0), (0, k_round - k)))
  block_len = default_block_len(max_len) if block_len is None else block_len
  if block_len < 1:
    raise ValueError(f"block_len={block_len}: must be >= 1")
  kw = dict(num_samples=num_samples, max_len=max_len, top_k=top_k, eos_id=eos_id,
            block_len=block_len, pad_id=pad_id)
  return _program(graphdef, params, enc_ids, prefix, prefix_len, key, jnp.float32(temperature),
                  mesh=mesh, **kw)


def _program(graphdef, params, enc_ids, prefix, prefix_len, key, temperature, *, mesh,
             lower: bool = False, **kw):
  """Calls (or, with lower=True, lowers) the jitted program for this mesh and these shapes."""
  d = row_split(mesh, enc_ids.shape[0], kw["num_samples"])
  if d > 1:
    if enc_ids.shape[0] % d:  # each device samples a share of every prompt's rows
      enc_ids = (jnp.repeat(enc_ids, d, axis=0) if not isinstance(enc_ids, jax.ShapeDtypeStruct)
                 else jax.ShapeDtypeStruct((enc_ids.shape[0] * d, *enc_ids.shape[1:]),
                                           enc_ids.dtype, sharding=enc_ids.sharding))
      kw["num_samples"] //= d
    fn, kw = _sample_split, dict(kw, mesh=mesh)
  else:
    fn = _sample
  args = (graphdef, params, enc_ids, prefix, prefix_len, key, temperature)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    return fn.lower(*args, **kw) if lower else fn(*args, **kw)


def lower(graphdef: nnx.GraphDef, params: nnx.State, enc_ids: jax.ShapeDtypeStruct,
          prefix: jax.ShapeDtypeStruct, prefix_len: jax.ShapeDtypeStruct, *, num_samples: int,
          max_len: int, top_k: int = 0, eos_id: int | tuple[int, ...] = EOS_ID,
          block_len: int | None = None, pad_id: int | None = PAD_ID, mesh: Mesh | None = None):
  """The program `sample` runs for inputs of these shapes and shardings, lowered and not
  run (compile.py sizes it for devices that are not here). prefix's width is taken as is."""
  block_len = default_block_len(max_len) if block_len is None else block_len
  return _program(graphdef, params, enc_ids, prefix, prefix_len, jax.random.key(0),
                  jnp.float32(1.0), mesh=mesh, lower=True, num_samples=num_samples,
                  max_len=max_len, top_k=top_k, eos_id=eos_id, block_len=block_len,
                  pad_id=pad_id)


def sample_model(model: DecodeModel, enc_ids, prefix, prefix_len, key: jax.Array,
                 **kwargs) -> Samples:
  """`sample` for a live model object (splits it first)."""
  graphdef, params = nnx.split(model)
  return sample(graphdef, params, enc_ids, prefix, prefix_len, key, **kwargs)
