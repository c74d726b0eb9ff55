"""The layers both models are built from: params, RMSNorm, RoPE, SwiGLU, the layer scan.

The planning encoder-decoder (model/transformer.py) keeps each block's params
in its own module; the decoder-only LM (lm/model.py) stores them stacked on a
leading layer axis (its Hugging Face table and checkpoints read that layout).
So the math here is written as functions of arrays, and the modules wrap them
for the planning model under its own param names.

Params are created with logical axis names (model/sharding.py maps them to
the mesh) and never sharded at creation. Compute runs in the caller's dtype;
norms and rotations in float32.

Shape legend: B batch, T tokens, D model dim, N heads, K head dim, F MLP dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualformer_jax.model import matmul
from dualformer_jax.model.model_config import REMAT_POLICIES


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str | None, ...],
          dtype: Any = jnp.float32) -> nnx.Param:
  """A param with logical axis names, placed later (jit out_shardings or the loader).

  eager_sharding=False: building a model never needs a mesh in context.
  """
  return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)), out_sharding=names,
                   eager_sharding=False)


def dense_init(fan_in: int):
  return nnx.initializers.normal(stddev=fan_in ** -0.5)


def count_params(model: nnx.Module) -> int:
  """Number of parameters (all nnx.Param leaves of the model)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def graphdef_of(make_model: Callable[[], nnx.Module]) -> nnx.GraphDef:
  """The static half of a model (nnx.merge(graphdef, params) rebuilds it); no arrays made."""
  return nnx.split(nnx.eval_shape(make_model), nnx.Param)[0]


# ------------------------------------------------------------------ RMSNorm

def rms_norm(x_BxTxD: jax.Array, scale_D: jax.Array, eps: float, dtype: jnp.dtype) -> jax.Array:
  """x / rms(x) * scale in float32, returned in the compute dtype."""
  x = x_BxTxD.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * scale_D.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))).astype(dtype)


class RMSNorm(nnx.Module):
  """`rms_norm` with its own scale [D] (initialised to ones)."""

  def __init__(self, dim: int, eps: float, dtype: jnp.dtype, *, rngs: nnx.Rngs):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return rms_norm(x_BxTxD, self.scale[...], self.eps, self.dtype)


# ------------------------------------------------------------------ RoPE

@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1's frequency-dependent RoPE scaling (HF rope_type "llama3")."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None
                  ) -> np.ndarray:
  """Inverse frequencies [K/2] float32 (Llama 3.1 scaling too), in numpy: a constant of the program.

  theta ** (-i / K), not transformers' 1 / theta ** (i / K): the two differ in
  float32 rounding only (the LM's parity tests hold); this is the form the
  committed tables were made with (a change of rounding moves bf16 training,
  and over thousands of steps the tables, by as much as a change of seed).
  """
  k = head_dim
  inv = theta ** (-np.arange(0, k, 2, dtype=np.float32) / np.float32(k))
  if scaling is None:
    return inv
  sc, old = scaling, scaling.original_max_position_embeddings
  low_wavelen, high_wavelen = old / sc.low_freq_factor, old / sc.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
  smooth = (old / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
  smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _cos_sin(pos_T, inv_freq_K2: np.ndarray, xp) -> tuple:
  """RoPE's cos and sin [T, K/2] at positions pos_T, in numpy (a constant) or jnp."""
  ang_TxK2 = pos_T.astype(xp.float32)[:, None] * inv_freq_K2[None, :]
  return xp.cos(ang_TxK2), xp.sin(ang_TxK2)


def rope(x_BxTxNxK: jax.Array, pos_T: np.ndarray | jax.Array, inv_freq_K2: np.ndarray,
         num_pos: int | None = None) -> jax.Array:
  """Rotate-half RoPE (HF's convention: pairs are (i, i + K/2)) at positions pos_T.

  The same positions for every row; computed in float32, returned in x's dtype.
  The cos/sin table is a constant of the compiled program (numpy) whenever it
  can be: positions known when tracing (every full-sequence pass) give it
  directly, and traced positions below num_pos (decoding: the cache's length)
  index a table of num_pos rows. Computed in the program instead, XLA:CPU
  fuses a cosine and a sine into every element's rotation (14% of the training
  step's thread time; 9% of sampling's) and drops optimisation barriers that
  would stop it; traced positions without num_pos still take that path.
  """
  if isinstance(pos_T, np.ndarray):
    cos, sin = _cos_sin(pos_T, inv_freq_K2, np)
  elif num_pos is not None:  # rows pos_T of the num_pos-row table
    cos, sin = (jnp.take(t, pos_T, axis=0, mode="clip")
                for t in _cos_sin(np.arange(num_pos), inv_freq_K2, np))
  else:
    cos, sin = _cos_sin(pos_T, inv_freq_K2, jnp)
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  x = x_BxTxNxK.astype(jnp.float32)
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxK.dtype)


