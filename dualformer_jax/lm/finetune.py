"""Fine-tuning a decoder-only LM on step-by-step math with step dropping: the math run.

`run` is what `main.py --config=configs/math.py` calls with the MathRun that
lm/math_config.validate built from the config: it trains one model per
p in `data.drop_probs` (each in `<workdir>/p<p>/`, resuming from its newest
checkpoint), evaluates each per mode (lm/math_eval.py) and prints one table.

The LM's part is its loss, data and wiring: the train step, loop and
checkpointer are train/'s (step.build_train_step, loop.run, Checkpointer). The
loss is each sequence's mean cross-entropy over its solution tokens, averaged
over the sequences (a long solution weighs as much as a short one, so dropping
steps does not reweigh problems). Batches are addressed by step number
(lm/step_dropping.py), so a checkpoint needs only the train state to resume
exactly; its record holds p, the data (sizes, seed, the train file's checksum)
and the optimisation settings, and a resume with other values is refused
naming the field. A state with NaN/Inf is never saved. The workdir is
locked for the run (workdir_lock), and the mesh and batch are checked before
any data is read or file written (preflight).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm import tqdm

from dualformer_jax import workdir_lock
from dualformer_jax.lm import math_eval as eval_lib
from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm import math_data as md
from dualformer_jax.lm import model as lm_model
from dualformer_jax.lm import step_dropping
from dualformer_jax.lm import tokenizer as lm_tokenizer
from dualformer_jax.lm.math_config import MathLMConfig, MathRun, MathTrainConfig
from dualformer_jax.model import layers
from dualformer_jax.model import sharding
from dualformer_jax.train import loop as loop_lib
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer
from dualformer_jax.train.logger import MetricLogger
from dualformer_jax.train.step import TrainState

BATCH_KEYS = ("ids", "loss_mask", "valid")


@dataclasses.dataclass
class MathData:
  tok: md.Tokenizer
  train: list[md.TokenizedExample]
  test: list[md.MathExample]
  skipped: int  # training examples longer than data.max_len


def load_data(run: MathRun) -> MathData:
  """Tokenizer, tokenized training examples and the test problems of the run."""
  task, data = run.task, run.data
  if task.source == "synthetic":
    train, test = md.synthetic_splits(data.num_train, data.num_test, data.seed, task.min_ops,
                                      task.max_ops, task.max_value, task.max_operand)
  else:
    train, test = md.read_jsonl(data.train_file), md.read_jsonl(data.test_file)
  # A checkpoint reads every text (synthetic too) with its own tokenizer.json.
  tok = (lm_tokenizer.Tokenizer(run.lm.checkpoint) if run.lm.checkpoint
         else md.WordVocab.for_synthetic(task.max_value, task.max_operand))
  kept, skipped = md.tokenize_all(tok, train, data.max_len)
  # Test problems whose complete reference solution fits, as for training.
  test = [e for e in test if md.may_fit(tok, e, data.max_len)
          and md.tokenize(tok, e).full_len <= data.max_len]
  return MathData(tok, kept, test[:run.eval.num_problems], skipped)


def _sums(model: nnx.Module, batch: dict) -> dict[str, jax.Array]:
  """Per-batch sums: each sequence's mean cross-entropy over its solution tokens (summed
  over the sequences that have one, and their count), token hits and solution tokens."""
  ids_BxT = batch["ids"]
  # All T positions go in (T stays a multiple of the kernels' block sizes), the last
  # position's logits are not scored.
  logits_BxTxV = model(ids_BxT, batch["valid"])[:, :-1].astype(jnp.float32)
  targets_BxT = ids_BxT[:, 1:]
  mask_BxT = batch["loss_mask"][:, 1:].astype(jnp.float32)
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  tokens_B = jnp.sum(mask_BxT, axis=1)
  has_B = (tokens_B > 0).astype(jnp.float32)
  seq_loss_B = jnp.sum(ce_BxT * mask_BxT, axis=1) / jnp.maximum(tokens_B, 1.0)
  hits_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
  return {"loss_sum": jnp.sum(seq_loss_B * has_B), "sequences": jnp.sum(has_B),
          "correct_sum": jnp.sum(hits_BxT * mask_BxT), "solution_tokens": jnp.sum(mask_BxT)}


def _means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """loss: the mean over sequences of their per-token means; accuracy: over tokens."""
  return {"loss": sums["loss_sum"] / jnp.maximum(sums["sequences"], 1.0),
          "accuracy": sums["correct_sum"] / jnp.maximum(sums["solution_tokens"], 1.0),
          "solution_tokens": sums["solution_tokens"]}


def _sequences(batch: dict) -> jax.Array:
  """Sequences of the batch with a solution token, >= 1: the loss's normaliser."""
  tokens_B = jnp.sum(batch["loss_mask"][:, 1:].astype(jnp.float32), axis=1)
  return jnp.maximum(jnp.sum((tokens_B > 0).astype(jnp.float32)), 1.0)


