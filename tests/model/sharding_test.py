"""Mesh construction, logical-axis rules and batch sharding (8 simulated devices)."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

from dualformer_jax.model import sharding
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.transformer import Transformer


def _mesh_cfg(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_mesh_shape_fills_data_axis():
  assert sharding.mesh_shape(_mesh_cfg(), 8) == (8, 1, 1)
  assert sharding.mesh_shape(_mesh_cfg(-1, 2, 2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(_mesh_cfg(1, 4, 2), 8) == (1, 4, 2)
  assert sharding.mesh_shape(_mesh_cfg(), 1) == (1, 1, 1)


def test_mesh_shape_errors_name_the_sizes():
  with pytest.raises(ValueError, match="needs 12 devices, but 8"):
    sharding.mesh_shape(_mesh_cfg(3, 2, 2), 8)
  with pytest.raises(ValueError, match="fsdp\\*tensor=3 does not divide the 8"):
    sharding.mesh_shape(_mesh_cfg(-1, 3, 1), 8)
  with pytest.raises(ValueError, match="data=0"):
    sharding.mesh_shape(_mesh_cfg(0), 8)


def test_make_mesh_over_all_or_some_devices():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (AxisType.Auto,) * 3
  one = sharding.make_mesh(_mesh_cfg(), devices=jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_logical_to_spec_rules_and_fallbacks():
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))
  assert sharding.logical_to_spec(("embed", "mlp"), (64, 512), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("embed", None, "heads", "kv"), (64, 3, 4, 16), mesh) == \
      P("fsdp", None, "tensor", None)
  # 3 heads cannot split over tensor=2: that dim stays replicated.
  assert sharding.logical_to_spec(("embed", "heads", "kv"), (64, 3, 64), mesh) == \
      P("fsdp", None, None)
  assert sharding.logical_to_spec(("norm",), (64,), mesh) == P(None)
  assert sharding.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
  # A mesh axis is used once per array.
  assert sharding.logical_to_spec(("mlp", "heads"), (8, 8), mesh) == P("tensor", None)
  with pytest.raises(ValueError, match="'nope'"):
    sharding.logical_to_spec(("nope",), (4,), mesh)
  with pytest.raises(ValueError, match="do not match shape"):
    sharding.logical_to_spec(("embed",), (4, 4), mesh)


def test_tree_shardings_of_model_params():
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))
  cfg = ModelConfig(dim=64, layers=1, heads=4, vocab_size=31)
  abstract = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  shardings = sharding.tree_shardings(abstract, mesh)
  spec = lambda v: v.get_value().spec  # noqa: E731
  assert spec(shardings["decoder"][0]["attn"]["wq"]) == P("fsdp", "tensor", None)
  assert spec(shardings["decoder"][0]["attn"]["wo"]) == P("tensor", None, "fsdp")
  assert spec(shardings["decoder"][0]["mlp"]["w2"]) == P("tensor", "fsdp")
  assert spec(shardings["head"]) == P("fsdp", None)  # vocab 31 does not split over 2
  assert spec(shardings["enc_norm"]["scale"]) == P(None)
  # Plain arrays (e.g. optimizer counters) are replicated.
  assert sharding.tree_shardings({"count": np.zeros(())}, mesh)["count"].spec == P()


def test_check_batch_size():
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))  # data*fsdp = 4
  sharding.check_batch_size(8, mesh, grad_accum=2)
  with pytest.raises(ValueError, match="micro-batch size 2 .* data\\*fsdp=4"):
    sharding.check_batch_size(8, mesh, grad_accum=4)
  with pytest.raises(ValueError, match="batch size 6 is not divisible by grad_accum=4"):
    sharding.check_batch_size(6, mesh, grad_accum=4)


def test_shard_batch_builds_global_arrays():
  mesh = sharding.make_mesh(_mesh_cfg(-1, 2, 2))
  batch = {"enc_ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
           "level": np.arange(8, dtype=np.int32)}
  out = sharding.shard_batch(batch, mesh)
  for k, v in batch.items():
    assert out[k].shape == v.shape and out[k].dtype == v.dtype
    assert out[k].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(out[k]), v)
  assert out["enc_ids"].addressable_shards[0].data.shape == (2, 5)
