"""Every preset in configs/ is a valid config, also as each model of the comparison sweep."""

import pytest

from configs import math as math_configs
from configs import maze as maze_configs
from configs import sokoban as sokoban_configs
from dualformer_jax import config as config_lib
from dualformer_jax.experiments import compare, sweep, tune
from dualformer_jax.lm import math_config

PRESETS = ([(maze_configs, p) for p in ("default", "long", "compare", "sweep", "sweep_seeds",
                                        "tune", "paper_15", "paper_20", "paper_25", "paper_30")]
           + [(sokoban_configs, p) for p in ("default", "sweep_seeds", "paper")])


@pytest.mark.parametrize("module,preset", PRESETS)
def test_preset_validates_for_every_model_of_the_sweep(module, preset):
  config = module.get_config(preset)
  config_lib.validate(config)
  for name in compare.MODELS:
    config_lib.validate(compare.model_config(config, name))


@pytest.mark.parametrize("module,preset", PRESETS)
def test_batches_split_over_the_cpu_devices(module, preset):
  """A preset run on a CPU host gets mesh.cpu_devices devices: its batches must split."""
  c = module.get_config(preset)
  n = c.mesh.cpu_devices
  assert c.train.batch_size % (n * c.train.grad_accum) == 0
  assert c.eval.prompts_per_batch % n == 0  # else rounded up, which is allowed but wasteful


def test_paper_presets_hold_the_reference_schedules():
  maze = maze_configs.get_config("paper_30")
  assert (maze.task.size, maze.model.size, maze.train.num_steps) == (30, "m-s", 400_000)
  assert (maze.eval.num_tasks, maze.eval.num_samples) == (1000, 64)
  sokoban = sokoban_configs.get_config("paper")
  assert (sokoban.task.size, sokoban.task.num_boxes, sokoban.train.num_steps) == (7, 2, 800_000)


def test_the_compare_preset_meets_the_evaluation_floor():
  c = maze_configs.get_config("compare")
  assert c.data.num_test >= c.eval.num_tasks >= 200 and c.eval.num_samples == 64


def test_the_sweep_preset_is_a_valid_sweep_with_the_default_recipe():
  c, default = maze_configs.get_config("sweep"), maze_configs.get_config("default")
  sweep.check_config(c)
  assert c.data.num_test >= c.eval.num_tasks >= 200 and c.eval.num_samples == 64
  assert max(c.sweep.num_train) == c.data.num_train and c.bootstrap.rounds >= 1
  assert (c.train.learning_rate, c.data.level_probs) == (default.train.learning_rate,
                                                         default.data.level_probs)


@pytest.mark.parametrize("module", [maze_configs, sokoban_configs])
def test_the_error_bar_presets_are_valid_sweeps_of_the_default_model(module):
  """Issue 27: three seeds, sampled validation selection, the default's narrowed model."""
  c, default = module.get_config("sweep_seeds"), module.get_config("default")
  sweep.check_config(c)
  assert c.sweep.seeds == 3 and c.sweep.select_tasks > 0 and c.sweep.models == \
      "solution_only,complete_trace,dualformer"
  assert c.model.to_dict() == default.model.to_dict()
  assert c.train.learning_rate == default.train.learning_rate
  # The maze sweep keeps the 5,000 steps of its tuning grid (the default now trains 6,500).
  steps = (maze_configs.get_config("tune").tune.num_steps if module is maze_configs
           else (default.train.num_steps,))
  assert c.train.num_steps in steps
  assert c.data.num_test >= c.eval.num_tasks >= 100


def test_the_tune_preset_grids_every_model_alike():
  c = maze_configs.get_config("tune")
  tune.check_config(c)
  assert tune.models_of(c) == tuple(compare.MODELS) and len(c.tune.learning_rates) >= 2
  assert c.tune.num_train in maze_configs.get_config("sweep_seeds").sweep.num_train


@pytest.mark.parametrize("module", [maze_configs, sokoban_configs])
def test_unknown_preset_is_refused(module):
  with pytest.raises(ValueError, match="unknown .* preset 'papr'"):
    module.get_config("papr")


def test_measured_presets_keep_the_model_their_figures_came_from():
  """`long` and `sweep` (README, RESULTS.md; the sweep resumes its checkpoints) keep tiny's
  dim 128 / SwiGLU 512 in float32 though the default moved to a narrower bfloat16 model."""
  from dualformer_jax.model.model_config import ModelConfig
  shape = lambda c: ModelConfig.from_config(c.model, vocab_size=40)
  default = shape(maze_configs.get_config("default"))
  assert (default.dim, default.ffn, default.dtype) == (96, 256, "bfloat16")
  for preset in ("long", "sweep"):
    c = maze_configs.get_config(preset)
    assert (shape(c).dim, shape(c).ffn, shape(c).dtype) == (128, 512, "float32"), preset
    assert (c.data.num_buckets, c.eval.dtype) == (4, ""), preset
  compare_shape = shape(maze_configs.get_config("compare"))
  assert (compare_shape.dim, compare_shape.ffn) == (default.dim, default.ffn)


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_math_presets_train_the_p0_baseline_first(preset):
  """The paper's tables compare every p with fine-tuning on the complete solutions."""
  probs = math_configs.get_config(preset).data.drop_probs
  assert probs[0] == math_configs.BASELINE_P == 0.0
  assert len(probs) >= 2 and all(0.0 < p < 1.0 for p in probs[1:])
  assert len(set(probs)) == len(probs)


def test_math_paper_preset_pairs_the_baseline_with_the_papers_p():
  c = math_configs.get_config("paper")
  assert tuple(c.data.drop_probs) == (0.0, 0.1)
  c.task.source, c.lm.checkpoint = "synthetic", ""  # validate() checks files: only the probs
  math_config.validate(c)
  math_config.validate(math_configs.get_config("default"))
  assert math_configs.with_baseline(0.3, 0.0, 0.1, 0.3) == (0.0, 0.3, 0.1)
