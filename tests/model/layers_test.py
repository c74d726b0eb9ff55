"""model/layers.py: the properties the two models rely on, checked on the functions alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualformer_jax.model import layers


def test_rope_scores_depend_only_on_relative_position():
  """<rope(q, m), rope(k, n)> is a function of m - n, and rotation keeps each vector's norm."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))
  inv_freq = layers.rope_inv_freq(16, 10000.0)

  def score(m, n):
    qm = layers.rope(q, jnp.array([m]), inv_freq)
    kn = layers.rope(k, jnp.array([n]), inv_freq)
    return float(jnp.sum(qm * kn))

  np.testing.assert_allclose(score(7, 3), score(24, 20), rtol=1e-5)
  assert abs(score(7, 3) - score(7, 4)) > 1e-3
  rotated = layers.rope(q, jnp.array([11]), inv_freq)
  np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-6)


def test_rope_table_is_a_constant_when_positions_are_known_or_bounded():
  """numpy positions, or traced ones below num_pos (decoding): the compiled rotation
  computes no cosine, equals the in-program one, and the two table paths agree exactly."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 40, 3, 16)), jnp.float32)
  inv_freq = layers.rope_inv_freq(16, 10000.0)
  const = jax.jit(lambda x: layers.rope(x, np.arange(40), inv_freq))
  traced = jax.jit(lambda x, pos: layers.rope(x, pos, inv_freq))
  bounded = jax.jit(lambda x, pos: layers.rope(x, pos, inv_freq, num_pos=64))
  np.testing.assert_allclose(const(x), traced(x, jnp.arange(40)), rtol=1e-5, atol=1e-5)
  assert "cosine" not in const.lower(x).compile().as_text()
  assert "cosine" in traced.lower(x, jnp.arange(40)).compile().as_text()
  pos = jnp.array([37])  # one decoding position
  np.testing.assert_array_equal(bounded(x[:, 37:38], pos), const(x)[:, 37:38])
  assert "cosine" not in bounded.lower(x[:, :1], pos).compile().as_text()


def test_rope_inv_freq_scaling_divides_low_frequencies():
  scaling = layers.RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=64)
  plain, scaled = layers.rope_inv_freq(32, 500000.0), layers.rope_inv_freq(32, 500000.0, scaling)
  assert plain.dtype == scaled.dtype == np.float32 and plain.shape == (16,)
  assert scaled[0] == plain[0]  # highest frequency untouched
  np.testing.assert_allclose(scaled[-1], plain[-1] / 8.0, rtol=1e-6)


def test_rms_norm_unit_rms_in_float32_returned_in_dtype():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)) * 5, jnp.bfloat16)
  y = layers.rms_norm(x, jnp.ones(8), 1e-6, jnp.bfloat16)
  assert y.dtype == jnp.bfloat16
  rms = jnp.sqrt(jnp.mean(y.astype(jnp.float32) ** 2, axis=-1))
  np.testing.assert_allclose(rms, 1.0, rtol=1e-2)


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_scan_layers_remat_equals_no_remat(remat):
  """Value and gradient through three stacked SwiGLU layers do not depend on the policy."""
  rng = np.random.default_rng(2)
  stacked = {n: jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
             for n, s in (("gate", (3, 8, 16)), ("up", (3, 8, 16)), ("down", (3, 16, 8)))}
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)

  def loss(stacked, remat):
    layer = lambda x, p: x + layers.swiglu(x, p["gate"], p["up"], p["down"], jnp.float32)
    return jnp.sum(layers.scan_layers(layer, x, stacked, remat) ** 2)

  want, want_grad = jax.value_and_grad(loss)(stacked, "none")
  got, got_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(stacked, remat)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for name in stacked:
    np.testing.assert_allclose(got_grad[name], want_grad[name], rtol=1e-4, atol=1e-5)
  # The policy is applied (a remat primitive in the scan body), and only when asked for.
  assert "remat" in str(jax.make_jaxpr(loss, static_argnums=1)(stacked, remat))
  assert "remat" not in str(jax.make_jaxpr(loss, static_argnums=1)(stacked, "none"))


def test_param_names_and_count():
  norm = layers.RMSNorm(6, 1e-6, jnp.float32, rngs=nnx.Rngs(0))
  mlp = layers.SwiGLU(6, 10, jnp.float32, rngs=nnx.Rngs(0))
  assert norm.scale.get_metadata()["out_sharding"] == ("norm",)
  assert [mlp.w1.get_metadata()["out_sharding"], mlp.w2.get_metadata()["out_sharding"]] == [
      ("embed", "mlp"), ("mlp", "embed")]
  assert layers.count_params(norm) == 6 and layers.count_params(mlp) == 3 * 6 * 10