def lm_loss(graphdef: nnx.GraphDef) -> step_lib.Loss:
  """The LM's Loss: a long solution weighs as much as a short one, so dropping steps does
  not reweigh problems; prompt tokens are not scored."""
  def objective(params, batch, norm):
    sums = _sums(nnx.merge(graphdef, params), batch)
    return sums["loss_sum"] / norm, sums

  return step_lib.Loss(keys=BATCH_KEYS, objective=objective, normaliser=_sequences,
                       means=_means)


def make_train_step(graphdef: nnx.GraphDef, train_cfg: MathTrainConfig, mesh: jax.sharding.Mesh,
                    state_shardings: TrainState) -> Callable:
  """train_step(state, batch) -> (state, metrics); jitted once, state donated."""
  return step_lib.build_train_step(lm_loss(graphdef), train_cfg, mesh, state_shardings)


def _record(run: MathRun, p: float, lm_cfg: lm_model.LMConfig) -> dict:
  """What a checkpoint must share with the run that resumes it: the data it reads, how it
  is optimised and the model. train.num_steps may change (to train longer), as in the
  planning trainer; so may the eval, log and checkpoint settings."""
  data = {k: getattr(run.data, k) for k in ("num_train", "num_test", "max_len")}
  if run.task.source == "jsonl":  # its bytes: a moved file is the same data, an edited one not
    data["train_file_sha256"] = _sha256(run.data.train_file)
  return {"p": float(p), "data_seed": int(run.data.seed), "seed": run.seed,
          "task": run.task.record(), "model": model_record(lm_cfg), "data": data,
          "train": {k: getattr(run.train, k) for k in OPTIMISATION},
          "lm_checkpoint": run.lm.checkpoint}


# config.train fields that shape the optimisation (not num_steps: a run may train longer).
OPTIMISATION = ("batch_size", "learning_rate", "warmup_steps", "final_lr_frac", "weight_decay",
                "b1", "b2", "grad_clip")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def model_record(lm_cfg: lm_model.LMConfig) -> dict:
  """The architecture a checkpoint fits; execution settings (attention, remat) may change."""
  return {k: v for k, v in dataclasses.asdict(lm_cfg).items() if k not in ("attention", "remat")}


def scratch_config(lm: MathLMConfig, max_len: int, tok: md.Tokenizer) -> lm_model.LMConfig:
  """The from-scratch architecture of `config.lm` for this tokenizer and data.max_len."""
  return lm_model.LMConfig(
      vocab_size=tok.vocab_size, dim=lm.dim, num_layers=lm.num_layers,
      num_heads=lm.num_heads, num_kv_heads=lm.num_kv_heads, ffn_dim=lm.ffn_dim,
      rope_theta=float(lm.rope_theta), max_position_embeddings=max_len,
      bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, **lm.execution())


