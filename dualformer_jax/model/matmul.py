"""The matmul under every projection, SwiGLU and output head: [N, I] x [I, O] -> float32.

One 2-D product with a float32 result: TPUs and GPUs accumulate in float32
anyway, and on a CPU it is the only form XLA hands to its fast matmul
library (YNNPACK): a dot with a 16-bit result, with several free dimensions
per operand (an einsum such as btd,dhk->bthk), or with a transposed operand
is compiled as converts around a float32 Eigen dot. On a 2-core Xeon with
AMX-BF16, bfloat16 in and float32 out ran at 1,000-1,500 GFLOP/s, the same
product with a bfloat16 result or a transposed operand at 170-240, float32
at 200-350 (docs/benchmarks.md, "The matmuls AMX takes").

So on a CPU the backward pass is written here (`jax.custom_vjp`): the
transposed operands of dx = g w^T and dw = x^T g are materialised row-major
first (`_row_major_t`), and dw, whose rows are the batch's, is taken on each
device's rows and summed (`jax.shard_map`), so that the transposition stays
local instead of gathering the batch. Elsewhere autodiff's own backward.
Shape legend: N rows (batch x positions), I inputs, O outputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dualformer_jax.model.sharding import batch_axes_dividing, target_platform


def matmul(x_NxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
  """x @ w in float32 (operands in their own dtype, e.g. bfloat16)."""
  if target_platform() == "cpu":
    return _cpu_matmul(x_NxI, w_IxO)
  return jnp.matmul(x_NxI, w_IxO, preferred_element_type=jnp.float32)


def _f32_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _row_major_t(a_MxN: jax.Array) -> jax.Array:
  """a.T [N, M] laid out row-major in memory.

  XLA would fold a plain transpose into the dot (a transposed operand, the
  slow path above); a flat copy behind an optimisation barrier cannot be folded.
  """
  flat = jax.lax.optimization_barrier(a_MxN.T.reshape(-1))
  return flat.reshape(a_MxN.shape[::-1])


@jax.custom_vjp
def _cpu_matmul(x_NxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
  return _f32_matmul(x_NxI, w_IxO)


def _cpu_matmul_fwd(x_NxI, w_IxO):
  return _f32_matmul(x_NxI, w_IxO), (x_NxI, w_IxO)


def _cpu_matmul_bwd(res, g_NxO):
  x_NxI, w_IxO = res
  g_NxO = g_NxO.astype(x_NxI.dtype)
  dx_NxI = _f32_matmul(g_NxO, _row_major_t(w_IxO)).astype(x_NxI.dtype)
  return dx_NxI, _weight_grad(x_NxI, g_NxO).astype(w_IxO.dtype)


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def _weight_grad(x_NxI: jax.Array, g_NxO: jax.Array) -> jax.Array:
  """x^T g [I, O] float32: per device over its rows, then summed across the batch axes."""
  mesh = jax.sharding.get_abstract_mesh()
  rows = () if mesh.empty else batch_axes_dividing(x_NxI.shape[0], mesh)
  local = lambda x, g: _f32_matmul(_row_major_t(x), g)  # noqa: E731
  if math.prod(mesh.shape[a] for a in rows) == 1:
    return local(x_NxI, g_NxO)
  return jax.shard_map(lambda x, g: jax.lax.psum(local(x, g), rows), mesh=mesh,
                       in_specs=(P(rows, None), P(rows, None)), out_specs=P(None, None),
                       axis_names=set(rows))(x_NxI, g_NxO)
