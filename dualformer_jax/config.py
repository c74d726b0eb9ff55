"""Every knob of a run, in one ConfigDict, and its validation.

`configs/maze.py` and `configs/sokoban.py` start from `base_config()` and set
their presets; `validate()` runs once at each entry point, before any work, so
a bad value fails at once with a message that names the field. It returns a
RunConfig: the typed pieces library code takes (data/data_config.DataConfig,
train/train_config.TrainConfig, eval/eval_config.EvalConfig,
model/model_config.ModelConfig, model/sharding.MeshConfig, the seed), each
checking its own fields when built, so the library never re-validates a
ConfigDict.

Each rule has one home, where the value is used: task and data fields
(data/data_config, which calls dropping.check_level_probs), train and eval
fields (train/train_config, eval/eval_config), mesh sizes
(model/sharding.mesh_shape), grad accumulation (model/sharding.check_batch_size),
model size, dtype, remat and attention (model/model_config.ModelConfig), the
learning-rate schedule (train/schedule.warmup_cosine). validate() holds only
mesh.cpu_devices. train/trainer.preflight calls the mesh and schedule owners
(they need the devices and the batch split) before any work (main.py, compare and sweep: before the dataset is
generated), so they too fail before a file is written.

Who validates: the entry points (main.py, compare / sweep / tune's run, the
CLIs and benchmarks); the library code they call takes a RunConfig (or one of
its pieces), so it cannot be handed an unchecked config.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections

from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.eval.eval_config import EvalConfig
from dualformer_jax.model.model_config import ModelConfig
from dualformer_jax.model.sharding import MeshConfig
from dualformer_jax.tasks import make_task
from dualformer_jax.train.train_config import TrainConfig


def _task() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.name = "maze"  # maze | sokoban
  g.size = 10  # maze: N of the N x N grid; sokoban: grid side
  # Maze generator.
  g.min_wall_frac = 0.3  # share of cells that are walls, drawn uniformly
  g.max_wall_frac = 0.5
  g.pairs_per_layout = 4  # start/goal pairs drawn per wall layout
  g.min_plan_len = -1  # keep tasks whose optimal plan has >= this many steps; -1: size
  # Sokoban generator.
  g.num_boxes = 2
  g.num_docks = 2
  g.num_interior_walls = 2
  g.box_border_margin = 2  # boxes at least this many cells from the border (1 = inner ring)
  g.max_cost = 400  # largest cost token c<k> in the vocabulary (sokoban)
  g.max_expansions = 20000  # give up on a level whose A* closes more nodes than this
  return g


def _data() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.num_train = 2000
  g.num_test = 200
  # Held-out tasks of the training distribution (layouts in neither train nor test): the
  # trainer measures their loss at every checkpoint and keeps the best checkpoint; 0 = none.
  g.num_valid = 0
  g.train_tasks = 0  # train on the first N tasks of the train split only; 0 = all of them
  g.seed = 1234  # generation and pipeline shuffling
  g.num_shards = 4  # ArrayRecord shards per split
  g.astar = "nondeterministic"  # tie-breaking of the A* that writes the traces
  g.gen_workers = 0  # processes for generation; 0 = all cores
  # Trace dropping (PAPER.md, "Structured trace dropping").
  g.trace_mode = "dualformer"  # dualformer | complete | solution_only | fixed_level
  g.level_probs = (0.45, 1 / 6, 1 / 6, 1 / 6, 0.05)  # p0..p4 for dualformer
  g.create_drop_rate = 0.3  # level 3: share of create clauses dropped
  g.fixed_level = 0  # the level used by trace_mode=fixed_level
  # Shapes: examples longer than these are dropped and counted, never truncated.
  g.max_prompt_len = 256  # encoder tokens incl. bos/eos
  g.max_decoder_len = 1024  # decoder tokens incl. bos/eos
  g.num_buckets = 4  # at most num_buckets**2 (prompt, decoder) shapes are compiled
  g.bucket_pool = 32  # batches read ahead to fill buckets
  g.num_workers = 0  # grain worker processes for the train pipeline
  return g


def _model() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.size = "tiny"  # tiny | s | m-s | l | xl-2 (PAPER.md reference sizes)
  # Shape overrides of the size's (dim, layers, heads) and the SwiGLU width; 0 = the size's.
  g.dim = 0
  g.layers = 0
  g.heads = 0
  g.ffn = 0  # 0: 8/3 x dim rounded up to a multiple of 256
  g.dtype = "float32"  # compute dtype; params stay float32
  g.remat = "none"  # backward-pass recompute per block: none | dots (keep matmul outputs) | full
  # auto | xla | blockwise | cudnn | splash (model/attention.py); auto: by backend and length.
  # Like remat, an execution setting: a checkpoint restores under any of them.
  g.attention = "auto"
  g.rope_base = 10000.0
  return g


def mesh_group() -> ml_collections.ConfigDict:
  """`config.mesh` with its defaults (configs/math.py shares it)."""
  g = ml_collections.ConfigDict()
  g.data = -1  # -1: all devices not used by the other axes
  g.fsdp = 1
  g.tensor = 1
  # On a CPU backend, the host is split into this many XLA devices (data parallel). Each
  # runs its own program, so one device's serial ops overlap another's: on 2 cores the
  # sampler ran ~1.6x faster with 2 than with 1 (benchmarks/sample_bench.py). Applied at
  # start-up by configure_jax; XLA_FLAGS=--xla_force_host_platform_device_count wins.
  g.cpu_devices = 2
  return g


def _train() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.num_steps = 2000
  g.batch_size = 32  # global batch, split over the data and fsdp axes
  g.learning_rate = 1e-3  # peak
  g.warmup_steps = 100
  g.final_lr_frac = 0.1  # cosine decays to this share of the peak
  g.weight_decay = 0.1
  g.b1 = 0.9
  g.b2 = 0.99
  g.grad_clip = 1.0  # global norm
  g.grad_accum = 1  # micro-batches per optimizer step
  # sequence: mean over each example's tokens, then over the batch (Searchformer's);
  # token: mean over all loss tokens of the batch (long traces weigh more).
  g.loss_norm = "sequence"
  g.log_every = 50
  g.eval_every = 500
  g.eval_batches = 4  # test-split batches per eval-loss measurement
  g.checkpoint_every = 500
  g.keep_checkpoints = 2  # the latest K; the best-validation one is kept besides
  # Fine-tuning: a run directory whose checkpoint gives the initial params (the optimizer
  # and schedule start afresh); "" = a fresh init. init_step: its step, -1 = its latest.
  g.init_from = ""
  g.init_step = -1
  return g


def _eval() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.modes = "fast,slow,auto"  # comma-separated subset of fast,slow,auto
  g.num_samples = 16  # responses per task and mode (paper: 64)
  g.num_tasks = 50  # test tasks evaluated (paper: 1000)
  g.tasks_file = ""  # JSON lines of task specs to evaluate instead of the test split
  g.checkpoint_step = -1  # -1: latest
  g.temperature = 1.0
  g.top_k = 0  # 0: no top-k filter
  # Compute dtype of sampling; "" = model.dtype. On a CPU the KV cache is float32 either
  # way (model/attention.cache_dtype), and bfloat16 samples about as fast as float32.
  g.dtype = ""
  g.prompts_per_batch = 8  # prompts sampled together (x num_samples rows)
  g.max_decode_len = -1  # -1: data.max_decoder_len
  g.num_pictures = 3  # tasks rendered per mode
  # The split scored: test, or valid (model selection; written to eval/<step>/valid/).
  g.split = "test"
  return g


def _sweep() -> ml_collections.ConfigDict:
  # experiments/sweep.py: the data-efficiency sweep (checked by sweep.check_config).
  g = ml_collections.ConfigDict()
  g.num_train = ()  # training-task counts, increasing, each <= data.num_train
  g.models = "solution_only,complete_trace,dualformer"  # trained at every point
  g.seeds = 3  # trainings per model and point (seed, seed + 1, ...), each its own run
  # One selection rule for every model and mode: the saved step of highest sampled
  # 1-Optimal on the first select_tasks valid tasks x select_samples responses of that mode
  # (experiments/select.py); 0 = the step of lowest validation loss for all modes.
  g.select_tasks = 0
  g.select_samples = 8
  g.tuned = ""  # a tune.json (experiments/tune.py): each model's chosen lr and steps
  # A folder (e.g. results/maze_sweep_seeds/kept) that keeps each model's result per point
  # and seed as <N>/seed<k>/<model>.json: a later sweep, on any machine, takes those
  # instead of training again (experiments/kept_results.py). "" = only the workdir.
  g.record_dir = ""
  return g


def _tune() -> ml_collections.ConfigDict:
  # experiments/tune.py: the same learning-rate x steps grid for every model, chosen by
  # sampled validation 1-Optimal at the last step (mean over the model's modes).
  g = ml_collections.ConfigDict()
  g.models = "solution_only,complete_trace,dualformer"
  g.learning_rates = ()
  g.num_steps = ()
  g.num_train = 0  # train tasks of the tuning runs; 0 = data.num_train
  # A folder (e.g. results/maze_tune) that keeps each finished run's validation row as
  # <model>/<run>.json: a later tuning, on any machine, takes those rows instead of
  # training again. "" = only the workdir.
  g.record_dir = ""
  return g


def _bootstrap() -> ml_collections.ConfigDict:
  # experiments/bootstrap.py: Searchformer's search-dynamics bootstrapping (PAPER.md,
  # "Baselines"), from the Complete-Trace run of one sweep point (bootstrap.check_config).
  g = ml_collections.ConfigDict()
  g.rounds = 0  # fine-tuning rounds; 0 = no bootstrapping
  g.num_train = 0  # the sweep point (a value of sweep.num_train) it starts from
  g.samples = 32  # responses sampled per training task (paper: 32)
  g.temperature = 1.0
  g.finetune_steps = 500  # per round (paper: 1e4, 1/80 of the 8e5 training steps)
  return g


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every task; presets override fields."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init and sampling keys
  c.compilation_cache_dir = "~/.cache/dualformer_jax/xla"  # persistent XLA cache; "" = off
  c.task = _task()
  c.data = _data()
  c.model = _model()
  c.mesh = mesh_group()
  c.train = _train()
  c.eval = _eval()
  c.sweep = _sweep()
  c.tune = _tune()
  c.bootstrap = _bootstrap()
  return c


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A checked planning run: its typed pieces, and the ConfigDict they came from.

  Built by validate(); a piece is changed by dataclasses.replace (which checks
  it again), never by editing `config`. Library code reads the pieces; `config`
  travels only to what records the whole config (the checkpoint's record,
  config.json)."""
  config: ml_collections.ConfigDict
  data: DataConfig
  train: TrainConfig
  eval: EvalConfig
  model: ModelConfig  # resolved with the size of the task's Vocab (specials included)
  mesh: MeshConfig
  seed: int  # model init and sampling keys


