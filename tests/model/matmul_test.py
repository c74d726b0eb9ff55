"""model/matmul.py: the CPU backward equals autodiff's, keeps the batch local and feeds the
matmul library only canonical dots."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from dualformer_jax.model import matmul


def _operands(dtype, n=48, i=24, o=40):
  rng = np.random.default_rng(0)
  x, w, c = rng.normal(size=(n, i)), rng.normal(size=(i, o)) / 5, rng.normal(size=(n, o))
  return jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(c, jnp.float32)


def _loss(f):
  return lambda x, w, c: jnp.sum(f(x, w) * c)


def _reference(x, w):
  return jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_forward_and_gradients_equal_autodiff_of_a_float32_matmul(dtype, tol):
  x, w, c = _operands(dtype)
  y = jax.jit(matmul.matmul)(x, w)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, _reference(x, w), rtol=tol, atol=tol)
  dx, dw = jax.jit(jax.grad(_loss(matmul.matmul), argnums=(0, 1)))(x, w, c)
  rx, rw = jax.grad(_loss(_reference), argnums=(0, 1))(x, w, c)
  assert dx.dtype == dw.dtype == dtype
  # bfloat16: the cotangent is rounded to bfloat16 before the products, as autodiff of a
  # bfloat16 product does; relative to the gradients' scale.
  for got, want in ((dx, rx), (dw, rw)):
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=tol * float(jnp.abs(want).max()))


def test_the_weight_gradient_is_taken_per_device_and_summed():
  """Under a batch-sharded mesh dw comes from a shard_map (no gathered batch) and equals
  the unsharded gradient; every compiled dot contracts lhs dim 1 with rhs dim 0."""
  mesh = jax.make_mesh((2, 2, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:4],
                       axis_types=(AxisType.Auto,) * 3)
  x, w, c = _operands(jnp.float32)
  grad = jax.jit(jax.grad(_loss(matmul.matmul), argnums=(0, 1)))
  want = grad(x, w, c)
  rows = NamedSharding(mesh, P(("data", "fsdp"), None))
  xs, cs = jax.device_put(x, rows), jax.device_put(c, rows)
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(grad)(xs, w, cs))
    got = grad(xs, w, cs)
    hlo = grad.lower(xs, w, cs).compile().as_text()
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  assert "all-gather" not in hlo
  dots = re.findall(r"dot\(.*", hlo)
  assert dots and all("lhs_contracting_dims={1}, rhs_contracting_dims={0}" in d for d in dots)


def test_other_platforms_keep_autodiffs_backward():
  """The custom backward is a CPU measure: a TPU program gets no barriers or shard_map."""
  x, w, c = _operands(jnp.bfloat16)
  abstract = jax.sharding.AbstractMesh(
      (2,), ("data",), abstract_device=jax.sharding.AbstractDevice("TPU v5 lite", 1, "tpu"))
  with jax.sharding.use_abstract_mesh(abstract):
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss(matmul.matmul), argnums=(0, 1)))(x, w, c))
  assert "optimization_barrier" not in jaxpr
  jaxpr_cpu = str(jax.make_jaxpr(jax.grad(_loss(matmul.matmul), argnums=(0, 1)))(x, w, c))
  assert "optimization_barrier" in jaxpr_cpu
