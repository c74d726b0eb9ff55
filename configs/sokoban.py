"""Sokoban presets. `--config=configs/sokoban.py[:preset]`, any field as `--config.x.y=v`.

  python -m dualformer_jax.main --config=configs/sokoban.py --workdir=/tmp/sokoban
      default: 6x6 levels with one box and 4 interior walls, a narrowed tiny model (dim 96);
      about 16 minutes on a 2-core CPU, solving 86-88% of 50 test levels in every mode.
  python -m dualformer_jax.experiments.sweep --config=configs/sokoban.py:sweep_seeds \
      --workdir=runs/sokoban_seeds --config.sweep.record_dir=results/sokoban_seeds/kept
      sweep_seeds: Solution-Only, Complete-Trace and Dualformer at the default's size, three
      seeds each, with intervals (issue 27; RESULTS.md, "Error bars"); the record_dir keeps
      each finished run's result (commit it) for a sweep on another machine.
  python -m dualformer_jax.main --config=configs/sokoban.py:paper --workdir=/data/runs/sokoban
      PAPER.md reference settings: 7x7, two boxes, 8e5 steps; accelerators.
"""

from dualformer_jax import config as config_lib


def _sokoban():
  c = config_lib.base_config()
  c.task.name = "sokoban"
  c.task.size = 7
  return c


def _default():
  """6x6 levels, one box, 4 interior walls and a narrowed tiny model: minutes on a CPU."""
  c = _sokoban()
  # 6x6 with one box anywhere inside and 4 interior walls: traces average ~245 tokens
  # (p90 ~510); with 2 walls they average ~470 (7x7 two-box: ~12k).
  c.task.size = 6
  c.task.num_boxes = 1
  c.task.num_docks = 1
  c.task.box_border_margin = 1
  c.task.num_interior_walls = 4
  c.data.num_train = 4000
  c.data.num_test = 100
  c.data.max_prompt_len = 96
  c.data.max_decoder_len = 768  # drops the longest ~1% of traces (counted in the log)
  # Plan-only examples (p4) at 0.2: fast mode learns from them alone.
  c.data.level_probs = (0.3, 0.2, 0.15, 0.15, 0.2)
  c.model.size = "tiny"
  # The maze default's lesson (README): a narrower model, bfloat16 training, 3 bucket
  # widths and more steps. 4,500 steps of it solved 86-88% where 3,000 of tiny's
  # dim 128 / SwiGLU 512 in float32 solved 56-60%, in 16 minutes instead of 18.
  c.model.dim = 96
  c.model.ffn = 256
  c.model.dtype = "bfloat16"
  c.eval.dtype = "float32"  # as the maze default (configs/maze.py)
  c.data.num_buckets = 3
  c.train.num_steps = 4500
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.eval_every = 4500  # the test loss once, at the end
  c.train.checkpoint_every = 1000
  c.eval.num_tasks = 50
  c.eval.num_samples = 16
  return c


def _sweep_seeds():
  """Issue 27: one comparison point, three models x three seeds."""
  c = _default()
  c.data.num_valid = 100  # selection only; the test split scores
  c.data.num_test = 100
  c.train.checkpoint_every = 500  # 9 selection candidates, all kept
  c.train.keep_checkpoints = 9
  c.eval.num_tasks = 100
  c.sweep.num_train = (4000,)  # the default's size: every train task
  c.sweep.seeds = 3
  c.sweep.select_tasks = 30
  c.sweep.select_samples = 4
  return c


def _paper():
  """PAPER.md reference settings: 7x7, two boxes, 8e5 steps."""
  c = _sokoban()
  c.data.num_train = 100_000
  c.data.num_test = 1000
  c.data.num_shards = 64
  c.data.max_prompt_len = 128
  c.data.max_decoder_len = 8192
  c.data.num_buckets = 8
  c.data.num_workers = 4
  c.model.size = "l"
  c.model.dtype = "bfloat16"
  # 8 x 8,192 tokens per device: temp 10.1 + arguments 1.7 GiB compiled with full
  # remat, 28 + 1.7 GiB with "dots" (benchmarks/memory_bench.py; README).
  c.model.remat = "full"
  c.train.num_steps = 800_000
  c.train.batch_size = 64
  c.train.learning_rate = 7.5e-5
  c.train.warmup_steps = 2000
  c.train.log_every = 100
  c.train.eval_every = 20_000
  c.train.checkpoint_every = 5_000
  # The sampler holds 64 rows x 8,192 tokens of KV cache per prompt: 21.3 GiB per chip,
  # over a v5e's 16 (python -m dualformer_jax.compile; README, "Before you rent a
  # slice"). Train on v5e-8 if you like (6.7 GiB), evaluate on v5p or a GPU >= 32 GB.
  c.eval.num_samples = 64
  c.eval.num_tasks = 1000
  c.eval.prompts_per_batch = 4
  return c


PRESETS = {"default": _default, "sweep_seeds": _sweep_seeds, "paper": _paper}


def get_config(preset: str = "default"):
  make = PRESETS.get(preset or "default")
  if make is None:
    raise ValueError(f"unknown sokoban preset {preset!r}: use default, sweep_seeds or paper")
  return make()