# ------------------------------------------------------------------ projections, SwiGLU

def dense(x: jax.Array, w: jax.Array, in_dims: int = 1, dtype: jnp.dtype | None = None
          ) -> jax.Array:
  """x [..., *I] @ w [*I, *O] -> [..., *O] in `dtype` (default x's), as one 2-D matmul.

  I: w's first in_dims dims. The product is model/matmul.py's: [N, I] x [I, O]
  with a float32 result, the form the CPU's matmul library takes.
  """
  lead, i = x.shape[:x.ndim - in_dims], math.prod(w.shape[:in_dims])
  y_NxO = matmul.matmul(x.reshape(-1, i), w.reshape(i, -1)).astype(dtype or x.dtype)
  return y_NxO.reshape(*lead, *w.shape[in_dims:])


def project(x_BxTxD: jax.Array, w_DxNxK: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x [B, T, D] @ w [D, N, K] -> [B, T, N, K] in the compute dtype (Q, K or V heads)."""
  return dense(x_BxTxD.astype(dtype), w_DxNxK.astype(dtype))


def rotary_qkv(x_BxTxD: jax.Array, w_q: jax.Array, w_k: jax.Array, w_v: jax.Array,
               pos_T: np.ndarray | jax.Array, inv_freq_K2: np.ndarray, dtype: jnp.dtype,
               num_pos: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Q, K, V heads [B, T, N, K] in the compute dtype, RoPE on Q and K (`rope`'s num_pos).

  Q and K are rotated from the projections' float32 results and rounded once.
  """
  q, k = (rope(dense(x_BxTxD.astype(dtype), w.astype(dtype), dtype=jnp.float32), pos_T,
               inv_freq_K2, num_pos).astype(dtype) for w in (w_q, w_k))
  return q, k, project(x_BxTxD, w_v, dtype)


def project_out(o_BxTxNxK: jax.Array, w_NxKxD: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """Attention heads [B, T, N, K] @ w [N, K, D] -> [B, T, D]."""
  return dense(o_BxTxNxK, w_NxKxD.astype(dtype), in_dims=2)


def swiglu(x_BxTxD: jax.Array, w_gate_DxF: jax.Array, w_up_DxF: jax.Array,
           w_down_FxD: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """w_down(silu(x w_gate) * (x w_up)), matmuls in the compute dtype, the gating in float32."""
  gate_BxTxF, up_BxTxF = (dense(x_BxTxD.astype(dtype), w.astype(dtype), dtype=jnp.float32)
                          for w in (w_gate_DxF, w_up_DxF))
  return dense((jax.nn.silu(gate_BxTxF) * up_BxTxF).astype(dtype), w_down_FxD.astype(dtype))


class SwiGLU(nnx.Module):
  """`swiglu` with its own kernels w1 (gate), w3 (up), w2 (down).

  Separate kernels rather than one fused [D, 2F]: slicing a fused output costs
  a pad + add pass over the activations in the backward, which on CPU was
  slower than the larger fused matmul saves.
  """

  def __init__(self, dim: int, ffn: int, dtype: jnp.dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w1 = param(rngs, dense_init(dim), (dim, ffn), ("embed", "mlp"))
    self.w3 = param(rngs, dense_init(dim), (dim, ffn), ("embed", "mlp"))
    self.w2 = param(rngs, dense_init(ffn), (ffn, dim), ("mlp", "embed"))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return swiglu(x_BxTxD, self.w1[...], self.w3[...], self.w2[...], self.dtype)


# ------------------------------------------------------------------ layer stacks

def scan_layers(layer: Callable[[jax.Array, Any], jax.Array], x: jax.Array, stacked: Any,
                remat: str) -> jax.Array:
  """x through layer(x, params) for each slice of `stacked` (leading layer axis).

  One layer is compiled, not L. Unless remat is "none", the body is
  `jax.checkpoint`ed with the policy, so the backward pass keeps only what the
  policy saves plus each layer's input; the scan makes that hold on every
  backend (XLA:CPU drops remat's optimisation barriers, and CSE would merge an
  unrolled loop's recomputation back into its forward).
  """
  if remat != "none":
    layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat])
  return jax.lax.scan(lambda x, p: (layer(x, p), None), x, stacked)[0]
