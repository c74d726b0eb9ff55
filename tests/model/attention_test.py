"""Every attention implementation against the plain one: outputs, gradients, masks, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualformer_jax.model import attention as attn
from dualformer_jax.model import kernels, masks
from dualformer_jax.model.blockwise import block_len

# (T, S, causal, window, kv heads): self, padded, sliding window, cross (T != S), GQA.
CASES = [(37, 37, True, 0, 4), (37, 37, True, 9, 4), (20, 45, False, 0, 4), (29, 29, True, 0, 2),
         (21, 37, True, 0, 4)]  # the last: causal, query and key blocks of 7 and 8


def _inputs(t, s, g, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  b, h, d = 3, 4, 8
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), dtype)
  k = jnp.asarray(rng.normal(size=(b, s, g, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, s, g, d)), dtype)
  valid = np.ones((b, s), bool)
  valid[1, s - 5:] = False  # a right-padded row
  valid[2, :3] = False  # and one whose first keys are masked
  w = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)  # cotangent
  return q, k, v, jnp.asarray(valid), w


def _run(impl, q, k, v, valid, causal, window, w, block=8):
  def loss(q, k, v):
    o = attn.attention(q, k, v, kv_valid_BxS=valid, causal=causal, window=window, impl=impl,
                       block=block)
    return jnp.sum(o.astype(jnp.float32) * w), o

  (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return o, grads


def _seeing(t, s, valid, causal, window):
  """[B, T, 1, 1]: queries that see at least one key (the others' outputs are meaningless,
  so they get no cotangent and are not compared)."""
  return np.asarray(masks.visible(t, s, valid, causal, window).any(-1))[:, 0, :, None, None]


@pytest.mark.parametrize("t,s,causal,window,g", CASES)
def test_blockwise_equals_plain_fp32(t, s, causal, window, g):
  q, k, v, valid, w = _inputs(t, s, g)
  seeing = _seeing(t, s, valid, causal, window)
  w = w * seeing
  o_ref, g_ref = _run("xla", q, k, v, valid, causal, window, w)
  o, grads = _run("blockwise", q, k, v, valid, causal, window, w)  # blocks of 8: ragged tail
  np.testing.assert_allclose(o * seeing, o_ref * seeing, atol=1e-5, rtol=1e-5)
  for a, b in zip(grads, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_blockwise_equals_plain_bf16():
  q, k, v, valid, w = _inputs(40, 40, 4, jnp.bfloat16, seed=1)
  seeing = _seeing(40, 40, valid, True, 0)
  w = w * seeing
  o_ref, g_ref = _run("xla", q, k, v, valid, True, 0, w)
  o, grads = _run("blockwise", q, k, v, valid, True, 0, w, block=16)
  assert o.dtype == jnp.bfloat16
  np.testing.assert_allclose(o.astype(np.float32) * seeing, o_ref.astype(np.float32) * seeing,
                             atol=2e-2, rtol=2e-2)
  for a, b in zip(grads, g_ref):
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-2, rtol=2e-2)


def test_block_len_covers_with_equal_blocks_of_at_most_block():
  for n in (1, 7, 100, 128, 129, 160, 385, 2048):
    bl = block_len(n, 128)
    blocks = -(-n // bl)
    assert bl <= 128 and blocks == -(-n // 128) and blocks * bl - n < blocks, n


def test_masks_hide_what_they_should():
  """Changing a masked key (a pad, or a future position) changes no output."""
  q, k, v, valid, _ = _inputs(12, 12, 4)
  for impl in ("xla", "blockwise"):
    run = jax.jit(lambda k, v, impl=impl: attn.attention(
        q, k, v, kv_valid_BxS=valid, causal=True, impl=impl, block=4)[:2])  # rows that see keys
    base = run(k, v)
    k2, v2 = k.at[1, -5:].add(3.0), v.at[1, -5:].add(3.0)  # row 1's pads
    np.testing.assert_allclose(run(k2, v2), base, atol=1e-6)
    k3, v3 = k.at[:, 9:].add(3.0), v.at[:, 9:].add(3.0)  # keys after query 8
    np.testing.assert_allclose(run(k3, v3)[:, :9], base[:, :9], atol=1e-6)
    assert np.abs(run(k3, v3)[0, 9:] - base[0, 9:]).max() > 1e-3


def test_query_with_no_visible_key_is_finite():
  q, k, v, _, w = _inputs(10, 10, 4)
  none = jnp.zeros((3, 10), bool)
  for impl in ("xla", "blockwise"):
    o, grads = _run(impl, q, k, v, none, False, 0, w, block=4)
    assert np.isfinite(np.asarray(o)).all() and all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_attend_cached_equals_full_attention_at_each_position():
  q, k, v, _, _ = _inputs(12, 12, 4)
  full = attn.attention(q, k, v, causal=True, impl="xla")  # [B, T, H, K]
  w = 4  # three cache blocks of [B, H, W, K]
  k_blocks = [k[:, i * w:(i + 1) * w].transpose(0, 2, 1, 3) for i in range(3)]
  v_blocks = [v[:, i * w:(i + 1) * w].transpose(0, 2, 1, 3) for i in range(3)]
  for pos in (0, 5, 11):
    n = pos // w + 1  # blocks reached so far; later ones are not read
    seen = (jnp.arange(n * w) <= pos)[None, :]
    o = jax.jit(attn.attend_cached)(q[:, pos, :, None, :], k_blocks[:n], v_blocks[:n], seen)
    np.testing.assert_allclose(o[:, :, 0], full[:, pos], atol=1e-5)


def test_a_cpu_cache_holds_bfloat16_keys_in_float32():
  """XLA:CPU would convert a bfloat16 cache block to float32 at every step; a float32
  cache holds the same rounded keys and values, and the output keeps q's dtype."""
  assert attn.cache_dtype(jnp.bfloat16) == jnp.float32
  blocks = attn.empty_cache(1, 2, 10, 4, 3, 8, jnp.bfloat16)  # 2 rows, 3 blocks of 4
  assert len(blocks) == 3 and blocks[0].shape == (2, 3, 4, 8) and blocks[0].dtype == jnp.float32
  tpu = jax.sharding.AbstractMesh(
      (2,), ("data",), abstract_device=jax.sharding.AbstractDevice("TPU v5 lite", 1, "tpu"))
  with jax.sharding.use_abstract_mesh(tpu):
    assert attn.cache_dtype(jnp.bfloat16) == jnp.bfloat16
  q, k, v, _, _ = _inputs(8, 8, 4, jnp.bfloat16)
  k_block, v_block = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # one block [B, H, 8, K]
  seen = jnp.ones((1, 8), bool)
  o16 = attn.attend_cached(q[:, 7, :, None, :], [k_block], [v_block], seen)
  o32 = attn.attend_cached(q[:, 7, :, None, :], [k_block.astype(jnp.float32)],
                           [v_block.astype(jnp.float32)], seen)
  assert o16.dtype == o32.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(o32, np.float32), np.asarray(o16, np.float32), atol=3e-2)


