"""Dualformer evaluation: n sampled responses per task and mode, checked by the task.

Modes differ only in the forced decoder prefix (PAPER.md, "Controlling the
mode at inference"): fast `bos plan`, slow `bos create`, auto `bos`.
Writes `<workdir>/eval/<step>/results.json`, `per_task.json` (each task's
counts, for intervals paired over tasks), `table.md`, pictures, and prints the
table. The first `eval.num_tasks` test tasks are scored (valid tasks with
`eval.split=valid`, into `eval/<step>/valid/`); a tasks file (`eval.tasks_file`)
is scored whole, into `eval/<step>/tasks-<file name>/`, so neither replaces the
test split's table.

Each sampling call takes `prompts_per_batch` prompts (rounded up to a multiple
of the mesh's data x fsdp size) split over the batch axes of the mesh, so with
several processes each process samples and checks its own share of the tasks.
The verdicts are then gathered, and process 0 computes the table a single
process would, and writes the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from dualformer_jax import config as config_lib
from dualformer_jax import distributed, io_utils
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import generate, records
from dualformer_jax.data.vocab import BOS, EOS, Vocab, strip_specials
from dualformer_jax.eval import metrics as metrics_lib
from dualformer_jax.eval import render
from dualformer_jax.infer import sampler as sampler_lib
from dualformer_jax.model import sharding
from dualformer_jax.tasks import make_task
from dualformer_jax.tasks.base import CREATE, PLAN, Task, Unsolvable, Verdict
from dualformer_jax.train import step as step_lib
from dualformer_jax.train.checkpoint import Checkpointer, CheckpointError

PER_TASK = "per_task.json"  # beside results.json: mode -> metrics.per_task's lists
MODE_PREFIX = {"fast": (BOS, PLAN), "slow": (BOS, CREATE), "auto": (BOS,)}


@dataclasses.dataclass(frozen=True)
class EvalTask:
  prompt: list[str]  # string tokens, no bos/eos
  optimal_len: int  # moves in the A* plan


def load_tasks(config: ml_collections.ConfigDict, task: Task, data_dir: str,
               vocab: Vocab) -> list[EvalTask]:
  """The first `eval.num_tasks` tasks of the `eval.split` split (test or valid), or every
  task of `eval.tasks_file`.

  ValueError names the file and line of a bad task, including one whose prompt
  the model would read as another task (a maze prompt does not state its grid
  size: a 3x3 maze would be read, and scored, as a size x size one).
  """
  out = []
  if config.eval.tasks_file:
    known = set(vocab.tokens)
    try:
      with open(config.eval.tasks_file, errors="replace") as f:
        lines = list(f)
    except OSError as e:
      raise ValueError(f"config.eval.tasks_file={config.eval.tasks_file!r}: {e.strerror}") from None
    for lineno, line in enumerate(lines, 1):
      if not line.strip():
        continue
      where = f"{config.eval.tasks_file}:{lineno}"
      try:
        spec = task.spec_from_json(json.loads(line))
        toks = task.solve_tokens(spec, None)
      except (ValueError, RecursionError, Unsolvable) as e:  # json errors are ValueErrors
        raise ValueError(f"{where}: {e}") from None
      unknown = [t for t in toks.prompt if t not in known]
      if unknown:
        raise ValueError(f"{where}: tokens {sorted(set(unknown))} are outside the model's "
                         "vocabulary (a larger grid than it was trained on?)")
      try:
        as_read = task.spec_from_prompt(toks.prompt)
      except ValueError as e:
        as_read = e
      if as_read != spec:
        raise ValueError(
            f"{where}: a {spec.width}x{spec.height} {task.name} task, which the model "
            f"(task.size={config.task.size}) would read as another one, since the prompt does "
            f"not state the grid size; give {config.task.size}x{config.task.size} tasks")
      out.append(EvalTask(toks.prompt, task.check(toks.prompt, toks.plan).plan_len))
  else:
    split = config.eval.get("split", "test")
    for rec in dataset_lib.open_dataset(data_dir).records(split)[:config.eval.num_tasks]:
      prompt, plan = vocab.decode(rec["prompt"]), vocab.decode(rec["plan"])
      out.append(EvalTask(prompt, task.check(prompt, plan).plan_len))
  if not out:
    raise ValueError("no tasks to evaluate")
  return out


def response_tokens(row: np.ndarray, vocab: Vocab) -> list[str]:
  """A sampled row (bos, forced prefix, generated, eos, pad) -> what a reader acts on."""
  return strip_specials(vocab.decode(row))


def encode_prompts(prompts: list[list[str]], vocab: Vocab, length: int) -> np.ndarray:
  """Encoder ids [Np, length]: bos, the prompt, eos, then pad (0)."""
  enc = np.zeros((len(prompts), length), np.int32)  # [Np, P]
  for i, p in enumerate(prompts):
    ids = vocab.encode([BOS, *p, EOS])
    enc[i, :len(ids)] = ids
  return enc


def restore_params(config, workdir: str, vocab: Vocab, mesh):
  """(graphdef, params, step) of the checkpoint asked for by `eval.checkpoint_step`; the
  graphdef computes in `eval.dtype` (sampling_config).

  The latest (-1) falls back to the newest usable step when later ones are
  damaged, saying so; an explicit step that is damaged is an error.
  """
  ckpt = Checkpointer(workdir, config, vocab.to_list())
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {ckpt.directory}; train first (--mode=train)")
    asked = config.eval.checkpoint_step
    if asked >= 0 and asked not in steps:
      raise CheckpointError(f"no checkpoint {asked} in {ckpt.directory}; have {steps}")
    abstract = step_lib.abstract_train_state(config, len(vocab), mesh, config.seed)
    if asked >= 0:
      step, state = asked, ckpt.restore(asked, abstract, None)
    else:
      say = print if jax.process_index() == 0 else (lambda _: None)
      step, state, damaged = ckpt.newest_good(lambda s: ckpt.restore(s, abstract, None), say)
      if damaged:
        say(f"warning: checkpoints {damaged} are damaged: evaluating checkpoint {step}")
  finally:
    ckpt.close()
  return step_lib.model_graphdef(sampling_config(config), len(vocab)), state.params, step


def sampling_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config whose model samples: model.dtype replaced by eval.dtype when that is set.

  Params are float32 whatever the compute dtype, so a model trained in bfloat16
  samples in float32 from the same checkpoint."""
  if not config.eval.get("dtype") or config.eval.dtype == config.model.dtype:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.dtype = config.eval.dtype
  return out


