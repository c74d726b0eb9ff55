"""The training loop end to end on a tiny maze set: logging, resume, preemption, bad checkpoints,
and the faults a run must survive or refuse in one line (damaged or non-finite checkpoints,
another dataset, another data stream, a second trainer, a test split that never fits)."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import maze as maze_configs
from dualformer_jax import workdir_lock
from dualformer_jax.config import validate
from dualformer_jax.data import generate, records
from dualformer_jax.train import step as step_lib
from dualformer_jax.train import trainer
from dualformer_jax.train.errors import CheckpointError
from dualformer_jax.train.logger import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
  c.train.checkpoint_every = 2
  c.compilation_cache_dir = ""
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One generated dataset, copied into each test's workdir."""
  d = tmp_path_factory.mktemp("maze5")
  generate.generate(validate(tiny_config()).data, str(d), workers=1)
  return d


def workdir_with_data(tmp_path, data_dir, name="run"):
  w = tmp_path / name
  shutil.copytree(data_dir / "data", w / "data")
  return str(w)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A run trained 4 steps with checkpoints 2 and 4; tests work on copies (copy_run)."""
  w = workdir_with_data(tmp_path_factory.mktemp("trained"), data_dir)
  trainer.train(validate(tiny_config(num_steps=4)), w)
  return w


def copy_run(tmp_path, trained, name="run"):
  w = str(tmp_path / name)
  shutil.copytree(trained, w)
  return w


def steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def final_params(config, workdir):
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  meta = json.load(open(os.path.join(workdir, "data", "meta.json")))
  run = validate(config)
  assert run.model.vocab_size == len(meta["vocab"])
  abstract = step_lib.abstract_train_state(run.model, run.train, mesh, run.seed)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
    restored = m.restore(m.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  return m.latest_step(), jax.tree.leaves(jax.device_get(restored.state.params))


def test_trains_logs_and_writes_outputs(tmp_path, data_dir):
  c = tiny_config()
  w = workdir_with_data(tmp_path, data_dir)
  result = trainer.train(validate(c), w)
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
  trainer.train(validate(c), straight)

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
  result = trainer.train(validate(c), interrupted)
  assert result.interrupted and result.step == 3 and result.signal_number == signal.SIGTERM
  monkeypatch.setattr(step_lib, "make_train_step", make_step)
  assert trainer.train(validate(c), interrupted).step == 8

  step_a, params_a = final_params(c, straight)
  step_b, params_b = final_params(c, interrupted)
  assert step_a == step_b == 8
  for a, b in zip(params_a, params_b):  # bit for bit on CPU
    np.testing.assert_array_equal(a, b)


def test_refuses_checkpoint_of_another_model(tmp_path, trained):
  w = copy_run(tmp_path, trained)
  other = tiny_config(num_steps=6)
  other.model.size = "s"
  with pytest.raises(CheckpointError, match="model.size: 'tiny' \\(checkpoint\\) vs 's'"):
    trainer.train(validate(other), w)
  # The refused run leaves the config of the run that trained the checkpoints.
  assert json.load(open(os.path.join(w, "config.json")))["model"]["size"] == "tiny"


def test_refuses_another_data_stream_or_dataset(tmp_path, trained):
  """Resuming on another trace format, or on data of another grid size, is refused."""
  w = copy_run(tmp_path, trained)
  other = tiny_config(num_steps=6)
  other.data.trace_mode = "complete"
  with pytest.raises(CheckpointError, match="data.trace_mode: 'dualformer' \\(checkpoint\\) "
                                            "vs 'complete' \\(now\\)"):
    trainer.train(validate(other), w)
  other = tiny_config(num_steps=6)
  other.task.size = 6
  with pytest.raises(records.DatasetError, match="task.size: 5 -> 6"):
    trainer.train(validate(other), w)
  assert steps_on_disk(w) == [2, 4]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, trained):
  w = copy_run(tmp_path, trained)
  for step in ("2", "4"):
    for root, _, files in os.walk(os.path.join(w, "checkpoints", step, "state")):
      for f in files:
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"\0garbage")
  with pytest.raises(CheckpointError, match=r"no usable checkpoint.*damaged: steps \[4, 2\]") as e:
    trainer.train(validate(tiny_config(num_steps=6)), w)
  assert "\n" not in str(e.value)


def flip_a_byte(workdir, step):
  """Changes one byte in the middle of the largest array file of checkpoint `step`.

  Only its lowest bit. The stored bytes may be compressed, so the damage may
  decode to anything (NaN/Inf included); the checksum, checked first, must
  name it whatever the trained bytes are.
  """
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"),
                    recursive=True)
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, trained, capsys):
  """One flipped byte in checkpoint 4: training resumes from 2, says so, keeps 4 aside,
  and metrics.jsonl ends with each step once (also after a line cut short by kill -9)."""
  w = copy_run(tmp_path, trained)
  flip_a_byte(w, 4)
  with open(os.path.join(w, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "lo')  # a write cut short
  result = trainer.train(validate(tiny_config(num_steps=6)), w)
  out = capsys.readouterr().out
  # Damaged compressed bytes fail either in the decoder (orbax: "cannot restore") or,
  # decoded, in the checksum; which one depends on the trained bytes (seen once in six
  # suite runs). Either way checkpoint 4 is named and skipped.
  assert "checkpoint 4" in out
  assert "fails its checksum" in out or "cannot restore checkpoint 4" in out
  assert "resumed from checkpoint 2" in out
  assert result.step == 6 and steps_on_disk(w) == [4, 6]
  assert os.listdir(os.path.join(w, "checkpoints.damaged")) == ["4"]
  rows = read_metrics(w)
  assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
  assert [r["step"] for r in rows if "eval_loss" in r] == [4, 6]
  assert len(open(os.path.join(w, "metrics.jsonl")).read().splitlines()) == len(rows)


def test_a_non_finite_state_is_never_saved(tmp_path, trained):
  """A diverged run stops at the save with one line; the good checkpoints stay (before:
  the NaN state was saved and, with keep_checkpoints=2, pushed the good ones out)."""
  w = copy_run(tmp_path, trained)
  c = tiny_config(num_steps=10)
  c.train.learning_rate, c.train.warmup_steps, c.train.log_every = 1e30, 0, 100
  with pytest.raises(FloatingPointError, match="step 6 holds NaN/Inf.*not saved.*\\(4\\) is kept"):
    trainer.train(validate(c), w)
  assert steps_on_disk(w) == [2, 4]
  _, params = final_params(c, w)
  assert all(np.isfinite(p).all() for p in params)


def test_no_test_example_fits_the_decoder(tmp_path, data_dir, capsys):
  """Plan-only training whose complete test traces never fit max_decoder_len: a warning and
  no eval loss, not a KeyError at the first evaluation."""
  c = tiny_config(num_steps=2)
  c.data.level_probs, c.data.max_decoder_len = (0.0, 0.0, 0.0, 0.0, 1.0), 64
  w = workdir_with_data(tmp_path, data_dir)
  result = trainer.train(validate(c), w)
  assert result.step == 2 and steps_on_disk(w) == [2]
  assert "none of the 8 test examples fits" in capsys.readouterr().out
  assert not any("eval_loss" in r for r in read_metrics(w))


def test_a_second_trainer_on_one_workdir_is_refused(tmp_path, data_dir):
  w = workdir_with_data(tmp_path, data_dir)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nsys.path.insert(0, sys.argv[1])\n"
       "from dualformer_jax import workdir_lock\n"
       "with workdir_lock.hold(sys.argv[2]):\n  print('held', flush=True)\n  time.sleep(120)",
       REPO, w], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"in use by pid {holder.pid} on "):
      trainer.train(validate(tiny_config(num_steps=2)), w)
    with pytest.raises(workdir_lock.WorkdirBusy, match="in use by pid"):
      generate.generate(validate(tiny_config()).data, w, workers=1)
  finally:
    holder.kill()
    holder.wait()
  assert not os.path.exists(os.path.join(w, "checkpoints"))


@pytest.mark.parametrize("field,value,message", [
    ("model.attention", "flash", "attention='flash'"),
    ("model.remat", "some", "remat='some'"),
    ("model.dtype", "float16", "dtype='float16'"),
    ("model.size", "huge", "config.model.size='huge'"),
    ("mesh.fsdp", 3, "fsdp\\*tensor=3 does not divide the 8 devices"),
    ("train.batch_size", 12, "batch size 12|micro-batch size 12"),
    ("train.warmup_steps", -1, "bad schedule"),
])
def test_preflight_names_a_bad_value_before_any_work(tmp_path, monkeypatch, field, value,
                                                     message):
  """The values only the mesh, model and schedule builders check are checked before the
  dataset is generated and before checkpoints/ exists (main.py, compare and sweep call
  preflight first; train() too, before it takes the lock)."""
  c = tiny_config()
  c.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=message):
    trainer.preflight(validate(c))
  monkeypatch.setattr(trainer, "_train", lambda *a: pytest.fail("train went past preflight"))
  with pytest.raises(ValueError, match=message):
    trainer.train(validate(c), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_train_takes_a_checked_run_config_only(tmp_path):
  """A bare ConfigDict has no typed pieces: train() refuses it before any work (config.validate
  is the one way to a RunConfig)."""
  with pytest.raises(TypeError, match="expected a RunConfig"):
    trainer.train(tiny_config(), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