def test_splash_kernel_interpreted_equals_plain():
  """The TPU kernel, run by the Pallas interpreter: same outputs, pads as a second segment."""
  q, k, v, valid, _ = _inputs(128, 128, 2, seed=3)
  ref = attn.attention(q, k, v, kv_valid_BxS=valid, causal=True, impl="xla")
  out = jax.jit(lambda q, k, v: attn.attention(
      q, k, v, kv_valid_BxS=valid, causal=True, impl="splash"))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("causal,window", [(False, 0), (True, 0), (True, 5)])
def test_splash_masks_match_ours(causal, window):
  dense = kernels.splash_dense_mask(256, 256, causal, window)
  ours = np.asarray(masks.visible(256, 256, None, causal, window))[0, 0]
  np.testing.assert_array_equal(dense, ours)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
def test_cudnn_equals_plain():
  q, k, v, valid, _ = _inputs(64, 64, 4, jnp.bfloat16)
  valid = jnp.arange(64)[None, :] < jnp.asarray([[64], [59], [40]])  # right-padded rows
  for causal in (False, True):
    ref = attn.attention(q, k, v, kv_valid_BxS=valid, causal=causal, impl="xla")
    out = attn.attention(q, k, v, kv_valid_BxS=valid, causal=causal, impl="cudnn")
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), atol=2e-2)