def output_dir(config: ml_collections.ConfigDict, workdir: str, step: int) -> str:
  """Where the evaluation of checkpoint `step` is written: eval/<step>, or beside it for a
  tasks file (tasks-<file name>) or the valid split (valid), never over the test table."""
  out_dir = os.path.join(workdir, "eval", str(step))
  if config.eval.tasks_file:
    stem = os.path.splitext(os.path.basename(config.eval.tasks_file))[0]
    return os.path.join(out_dir, f"tasks-{stem}")
  if config.eval.get("split", "test") != "test":
    return os.path.join(out_dir, config.eval.split)
  return out_dir


def _compact(v: Verdict) -> Verdict:
  """The verdict with its plan replaced by a 128-bit digest: metrics only compare plans
  (diversity), and the digests keep the verdicts gathered from other processes small."""
  if v.plan is None:
    return v
  return dataclasses.replace(v, plan=hashlib.blake2b(repr(v.plan).encode(),
                                                     digest_size=16).digest())


def _own_prompts(ids: jax.Array, num_samples: int) -> dict[int, np.ndarray]:
  """Prompt index in the batch -> its sampled rows [S, L], for the prompts this process owns.

  A row block belongs to the process holding its replica 0, so with replicated
  axes (tensor) every prompt still has exactly one owner.
  """
  out = {}
  for shard in ids.addressable_shards:
    if shard.replica_id != 0:
      continue
    rows = shard.index[0]
    start = rows.start or 0
    block = np.asarray(shard.data)  # [rows in block, L]
    if start % num_samples or block.shape[0] % num_samples:
      raise ValueError(f"sampled rows {start}..{start + block.shape[0]} split the "
                       f"{num_samples} samples of a prompt between devices")
    for k in range(block.shape[0] // num_samples):
      out[start // num_samples + k] = block[k * num_samples:(k + 1) * num_samples]
  return out


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples and scores every mode of `eval.modes`; returns mode -> metrics (on every process).
  Process 0 also writes each task's counts (metrics.per_task) to per_task.json."""
  config_lib.validate(config)
  directory = records.data_dir(workdir)
  meta = records.read_meta(directory)
  generate.check_dataset_config(meta, config, directory)
  vocab = Vocab.from_list(meta["vocab"])
  task = make_task(config.task)
  tasks = load_tasks(config, task, directory, vocab)
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params, step = restore_params(config, workdir, vocab, mesh)
  max_len = (config.eval.max_decode_len if config.eval.max_decode_len > 0
             else config.data.max_decoder_len)
  prompt_len = -(-max(len(t.prompt) + 2 for t in tasks) // 16) * 16  # one compiled shape
  out_dir = output_dir(config, workdir, step)
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  n = config.eval.num_samples
  split = sharding.batch_divisor(mesh)  # every device samples whole prompts
  per_batch = -(-config.eval.prompts_per_batch // split) * split
  rows_sharding = sharding.batch_sharding(mesh)
  spread_rows = jax.jit(lambda x: x, out_shardings=rows_sharding)  # each process: its prompts
  num_pictures = min(config.eval.num_pictures, len(tasks))
  key = jax.random.key(config.seed)
  results, per_task, pictures = {}, {}, {}
  for mode in config_lib.eval_modes(config):
    prefix_ids = vocab.encode(MODE_PREFIX[mode])
    mine = {}  # task index -> (compact verdicts, first response if pictured)
    for start in tqdm(range(0, len(tasks), per_batch), desc=f"eval {mode}",
                      disable=None if writes else True):
      chunk = tasks[start:start + per_batch]
      prompts = [t.prompt for t in chunk]
      prompts += [prompts[-1]] * (per_batch - len(prompts))  # fixed shape; extras ignored
      enc = encode_prompts(prompts, vocab, prompt_len)  # [Np, P], the same on every process
      enc = jax.make_array_from_callback(enc.shape, rows_sharding, lambda idx, enc=enc: enc[idx])
      rows = per_batch * n
      prefix = np.tile(prefix_ids, (rows, 1)).astype(np.int32)  # [R, K]
      prefix_len = np.full((rows,), len(prefix_ids), np.int32)
      ids, _, _ = sampler_lib.sample(
          graphdef, params, enc, prefix, prefix_len, jax.random.fold_in(key, start),
          num_samples=n, max_len=max_len, temperature=config.eval.temperature,
          top_k=config.eval.top_k, eos_id=vocab.id(EOS), mesh=mesh)
      ids = spread_rows(ids)
      for i, rows_SxL in _own_prompts(ids, n).items():
        if start + i >= len(tasks):
          continue  # a filler prompt
        t = tasks[start + i]
        resp = [response_tokens(r, vocab) for r in rows_SxL]
        mine[start + i] = ([_compact(task.check(t.prompt, r)) for r in resp],
                           resp[0] if start + i < num_pictures else None)
    gathered = {}
    for part in distributed.allgather_objects(mine):
      gathered.update(part)
    if sorted(gathered) != list(range(len(tasks))):
      raise RuntimeError(f"evaluation gathered {len(gathered)} of {len(tasks)} tasks")
    results[mode] = metrics_lib.compute_metrics(
        [t.optimal_len for t in tasks], [gathered[i][0] for i in range(len(tasks))],
        auto=(mode == "auto"))
    per_task[mode] = metrics_lib.per_task(
        [t.optimal_len for t in tasks], [gathered[i][0] for i in range(len(tasks))])
    pictures[mode] = [gathered[i][1] for i in range(num_pictures)]
  table = metrics_lib.markdown_table(results)
  if writes:
    io_utils.write_json(os.path.join(out_dir, "results.json"), results, indent=1)
    io_utils.write_json(os.path.join(out_dir, PER_TASK), per_task)
    source = config.eval.tasks_file or "the test split"
    io_utils.write_text(os.path.join(out_dir, "table.md"),
                        f"checkpoint {step}, {len(tasks)} tasks of {source} x {n} samples\n\n"
                        f"{table}\n")
    for mode, responses in pictures.items():
      for i, response in enumerate(responses):
        render.render_response(task.name, tasks[i].prompt, response,
                               os.path.join(out_dir, f"{mode}_{i}.png"),
                               title=f"{mode} mode, task {i}", size=config.task.size)
    print(f"\nevaluation at step {step}: {len(tasks)} tasks x {n} samples per mode "
          f"({out_dir})\n{table}")
  return results
