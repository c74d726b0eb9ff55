"""Evaluation under faults: tasks files (scored whole, beside the test table, on the right
grid), another dataset, damaged or non-finite checkpoints, and one-line errors at the entry."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import maze as maze_configs
from dualformer_jax import config as config_lib
from dualformer_jax.data import generate, records
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.eval import evaluate
from dualformer_jax.infer import restore
from dualformer_jax.model import sharding
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.errors import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Overrides as --config flags too, so the entry-point test runs on the same dataset.
OVERRIDES = {"task.size": 5, "data.num_train": 48, "data.num_test": 8, "data.num_shards": 2,
             "data.max_prompt_len": 64, "data.max_decoder_len": 160, "model.size": "tiny",
             "eval.modes": "fast", "eval.num_samples": 1, "eval.num_tasks": 2,
             "eval.prompts_per_batch": 8, "eval.max_decode_len": 32, "eval.num_pictures": 0,
             "compilation_cache_dir": ""}


def eval_config():
  c = maze_configs.get_config("default")
  c.update_from_flattened_dict(OVERRIDES)
  return c


def maze(width, walls=()):
  return {"width": width, "height": width, "start": [0, 0], "goal": [width - 1, width - 1],
          "walls": [list(w) for w in walls]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with the dataset and an untrained checkpoint 2 (sampling needs no training)."""
  w = str(tmp_path_factory.mktemp("eval") / "run")
  c = eval_config()
  generate.generate(config_lib.validate(c).data, w, workers=1)
  vocab = records.read_meta(records.data_dir(w))["vocab"]
  r = config_lib.validate(c)
  _, state, _ = step_lib.create_train_state(r.model, r.train, sharding.make_mesh(r.mesh), r.seed)
  ckpt = Checkpointer(w, c, vocab)
  ckpt.save(2, state, None)
  ckpt.close()
  return w


def test_a_tasks_file_is_scored_whole_beside_the_test_table(run, tmp_path):
  c = eval_config()
  evaluate.evaluate(config_lib.validate(c), run)
  test_table = open(os.path.join(run, "eval", "2", "results.json")).read()
  assert json.loads(test_table)["fast"]["num_tasks"] == 2
  tasks = tmp_path / "mine.jsonl"
  tasks.write_text("".join(json.dumps(maze(5, [(1, k)])) + "\n" for k in range(5)) + "\n"
                   + json.dumps(maze(5)) + "\n")
  c.eval.tasks_file = str(tasks)
  results = evaluate.evaluate(config_lib.validate(c), run)
  assert results["fast"]["num_tasks"] == 6  # not cut to eval.num_tasks=2
  assert open(os.path.join(run, "eval", "2", "results.json")).read() == test_table
  with open(os.path.join(run, "eval", "2", "tasks-mine", "results.json")) as f:
    assert json.load(f) == results


def test_a_maze_of_another_grid_size_is_refused(run, tmp_path):
  """A 3x3 maze on a 5x5 model: its prompt would be read on the 5x5 grid, where an off-grid
  plan looks legal (before: a 4-move plan scored correct, the optimum being 6)."""
  tasks = tmp_path / "small.jsonl"
  tasks.write_text(json.dumps(maze(5)) + "\n" + json.dumps(maze(3, [(1, 1)])) + "\n")
  c = eval_config()
  c.eval.tasks_file = str(tasks)
  with pytest.raises(ValueError, match=f"{tasks}:2: a 3x3 maze task.*task.size=5"):
    evaluate.evaluate(config_lib.validate(c), run)


def test_a_dataset_of_another_task_size_is_refused(run):
  c = eval_config()
  c.task.size = 6
  with pytest.raises(records.DatasetError, match="task.size: 5 -> 6"):
    evaluate.evaluate(config_lib.validate(c), run)


def test_a_non_finite_latest_checkpoint_is_never_scored(run, capsys):
  """Checkpoint 4 holds NaN (as an older version could save): the latest evaluation falls
  back to 2 and says so; asking for 4 by number is an error, never a table."""
  c = eval_config()
  vocab = records.read_meta(records.data_dir(run))["vocab"]
  r = config_lib.validate(c)
  abstract = step_lib.abstract_train_state(r.model, r.train, sharding.make_mesh(r.mesh), r.seed)
  ckpt = Checkpointer(run, c, vocab)
  try:
    state = ckpt.restore(2, abstract, None)
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan)
                       if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    meta = {k: v for k, v in ckpt.read_meta(2).items() if k != "checksums"}
    ckpt.manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(nan),
                                                 meta=ocp.args.JsonSave({**meta, "step": 4})))
  finally:
    ckpt.close()
  capsys.readouterr()
  evaluate.evaluate(config_lib.validate(c), run)
  out = capsys.readouterr().out
  assert "checkpoint 4" in out and "NaN/Inf" in out and "evaluating checkpoint 2" in out
  assert not os.path.exists(os.path.join(run, "eval", "4"))
  c.eval.checkpoint_step = 4
  with pytest.raises(CheckpointError, match="checkpoint 4 .* holds NaN/Inf"):
    evaluate.evaluate(config_lib.validate(c), run)


def test_entry_point_user_errors_are_one_line(run):
  cmd = [sys.executable, "-m", "dualformer_jax.main", "--config=configs/maze.py",
         f"--workdir={run}", "--mode=evaluate", "--config.eval.tasks_file=/no/such/tasks.jsonl",
         *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert "error: config.eval.tasks_file='/no/such/tasks.jsonl': No such file" in p.stderr


def test_eval_dtype_sets_the_sampling_compute_dtype_only(run):
  """Params are float32 whatever the compute dtype: a checkpoint trained in bfloat16 (the
  maze default) samples in float32 from the same files; a bad value is refused early."""
  c = eval_config()
  assert c.model.dtype == "bfloat16"
  vocab = records.read_meta(records.data_dir(run))["vocab"]
  mesh = sharding.make_mesh(c.mesh)
  dtypes = {}
  for dtype in ("", "float32"):
    c.eval.dtype = dtype
    r = config_lib.validate(c)
    graphdef, params, step = restore.restore_params(c, r.model, r.eval.dtype, run, Vocab(vocab),
                                                    mesh, r.eval.checkpoint_step)
    dtypes[dtype] = nnx.merge(graphdef, params).cfg.dtype
    assert step in (2, 4)  # 4 if no other test has damaged it
  assert dtypes == {"": "bfloat16", "float32": "float32"}
  assert restore.sampling_model_config(r.model, r.eval.dtype).dtype == "float32"
  assert c.model.dtype == "bfloat16"
  c.eval.dtype = "float16"
  with pytest.raises(ValueError, match="eval.dtype='float16'"):
    config_lib.validate(c)