def test_auto_picks_by_backend_dtype_and_length():
  r = attn.resolve
  assert r("auto", t=64, s=128, dtype=jnp.float32, backend="cpu") == "xla"  # decode cross-attn
  assert r("auto", t=384, s=384, dtype=jnp.float32, backend="cpu") == "blockwise"
  assert r("auto", t=8192, s=8192, dtype=jnp.bfloat16, backend="cpu") == "blockwise"
  assert r("auto", t=8192, s=8192, dtype=jnp.bfloat16, backend="gpu") == "cudnn"
  assert r("auto", t=8192, s=8192, dtype=jnp.float32, backend="gpu") == "blockwise"
  assert r("auto", t=8192, s=128, dtype=jnp.bfloat16, backend="tpu") == "splash"
  assert r("auto", t=100, s=100, dtype=jnp.bfloat16, backend="tpu") == "xla"
  assert r("blockwise", t=4, s=4, dtype=jnp.float32) == "blockwise"
  with pytest.raises(ValueError, match="'flash'"):
    r("flash", t=4, s=4, dtype=jnp.float32)
  with pytest.raises(ValueError, match="window"):
    attn.attention(*_inputs(4, 4, 4)[:3], window=2)


def _grad_temp_bytes(impl, t):
  """Temporary memory of a compiled (never run) attention gradient at length t."""
  shape = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)

  def loss(q, k, v):
    return attn.attention(q, k, v, causal=True, impl=impl, block=128).sum()

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly():
  plain = _grad_temp_bytes("xla", 4096) / _grad_temp_bytes("xla", 2048)
  blockwise = _grad_temp_bytes("blockwise", 4096) / _grad_temp_bytes("blockwise", 2048)
  assert plain > 3.0  # the [T, T] scores and probabilities
  assert blockwise < 2.3


# (T, S, causal, window, G, B, H): encoder (padded keys), decoder, sliding window,
# cross-attention (T != S), GQA whose G heads the tensor axis splits, and G = 1 it does not.
SHARDED_CASES = {
    "encoder": (128, 128, False, 0, 4),
    "decoder": (128, 128, True, 0, 4),
    "window": (128, 128, True, 40, 4),
    "cross": (128, 256, False, 0, 4),
    "gqa": (128, 128, True, 0, 2),
    "mqa": (128, 128, True, 0, 1),
}


def _sharded_inputs(t, s, g):
  rng = np.random.default_rng(7)
  b, h, d = 4, 4, 8
  q, k, v, w = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in (
      (b, t, h, d), (b, s, g, d), (b, s, g, d), (b, t, h, d)))
  valid = np.ones((b, s), bool)
  valid[1, s - 30:] = False
  valid[3, s // 2:] = False
  return q, k, v, jnp.asarray(valid), w


@pytest.mark.parametrize("case,mesh_shape", [(c, (2, 1, 2)) for c in SHARDED_CASES]
                         + [("gqa", (1, 2, 2))])
def test_splash_under_a_mesh_equals_blockwise(case, mesh_shape):
  """The kernel XLA cannot partition runs per shard (shard_map over batch and heads) on a
  4-device mesh: outputs and gradients as blockwise attention computes them unsharded."""
  t, s, causal, window, g = SHARDED_CASES[case]
  q, k, v, valid, w = _sharded_inputs(t, s, g)
  w = w * _seeing(t, s, valid, causal, window)
  mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)

  def grads(impl):
    def loss(q, k, v):
      o = attn.attention(q, k, v, kv_valid_BxS=valid, causal=causal, window=window, impl=impl)
      return jnp.sum(o * w), o
    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)

  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(grads("splash"))(q, k, v))
    (_, o), g_splash = jax.jit(grads("splash"))(q, k, v)
  (_, o_ref), g_ref = jax.jit(grads("blockwise"))(q, k, v)
  seeing = _seeing(t, s, valid, causal, window)
  np.testing.assert_allclose(o * seeing, o_ref * seeing, atol=2e-5)
  for a, b in zip(g_splash, g_ref):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_the_mesh_in_context_picks_the_platform():
  """`auto` follows the devices a program is built for, not the host that builds it."""
  mesh = jax.make_mesh((2, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:2],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert attn.target_platform() == jax.default_backend()
  with jax.set_mesh(mesh):
    assert attn.target_platform() == "cpu"
  abstract = jax.sharding.AbstractMesh(
      (2,), ("data",), abstract_device=jax.sharding.AbstractDevice("TPU v5 lite", 1, "tpu"))
  with jax.sharding.use_abstract_mesh(abstract):
    assert attn.target_platform() == "tpu"
    assert attn.resolve("auto", t=256, s=256, dtype=jnp.bfloat16) == "splash"
