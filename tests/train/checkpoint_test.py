"""What a checkpoint must share with the run that restores it, and the state checksums."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import maze as maze_configs
from dualformer_jax.train import integrity
from dualformer_jax.train.checkpoint import compat_view, stream_view


def test_execution_only_model_fields_do_not_block_a_restore():
  """The attention kernel and remat policy change how, not what: a checkpoint moves freely."""
  a = maze_configs.get_config("default")
  d = a.to_dict()
  d["model"]["remat"], d["model"]["attention"] = "full", "splash"
  b = ml_collections.ConfigDict(d)
  assert compat_view(a, ["x"]) == compat_view(b, ["x"])
  assert "remat" not in compat_view(b, ["x"])["model"]
  d["model"]["size"] = "s"
  assert compat_view(a, ["x"]) != compat_view(ml_collections.ConfigDict(d), ["x"])


def test_stream_view_names_the_settings_of_the_data_stream():
  c = maze_configs.get_config("default")
  c.data.trace_mode = "solution_only"
  assert stream_view(c) == {"data.seed": c.data.seed, "data.trace_mode": "solution_only"}
  c.data.trace_mode = "dualformer"
  assert "data.level_probs" in stream_view(c)


def test_checksums_see_one_changed_element_and_ignore_the_sharding():
  x = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
  tree = {"w": x, "step": jnp.int32(3), "h": jnp.ones(4, jnp.bfloat16)}
  sums, bad = integrity.digest(tree)
  assert bad == [] and set(sums) == {"['w']", "['step']", "['h']"}
  changed, _ = integrity.digest({**tree, "w": x.at[3, 5].set(np.nextafter(np.float32(29), 30))})
  assert integrity.mismatches(sums, changed) == ["['w']"]
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert integrity.digest({**tree, "w": sharded})[0] == sums
  _, bad = integrity.digest({**tree, "h": tree["h"].at[1].set(jnp.inf)})
  assert bad == ["['h']"]