def validate(c: ml_collections.ConfigDict) -> RunConfig:
  """Raises ValueError naming the first bad field; returns the RunConfig it built."""
  data, mesh = DataConfig.from_config(c), MeshConfig.from_config(c.mesh)
  model = ModelConfig.from_config(c.model, len(Vocab(make_task(data.task).vocabulary())))
  return RunConfig(c, data, TrainConfig.from_config(c.train), EvalConfig.from_config(c.eval),
                   model, mesh, int(c.seed))


def configure_jax(c: ml_collections.ConfigDict) -> None:
  """The process-wide jax settings of a config; call before anything touches a device.

  mesh.cpu_devices: how many devices a CPU backend has (jax_num_cpu_devices),
  unless XLA_FLAGS sets --xla_force_host_platform_device_count, or jax has
  already started its backends (a notebook, a test): then the count stays, said
  once on stderr if it differs. compilation_cache_dir: the persistent XLA
  cache, so re-runs and resumes skip compilation.
  """
  import jax
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    try:
      jax.config.update("jax_num_cpu_devices", int(c.mesh.cpu_devices))
    except RuntimeError:  # backends already initialised
      have = len(jax.devices("cpu"))
      if have != c.mesh.cpu_devices:
        print(f"note: jax already runs with {have} CPU devices; mesh.cpu_devices="
              f"{c.mesh.cpu_devices} applies to a fresh process", file=sys.stderr)
  if c.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(c.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

