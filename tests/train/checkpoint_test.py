"""What a checkpoint must share with the run that restores it, and the state checksums."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import maze as maze_configs
from dualformer_jax.train import integrity
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer, compat_view, stream_view
from dualformer_jax.train.errors import CheckpointError, CorruptCheckpoint


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


def test_shape_overrides_block_a_restore_unless_left_at_the_sizes():
  """A shape override is part of what a checkpoint computes; 0 (the size's own) is not
  recorded, so checkpoints written before the overrides existed still fit."""
  d = maze_configs.get_config("default").to_dict()
  d["model"].update(dim=0, layers=0, heads=0, ffn=0)
  zeros = ml_collections.ConfigDict(d)
  older = {k: v for k, v in d["model"].items() if k not in ("dim", "layers", "heads", "ffn")}
  assert compat_view(zeros, ["x"]) == compat_view(ml_collections.ConfigDict({**d, "model": older}),
                                                  ["x"])
  d["model"]["ffn"] = 256
  assert compat_view(zeros, ["x"]) != compat_view(ml_collections.ConfigDict(d), ["x"])


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


def test_the_best_validation_step_is_kept_besides_the_latest(tmp_path):
  """Steps saved with validation losses 3, 1, 2 and none (a signal's save), keeping 1: the
  latest and step 2 (loss 1) survive, and a reopened Checkpointer finds step 2 again."""
  config = maze_configs.get_config("default")
  config.train.keep_checkpoints = 1
  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  ckpt = Checkpointer(str(tmp_path), config, ["x"])
  for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, None)):
    assert ckpt.save(step, state, None, valid_loss=loss)
    ckpt.manager.wait_until_finished()
  assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
  ckpt.close()
  again = Checkpointer(str(tmp_path), config, ["x"])
  assert again.best_step() == 2 and again.read_meta(2)["valid_loss"] == 1.0
  again.close()
  empty = Checkpointer(str(tmp_path / "none"), config, ["x"])
  assert empty.best_step() is None
  empty.close()


def test_a_signals_resume_point_never_pushes_out_a_scheduled_step(tmp_path):
  """Keeping 2, steps 100 and 200, a signal's save at 250, then 300: 250 stays while it is
  the newest (the resume point), then goes; 100 goes for 300 only, as in a run without the
  signal, and a reopened Checkpointer still tells the resume point from scheduled steps."""
  config = maze_configs.get_config("default")
  config.train.keep_checkpoints = 2
  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  ckpt = Checkpointer(str(tmp_path), config, ["x"])
  for step in (100, 200, 250):
    assert ckpt.save(step, state, None, resume_only=step == 250)
    ckpt.manager.wait_until_finished()
  assert ckpt.all_steps() == [100, 200, 250] and ckpt.scheduled_steps() == [100, 200]
  ckpt.close()
  again = Checkpointer(str(tmp_path), config, ["x"])
  assert again.latest_step() == 250 and again.scheduled_steps() == [100, 200]
  assert again.save(300, state, None)
  again.manager.wait_until_finished()
  assert again.all_steps() == again.scheduled_steps() == [200, 300]
  again.close()


def test_the_record_layouts_of_both_halves_are_those_of_older_checkpoints(tmp_path, capsys):
  """A planning step's meta keeps its keys; a step written by the LM's former checkpoint
  class (meta: its record fields, step, checksums) restores through with_record, and a
  field that differs is named."""
  config = maze_configs.get_config("default")
  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  ckpt = Checkpointer(str(tmp_path / "planning"), config, ["x"])
  ckpt.save(1, state, None)
  ckpt.manager.wait_until_finished()
  assert set(ckpt.read_meta(1)) == {"step", "compat", "stream", "checksums", "config",
                                    "process_count"}
  ckpt.close()

  record = {"p": 0.5, "train": {"batch_size": 8}}
  directory = str(tmp_path / "lm" / "checkpoints")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True)) as m:
    m.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(
        {**record, "step": 3, "checksums": integrity.digest(state)[0]})))
  abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  lm = Checkpointer.with_record(str(tmp_path / "lm"), 2, {**record, "seed": 0})
  np.testing.assert_array_equal(lm.restore(3, abstract, None)["w"], state["w"])
  assert "predates the record of seed" in capsys.readouterr().out
  lm.close()
  other = Checkpointer.with_record(str(tmp_path / "lm"), 2, {**record, "train": {"batch_size": 16}})
  with pytest.raises(CheckpointError, match=r"other train.batch_size \(train.batch_size: 8 "
                                            r"\(checkpoint\) vs 16 \(now\)\)"):
    other.restore(3, abstract, None)
  other.close()


def test_the_params_alone_are_read_and_checked_against_their_own_checksums(tmp_path):
  """restore_params reads the params of a saved train state (not its optimizer state),
  refuses a params array whose recorded checksum differs or that holds NaN, and is not
  refused for a changed optimizer-state array it never read (a full restore is)."""
  config = maze_configs.get_config("default")
  config.train.keep_checkpoints = 5
  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3)}
  state = step_lib.new_state(params, step_lib.make_optimizer(config.train))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  ckpt = Checkpointer(str(tmp_path), config, ["x"])
  ckpt.save(1, state, None)
  ckpt.manager.wait_until_finished()
  meta, sums = ckpt.read_meta(1), integrity.digest(state)[0]
  got = ckpt.restore_params(1, abstract.params)
  assert set(got) == {"w", "b"}
  np.testing.assert_array_equal(got["w"], params["w"])

  def save(step, tree, checksums):  # checksums None: a checkpoint from before they existed
    record = {k: v for k, v in meta.items() if k != "checksums"}
    if checksums is not None:
      record["checksums"] = checksums
    ckpt.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({**record, "step": step})))
    ckpt.manager.wait_until_finished()

  moment = next(k for k in sums if k.startswith(".opt_state") and "['w']" in k)
  save(2, state, {**sums, ".params['w']": "1" * 16})
  save(3, state, {**sums, moment: "1" * 16})
  save(4, state.replace(params={**params, "b": jnp.full(3, jnp.nan)}), sums)
  with pytest.raises(CorruptCheckpoint, match=r"checkpoint 2 .* checksum in 1 arrays "
                                              r"\(e.g. .params\['w'\]\)"):
    ckpt.restore_params(2, abstract.params)
  np.testing.assert_array_equal(ckpt.restore_params(3, abstract.params)["w"], params["w"])
  with pytest.raises(CorruptCheckpoint, match="checkpoint 3 .* checksum in 1 arrays"):
    ckpt.restore(3, abstract, None)
  with pytest.raises(CorruptCheckpoint, match=r"checkpoint 4 .* checksum in 1 arrays "
                                              r"\(e.g. .params\['b'\]\)"):
    ckpt.restore_params(4, abstract.params)
  save(5, state.replace(params={**params, "b": jnp.full(3, jnp.nan)}), None)
  with pytest.raises(CorruptCheckpoint, match=r"checkpoint 5 .* NaN/Inf .* .params\['b'\]"):
    ckpt.restore_params(5, abstract.params)
  ckpt.close()
