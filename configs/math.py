"""Step dropping for language models on step-by-step math (PAPER.md, "LLM math").

  python -m dualformer_jax.main --config=configs/math.py --workdir=/tmp/math_run
      default: synthetic arithmetic chains (2-4 operations on numbers < 20), a tiny
      Llama-architecture LM trained from scratch once per p in data.drop_probs (0 and 0.2),
      then Greedy@1 / Pass@k / solution length per mode and p in one table.
      A few minutes on a 2-core CPU; chance level is about 5% (1 in 20 answers).
  python -m dualformer_jax.main --config=configs/math.py:paper --workdir=/data/runs/math \
      --config.lm.checkpoint=/models/Meta-Llama-3-8B --config.data.train_file=train.jsonl \
      --config.data.test_file=test.jsonl [--config.data.drop_probs="(0.0,0.1,0.2,0.3,0.4)"]
      paper: fine-tune a local Llama-3-8B / Mistral-7B HF checkpoint on JSON-lines
      step-by-step solutions (lm/math_data.py: {"problem", "steps", "answer"}), bfloat16,
      sharded over the (data, fsdp, tensor) mesh; accelerators. Two fine-tunes: the p = 0
      baseline (every step kept) and p = 0.1, in one table.

Every preset trains the p = 0 baseline first (BASELINE_P): the paper's tables report
each p against fine-tuning on the complete solutions.

Each p trains in <workdir>/p<p>/ (checkpoints, metrics.jsonl, results.json);
<workdir>/math_results.json holds every run's results and the table.
"""

import ml_collections

from dualformer_jax import config as config_lib

BASELINE_P = 0.0  # no step dropping: the run every other p is compared against


def with_baseline(*probs: float) -> tuple[float, ...]:
  """The drop probabilities of a preset: the p = 0 baseline, then `probs` (without repeats)."""
  return (BASELINE_P, *dict.fromkeys(p for p in probs if p != BASELINE_P))


def _task() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.name = "math"  # main.py sends this config to lm/finetune.py
  g.source = "synthetic"  # synthetic | jsonl
  g.min_ops = 2  # synthetic: operations per problem (= steps)
  g.max_ops = 4
  g.max_value = 20  # synthetic: every intermediate value is in [0, max_value)
  g.max_operand = 9  # synthetic: operands are 1..max_operand
  return g


def _data() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  # One training per p, each step dropped with probability p; p = 0 is the baseline.
  g.drop_probs = with_baseline(0.2)
  g.seed = 1234  # synthetic generation, shuffling, step dropping
  g.num_train = 20_000  # synthetic problems (test problems are never in train)
  g.num_test = 200
  g.train_file = ""  # jsonl: training examples
  g.test_file = ""  # jsonl: evaluation problems
  g.max_len = 48  # tokens of prompt + complete solution; longer examples are left out
  return g


def _lm() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.checkpoint = ""  # HF checkpoint directory to fine-tune; "" = train from scratch
  # From-scratch architecture (a checkpoint brings its own, from its config.json).
  g.dim = 128
  g.num_layers = 3
  g.num_heads = 4
  g.num_kv_heads = 2  # grouped-query attention, as Llama-3 / Mistral
  g.ffn_dim = 384
  g.rope_theta = 10_000.0
  g.dtype = "float32"  # compute dtype
  g.param_dtype = "float32"  # storage of params and optimizer state (float32: mixed precision)
  g.attention = "auto"  # model/attention.py implementations
  g.remat = "none"  # none | dots | full
  return g


def _mesh() -> ml_collections.ConfigDict:
  g = config_lib.mesh_group()
  g.cpu_devices = 1  # CPU devices of the host (config.py); 2 is measured for planning only
  return g


def _train() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.num_steps = 800  # p = 0 reaches token accuracy 1.0 by step 500 on 2 cores
  g.batch_size = 64
  g.learning_rate = 2e-3  # peak
  g.warmup_steps = 50
  g.final_lr_frac = 0.1
  g.weight_decay = 0.1
  g.b1 = 0.9
  g.b2 = 0.99
  g.grad_clip = 1.0
  g.log_every = 100
  g.checkpoint_every = 400
  g.keep_checkpoints = 2
  return g


def _eval() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.modes = "slow,fast"  # comma-separated subset of slow,fast,auto (lm/math_eval.py)
  g.num_problems = 200  # first test problems scored
  g.num_samples = 20  # samples per problem for Pass@k (paper: Pass@20)
  g.pass_ks = (1, 5, 20)
  g.temperature = 0.7
  g.top_k = 0  # 0: no top-k filter for the samples (greedy uses top_k = 1)
  g.problems_per_batch = 50  # problems per sampler call (x num_samples rows)
  return g


def _default():
  """Synthetic arithmetic chains and a tiny Llama-architecture LM trained from scratch."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init and sampling keys
  c.compilation_cache_dir = "~/.cache/dualformer_jax/xla"  # persistent XLA cache; "" = off
  c.task = _task()
  c.data = _data()
  c.lm = _lm()
  c.mesh = _mesh()
  c.train = _train()
  c.eval = _eval()
  return c


def _paper():
  """Fine-tuning a local Llama-3-8B / Mistral-7B checkpoint on JSON-lines solutions."""
  c = _default()
  c.task.source = "jsonl"
  # The paper's best Greedy@1 for Mistral (it tried 0.1 .. 0.4), beside the baseline it
  # is measured against: two full fine-tunes.
  c.data.drop_probs = with_baseline(0.1)
  c.data.max_len = 2048
  c.lm.dtype = "bfloat16"
  c.lm.remat = "full"
  c.mesh.data = -1  # params and optimizer state sharded over 8 devices, the rest data-parallel:
  c.mesh.fsdp = 8  # an 8B model's fp32 AdamW state is ~100 GB; set to your devices per host
  # (compiled: fits v5p-8 with fsdp=4 and v5p-128; a v5e slice needs 16 chips, fsdp=16;
  # README, "Before you rent a slice")
  c.train.num_steps = 3000
  c.train.batch_size = 32
  c.train.learning_rate = 5e-6  # our choice: full fine-tuning of a 7-8B model
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  c.eval.num_problems = 5000  # the MATH test set
  c.eval.problems_per_batch = 8
  c.eval.temperature = 0.7
  return c


PRESETS = {"default": _default, "paper": _paper}


def get_config(preset: str = "default"):
  make = PRESETS.get(preset or "default")
  if make is None:
    raise ValueError(f"unknown preset {preset!r}: expected default or paper")
  return make()
