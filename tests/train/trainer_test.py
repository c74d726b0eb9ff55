"""The training loop end to end on a tiny maze set: logging, resume, preemption, bad checkpoints."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import maze as maze_configs
from dualformer_jax.data import generate
from dualformer_jax.train import step as step_lib
from dualformer_jax.train import trainer
from dualformer_jax.train.checkpoint import CheckpointError


def tiny_config(num_steps=8):
  c = maze_configs.get_config("default")
  c.task.size = 5
  c.data.num_train, c.data.num_test, c.data.num_shards = 48, 8, 2
  c.data.max_prompt_len, c.data.max_decoder_len = 64, 160
  c.data.num_buckets = 1  # one compiled shape keeps the test fast
  c.model.size = "tiny"
  c.train.num_steps = num_steps
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.eval_batches = 1
  c.train.checkpoint_every = 4
  c.compilation_cache_dir = ""
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One generated dataset, copied into each test's workdir."""
  d = tmp_path_factory.mktemp("maze5")
  generate.generate(tiny_config(), str(d), workers=1)
  return d


def workdir_with_data(tmp_path, data_dir, name="run"):
  w = tmp_path / name
  shutil.copytree(data_dir / "data", w / "data")
  return str(w)


def final_params(config, workdir):
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  meta = json.load(open(os.path.join(workdir, "data", "meta.json")))
  abstract = step_lib.abstract_train_state(config, len(meta["vocab"]), mesh, config.seed)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
    restored = m.restore(m.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  return m.latest_step(), jax.tree.leaves(jax.device_get(restored.state.params))


def test_trains_logs_and_writes_outputs(tmp_path, data_dir):
  c = tiny_config()
  w = workdir_with_data(tmp_path, data_dir)
  result = trainer.train(c, w)
  assert result.step == 8 and not result.interrupted
  rows = [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  assert train_rows[-1]["loss"] < train_rows[0]["loss"]
  assert any("eval_loss" in r for r in rows)
  assert json.load(open(os.path.join(w, "config.json")))["train"]["num_steps"] == 8
  assert os.path.exists(os.path.join(w, "loss.png"))
  assert os.listdir(os.path.join(w, "tensorboard"))


def test_preempted_then_resumed_equals_uninterrupted(tmp_path, data_dir, monkeypatch):
  c = tiny_config(num_steps=8)
  straight = workdir_with_data(tmp_path, data_dir, "straight")
  trainer.train(c, straight)

  interrupted = workdir_with_data(tmp_path, data_dir, "interrupted")
  make_step = step_lib.make_train_step

  def preempted_after_3(*args, **kwargs):  # SIGTERM arrives during step 3
    inner, calls = make_step(*args, **kwargs), [0]

    def step(state, batch):
      calls[0] += 1
      if calls[0] == 3:
        signal.raise_signal(signal.SIGTERM)
      return inner(state, batch)
    return step

  monkeypatch.setattr(step_lib, "make_train_step", preempted_after_3)
  result = trainer.train(c, interrupted)
  assert result.interrupted and result.step == 3 and result.signal_number == signal.SIGTERM
  monkeypatch.setattr(step_lib, "make_train_step", make_step)
  assert trainer.train(c, interrupted).step == 8

  step_a, params_a = final_params(c, straight)
  step_b, params_b = final_params(c, interrupted)
  assert step_a == step_b == 8
  for a, b in zip(params_a, params_b):  # bit for bit on CPU
    np.testing.assert_array_equal(a, b)


def test_refuses_checkpoint_of_another_model(tmp_path, data_dir):
  c = tiny_config(num_steps=2)
  w = workdir_with_data(tmp_path, data_dir)
  trainer.train(c, w)
  other = tiny_config(num_steps=4)
  other.model.size = "s"
  with pytest.raises(CheckpointError, match="model.size: 'tiny' \\(checkpoint\\) vs 's'"):
    trainer.train(other, w)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, data_dir):
  c = tiny_config(num_steps=2)
  w = workdir_with_data(tmp_path, data_dir)
  trainer.train(c, w)
  step_dir = os.path.join(w, "checkpoints", "2")
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\0garbage")
  with pytest.raises(CheckpointError, match="cannot restore checkpoint 2"):
    trainer.train(tiny_config(num_steps=4), w)
