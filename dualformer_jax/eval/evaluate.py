"""Dualformer evaluation: n sampled responses per task and mode, checked by the task.

Modes differ only in the forced decoder prefix (PAPER.md, "Controlling the
mode at inference"): fast `bos plan`, slow `bos create`, auto `bos`.
Writes `<workdir>/eval/<step>/results.json`, `table.md`, pictures, and
prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from dualformer_jax import config as config_lib
from dualformer_jax.data import pipeline, records
from dualformer_jax.data.vocab import BOS, EOS, PAD, Vocab
from dualformer_jax.eval import metrics as metrics_lib
from dualformer_jax.eval import render
from dualformer_jax.infer import sampler as sampler_lib
from dualformer_jax.model import sharding
from dualformer_jax.tasks.base import CREATE, PLAN, Task, Unsolvable, make_task
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer, CheckpointError

MODE_PREFIX = {"fast": (BOS, PLAN), "slow": (BOS, CREATE), "auto": (BOS,)}


@dataclasses.dataclass(frozen=True)
class EvalTask:
  prompt: list[str]  # string tokens, no bos/eos
  optimal_len: int  # moves in the A* plan


def load_tasks(config: ml_collections.ConfigDict, task: Task, data_dir: str,
               vocab: Vocab) -> list[EvalTask]:
  """The first `eval.num_tasks` tasks of the test split, or of `eval.tasks_file`."""
  out = []
  if config.eval.tasks_file:
    with open(config.eval.tasks_file) as f:
      for lineno, line in enumerate(f, 1):
        if len(out) >= config.eval.num_tasks:
          break
        if not line.strip():
          continue
        where = f"{config.eval.tasks_file}:{lineno}"
        try:
          spec = task.spec_from_json(json.loads(line))
          toks = task.solve_tokens(spec, None)
        except (ValueError, Unsolvable) as e:  # json errors are ValueErrors
          raise ValueError(f"{where}: {e}") from None
        unknown = [t for t in toks.prompt if t not in set(vocab.tokens)]
        if unknown:
          raise ValueError(f"{where}: tokens {sorted(set(unknown))} are outside the model's "
                           "vocabulary (a larger grid than it was trained on?)")
        out.append(EvalTask(toks.prompt, task.check(toks.prompt, toks.plan).plan_len))
  else:
    for rec in pipeline.eval_records(config, data_dir)[:config.eval.num_tasks]:
      prompt, plan = vocab.decode(rec["prompt"]), vocab.decode(rec["plan"])
      out.append(EvalTask(prompt, task.check(prompt, plan).plan_len))
  if not out:
    raise ValueError("no tasks to evaluate")
  return out


def response_tokens(row: np.ndarray, vocab: Vocab) -> list[str]:
  """A sampled row (bos, forced prefix, generated, eos, pad) -> tokens after bos, before eos."""
  toks = vocab.decode(row)
  if toks and toks[0] == BOS:
    toks = toks[1:]
  if EOS in toks:
    toks = toks[:toks.index(EOS)]
  return [t for t in toks if t != PAD]


def _encode_prompts(prompts: list[list[str]], vocab: Vocab, length: int) -> np.ndarray:
  enc = np.zeros((len(prompts), length), np.int32)  # [Np, P]
  for i, p in enumerate(prompts):
    ids = vocab.encode([BOS, *p, EOS])
    enc[i, :len(ids)] = ids
  return enc


def restore_params(config, workdir: str, vocab: Vocab, mesh):
  """(graphdef, params, step) of the checkpoint asked for by `eval.checkpoint_step`."""
  ckpt = Checkpointer(workdir, config, vocab.to_list())
  try:
    step = ckpt.latest_step() if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
    if step is None:
      raise CheckpointError(f"no checkpoint in {ckpt.directory}; train first (--mode=train)")
    if step not in ckpt.all_steps():
      raise CheckpointError(f"no checkpoint {step} in {ckpt.directory}; have {ckpt.all_steps()}")
    abstract = step_lib.abstract_train_state(config, len(vocab), mesh, config.seed)
    state = ckpt.restore(step, abstract, None)
  finally:
    ckpt.close()
  return step_lib.model_graphdef(config, len(vocab)), state.params, step


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples and scores every mode of `eval.modes`; returns mode -> metrics."""
  config_lib.validate(config)
  directory = records.data_dir(workdir)
  vocab = Vocab.from_list(records.read_meta(directory)["vocab"])
  task = make_task(config.task)
  tasks = load_tasks(config, task, directory, vocab)
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params, step = restore_params(config, workdir, vocab, mesh)
  max_len = (config.eval.max_decode_len if config.eval.max_decode_len > 0
             else config.data.max_decoder_len)
  prompt_len = -(-max(len(t.prompt) + 2 for t in tasks) // 16) * 16  # one compiled shape
  out_dir = os.path.join(workdir, "eval", str(step))
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  n, per_batch = config.eval.num_samples, config.eval.prompts_per_batch
  key = jax.random.key(config.seed)
  results, all_responses = {}, {}
  for mode in config_lib.eval_modes(config):
    prefix_ids = vocab.encode(MODE_PREFIX[mode])
    verdicts, responses = [], []
    for start in tqdm(range(0, len(tasks), per_batch), desc=f"eval {mode}", disable=None):
      chunk = tasks[start:start + per_batch]
      prompts = [t.prompt for t in chunk]
      prompts += [prompts[-1]] * (per_batch - len(prompts))  # fixed shape; extras ignored
      enc = _encode_prompts(prompts, vocab, prompt_len)
      rows = per_batch * n
      prefix = np.tile(prefix_ids, (rows, 1)).astype(np.int32)  # [R, K]
      prefix_len = np.full((rows,), len(prefix_ids), np.int32)
      ids, _, _ = sampler_lib.sample(
          graphdef, params, enc, prefix, prefix_len, jax.random.fold_in(key, start),
          num_samples=n, max_len=max_len, temperature=config.eval.temperature,
          top_k=config.eval.top_k, eos_id=vocab.id(EOS))
      ids = np.asarray(jax.device_get(ids)).reshape(per_batch, n, -1)
      for i, t in enumerate(chunk):
        resp = [response_tokens(r, vocab) for r in ids[i]]
        responses.append(resp)
        verdicts.append([task.check(t.prompt, r) for r in resp])
    results[mode] = metrics_lib.compute_metrics(
        [t.optimal_len for t in tasks], verdicts, auto=(mode == "auto"))
    all_responses[mode] = responses
  table = metrics_lib.markdown_table(results)
  if writes:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
      f.write(f"checkpoint {step}, {len(tasks)} tasks x {n} samples\n\n{table}\n")
    for mode, responses in all_responses.items():
      for i in range(min(config.eval.num_pictures, len(tasks))):
        render.render_response(task.name, tasks[i].prompt, responses[i][0],
                               os.path.join(out_dir, f"{mode}_{i}.png"),
                               title=f"{mode} mode, task {i}")
    print(f"\nevaluation at step {step}: {len(tasks)} tasks x {n} samples per mode "
          f"({out_dir})\n{table}")
  return results