def init_state(train_cfg: MathTrainConfig, seed: int, lm_cfg: lm_model.LMConfig, mesh,
               init_params: Callable[[], Any] | None
               ) -> tuple[nnx.GraphDef, Callable[[], TrainState], TrainState]:
  """(graphdef, make_state, abstract state with shardings); no arrays are made here.

  From scratch, the params are created inside jit with the shardings; fine-tuning
  starts from `init_params` (already placed by the checkpoint loader).
  """
  tx = step_lib.make_optimizer(train_cfg)
  graphdef = layers.graphdef_of(lambda: lm_model.LM(lm_cfg, rngs=nnx.Rngs(0)))

  def fresh(params=None) -> TrainState:
    if params is None:
      params = nnx.state(lm_model.LM(lm_cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    return step_lib.new_state(params, tx)

  abstract = sharding.abstract_of(fresh, mesh)
  make_fresh = jax.jit(fresh, out_shardings=step_lib.shardings_of(abstract))
  if init_params is None:
    return graphdef, make_fresh, abstract
  return graphdef, lambda: make_fresh(init_params()), abstract


def train(run: MathRun, run_dir: str, p: float, data: MathData, lm_cfg: lm_model.LMConfig,
          init_params: Callable[[], Any] | None = None, num_steps: int | None = None
          ) -> tuple[nnx.GraphDef, TrainState, int]:
  """Trains (or resumes) one model with step drop probability p up to `num_steps`
  (default train.num_steps; 0 only restores); returns (graphdef, state, signal number).

  A signal saves the last finished step and returns its number (0: ran to the end).
  init_params: loads the params to fine-tune (only called for a fresh start).
  """
  train_cfg = run.train
  num_steps = train_cfg.num_steps if num_steps is None else num_steps
  mesh = sharding.make_mesh(run.mesh)
  sharding.check_batch_size(train_cfg.batch_size, mesh)
  batches = step_dropping.train_batches(data.train, p, run.data.seed, train_cfg.batch_size,
                                        run.data.max_len, data.tok.pad_id)
  graphdef, make_state, abstract = init_state(train_cfg, run.seed, lm_cfg, mesh, init_params)
  ckpt = Checkpointer.with_record(run_dir, train_cfg.keep_checkpoints, _record(run, p, lm_cfg))
  if ckpt.all_steps():  # batches are addressed by step: the state is all a resume needs
    start, state = loop_lib.resume(ckpt, lambda s: ckpt.restore(s, abstract, None))
  else:
    start, state = 0, make_state()
  last_log = [time.perf_counter()]

  def seconds(step: int) -> dict:  # wall seconds since the last log row
    del step
    now = time.perf_counter()
    elapsed, last_log[0] = now - last_log[0], now
    return {"seconds": elapsed}

  loop = loop_lib.Loop(
      train_step=make_train_step(graphdef, train_cfg, mesh, step_lib.shardings_of(abstract)),
      next_batch=lambda step: sharding.shard_batch({k: batches[step - 1][k] for k in BATCH_KEYS},
                                              mesh),
      ckpt=ckpt, logger=MetricLogger(run_dir, resume_step=start), mesh=mesh,
      num_steps=num_steps, log_every=train_cfg.log_every,
      checkpoint_every=train_cfg.checkpoint_every, desc=f"train p={p:g}", log_fields=seconds,
      progress=lambda step, row: ({"loss": f"{row['loss']:.4f}",
                                   "acc": f"{row['accuracy']:.3f}"}, None))
  out = loop_lib.run(loop, state, start)
  return graphdef, out.state, out.signal_number


def model_source(run: MathRun, tok: md.Tokenizer
                 ) -> tuple[lm_model.LMConfig, Callable[[], Any] | None]:
  """(architecture, params loader): `config.lm` from scratch, or the HF checkpoint's.

  The loader reads the checkpoint straight into the mesh's shardings (each
  device's slice only); it is called once, for a fresh start, never on resume.
  """
  lm = run.lm
  if not lm.checkpoint:
    return scratch_config(lm, run.data.max_len, tok), None
  lm_cfg = hf_checkpoint.read_config(lm.checkpoint, **lm.execution())
  if tok.vocab_size > lm_cfg.vocab_size:
    raise ValueError(f"{lm.checkpoint}: tokenizer.json has {tok.vocab_size} tokens but the "
                     f"model only {lm_cfg.vocab_size} embeddings")

  def init_params():
    model = hf_checkpoint.load(lm.checkpoint, sharding.make_mesh(run.mesh), **lm.execution())
    return nnx.state(model, nnx.Param)

  return lm_cfg, init_params


def run(math_run: MathRun, workdir: str, mode: str = "all") -> dict:
  """Trains (mode all | train) and evaluates (all | evaluate) one model per p; prints and
  writes (<workdir>/math_results.json) the table. Returns {run name: results}.

  math_run: built by math_config.validate at the entry point, trusted here.
  A signal stops the run after a checkpoint (KeyboardInterrupt): rerun to resume.
  """
  preflight(math_run)
  with workdir_lock.hold(workdir, "math run"):
    return _run(math_run, workdir, mode)


def preflight(run: MathRun) -> None:
  """ValueError for a mesh that does not fit the devices or a batch it cannot split, before
  any data is read or file written (train() would find them only after both)."""
  sharding.check_batch_size(run.train.batch_size, sharding.make_mesh(run.mesh))


def _run(run: MathRun, workdir: str, mode: str) -> dict:
  data = load_data(run)
  if data.skipped:
    tqdm.write(f"{data.skipped} training examples are longer than data.max_len="
               f"{run.data.max_len} tokens and were left out")
  lm_cfg, init_params = model_source(run, data.tok)
  results = {}
  for p in run.data.drop_probs:
    run_dir = os.path.join(workdir, f"p{p:g}")
    os.makedirs(run_dir, exist_ok=True)
    steps = None if mode in ("all", "train") else 0
    graphdef, state, signum = train(run, run_dir, p, data, lm_cfg, init_params, num_steps=steps)
    if signum:
      raise KeyboardInterrupt(f"stopped by signal {signum}; rerun the command to resume")
    if int(state.step) == 0 and not run.lm.checkpoint:  # step 0 of a checkpoint: as loaded
      raise ValueError(f"{run_dir} has no checkpoint to evaluate: train first (--mode=all)")
    if mode == "train":
      continue
    res = eval_lib.evaluate_model(graphdef, state.params, data.tok, data.test, run.eval,
                                  run.data.max_len, run.seed)
    name = f"p={p:g}"
    results[name] = res
    text = eval_lib.table({name: res}, run.eval.pass_ks)
    eval_lib.write_results(os.path.join(run_dir, "results.json"), res,
                           json.loads(run.config.to_json()), text)
    del state
  if results:
    text = eval_lib.table(results, run.eval.pass_ks)
    eval_lib.write_results(os.path.join(workdir, "math_results.json"), results,
                           json.loads(run.config.to_json()), text)
    print(f"\n{len(data.test)} test problems; Greedy@1 and Pass@k in %, greedy lengths "
          f"(solution tokens, steps)\n{text}")
  return results
