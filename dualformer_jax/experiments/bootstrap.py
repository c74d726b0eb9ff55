"""Searchformer's search-dynamics bootstrapping (PAPER.md, "Baselines") at one sweep point.

Round r samples `bootstrap.samples` slow-mode responses per train and valid task
from the model of round r - 1 (round 0: the point's Complete-Trace run) at its
selected checkpoint, keeps for each task the shortest response whose plan the
task's checker finds optimal, or the task's current sequence when none is (as
Searchformer's reduce_rollout_to_shortest_trace does), writes those as the
round's dataset, fine-tunes round r - 1's params on it for
`bootstrap.finetune_steps` (fresh optimizer and schedule) and evaluates the
result in slow mode like every other model. The valid split is rebuilt the same
way, so the validation loss that selects a round's checkpoint is measured on
held-out tasks of that round's own training distribution.

Under the point's directory (experiments/sweep.py), per round:
  searchformer_r<r>/data/          train and valid shards of the kept responses, the
                                   test shards linked from the point's dataset,
                                   meta.json with a "bootstrap" record (source, counts)
  searchformer_r<r>/...            the fine-tuning run (checkpoints, metrics, eval/)
  searchformer_r<r>/timing.json    sample_s, train_s, eval_s
A round whose dataset, training or evaluation exists skips that stage; the
sampling of one round is redone whole if it was interrupted. One process only.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from dualformer_jax import config as config_lib
from dualformer_jax.config import RunConfig
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import dropping, generate, records
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.eval.metrics import is_optimal
from dualformer_jax.experiments import compare
from dualformer_jax.infer import modes, restore
from dualformer_jax.model import sharding
from dualformer_jax.tasks import make_task
from dualformer_jax.tasks.base import Task

SOURCE_MODEL = "complete_trace"  # what round 1 starts from (Searchformer without bootstrapping)
MODE = "slow"  # the one mode a trace-trained model is sampled and scored in


def round_name(r: int) -> str:
  return f"searchformer_r{r}"


def is_round(name: str) -> bool:
  """Whether `name` is a bootstrapping round's model (round_name)."""
  prefix = round_name(0)[:-1]
  return name.startswith(prefix) and name[len(prefix):].isdigit()


def check_config(config: ml_collections.ConfigDict, sweep_values: Sequence[int],
                 models: Sequence[str]) -> None:
  """ValueError naming the first bad bootstrap.* field (only checked when rounds > 0)."""
  b = config.bootstrap

  def fail(field: str, why: str):
    raise ValueError(f"config.bootstrap.{field}={b[field]!r}: {why}")

  if b.rounds < 0:
    fail("rounds", "must be >= 0 (0: no bootstrapping)")
  if not b.rounds:
    return
  if b.num_train not in sweep_values:
    fail("num_train", f"must be one of sweep.num_train={tuple(sweep_values)}: the point whose "
         "Complete-Trace run is bootstrapped")
  if SOURCE_MODEL not in models:
    fail("rounds", f"bootstrapping starts from {SOURCE_MODEL}, which sweep.models lacks")
  if b.samples < 1:
    fail("samples", "must be >= 1 (the paper samples 32 per task)")
  if b.temperature <= 0:
    fail("temperature", "must be > 0")
  if b.finetune_steps < 1:
    fail("finetune_steps", "must be >= 1")
  if config.data.num_valid < 1:
    raise ValueError("bootstrapping selects each round's checkpoint by validation loss: set "
                     "config.data.num_valid > 0")


def shortest_optimal(task: Task, prompt: list[str], optimal_len: int,
                     responses: Sequence[list[str]], vocab: Vocab,
                     grammar: dropping.TraceGrammar) -> tuple[list[str], list[str]] | None:
  """(trace, plan) of the response with the fewest trace tokens among those whose plan is
  optimal and whose trace is a run of clauses (training would refuse another); None if none."""
  best = None
  for response in responses:
    verdict = task.check(prompt, response)
    if not is_optimal(verdict, optimal_len):
      continue
    trace, plan = response[:verdict.trace_len], response[verdict.trace_len:]
    try:
      dropping.clause_bounds(np.asarray(vocab.encode(trace), np.int32), grammar)
    except (ValueError, KeyError):  # TraceFormatError, UnknownTokenError
      continue
    if best is None or len(trace) < len(best[0]):
      best = (trace, plan)
  return best


def sample_responses(run: RunConfig, path: str, step: int,
                     prompts: Sequence[list[str]], key: jax.Array) -> list[list[list[str]]]:
  """bootstrap.samples slow-mode responses (string tokens, specials stripped) per prompt from
  checkpoint `step` of the run in `path`, at bootstrap.temperature."""
  vocab = Vocab.from_list(records.read_meta(records.data_dir(path))["vocab"])
  mesh = sharding.make_mesh(run.mesh)
  graphdef, params, _ = restore.restore_params(run.config, run.model, run.eval.dtype, path,
                                               vocab, mesh, step)
  boot, ev = run.config.bootstrap, run.eval
  settings = modes.Settings(
      num_samples=boot.samples,
      max_len=modes.decode_len(ev.max_decode_len, run.data.max_decoder_len),
      temperature=boot.temperature, top_k=ev.top_k,
      prompts_per_batch=modes.prompts_per_batch(ev.prompts_per_batch, mesh))
  out = [None] * len(prompts)
  for i, rows_SxL in modes.sample_prompts(graphdef, params, vocab, mesh, prompts, MODE, key,
                                          settings, desc="bootstrap samples"):
    out[i] = [modes.response_tokens(r, vocab) for r in rows_SxL]
  return out


def _write_split(task: Task, src: dataset_lib.StoredDataset, split: str, responses: list,
                 path: str) -> dict:
  """Writes one split of kept responses; returns its selection counts and trace lengths."""
  vocab, out, kept_lens, src_lens = src.vocab, [], [], []
  for rec, resp in zip(src.records(split), responses):
    prompt = vocab.decode(rec["prompt"])
    optimal_len = task.check(prompt, vocab.decode(rec["plan"])).plan_len
    best = shortest_optimal(task, prompt, optimal_len, resp, vocab, src.grammar)
    src_lens.append(rec["trace"].size)
    if best is None:
      trace, plan = rec["trace"], rec["plan"]
    else:
      trace, plan = (np.asarray(vocab.encode(t), np.int32) for t in best)
      kept_lens.append(trace.size)
    out.append(records.encode_record(rec["prompt"], trace, plan))
  records.write_shard(path, out)
  return {"tasks": len(out), "optimal": len(kept_lens),
          "mean_trace_len_kept": float(np.mean(kept_lens)) if kept_lens else None,
          "mean_trace_len_before": float(np.mean(src_lens))}


def build_round_dataset(run: RunConfig, source: str, source_step: int,
                        source_train_tasks: int, out_dir: str, record: dict) -> dict:
  """The round's dataset in `out_dir` from the model in run dir `source`; returns meta.json."""
  src = dataset_lib.open_dataset(records.data_dir(source), source_train_tasks)
  task = make_task(run.data.task)
  shutil.rmtree(out_dir, ignore_errors=True)  # an interrupted build is redone whole
  os.makedirs(out_dir)
  key = jax.random.fold_in(jax.random.key(run.seed), record["round"])
  splits = ("train", records.VALID)
  prompts = {s: [src.vocab.decode(r["prompt"]) for r in src.records(s)] for s in splits}
  responses = sample_responses(run, source, source_step,
                               prompts["train"] + prompts[records.VALID], key)  # one restore
  stats = {}
  for split, part in zip(splits, (responses[:len(prompts["train"])],
                                  responses[len(prompts["train"]):])):
    path = records.shard_paths(out_dir, split, 1)[0]
    stats[split] = _write_split(task, src, split, part, path)
  test = src.paths("test")
  for p in test:  # the same test tasks: linked, relative to survive moving the workdir
    target = os.path.join(out_dir, os.path.basename(p))
    os.symlink(os.path.relpath(os.path.realpath(p), out_dir), target)
  shards = {"train": 1, records.VALID: 1, "test": len(test)}
  meta = {"status": "complete", "vocab": src.vocab.to_list(), "num_shards": shards,
          "counts": {s: stats[s]["tasks"] for s in splits} | {"test": src.meta["counts"]["test"]},
          "lengths": {s: generate.length_stats(records.shard_paths(out_dir, s, n))
                      for s, n in shards.items()},
          "bootstrap": {**record, "selection": stats}}
  records.write_meta(out_dir, meta)
  return meta


def _existing(out_dir: str, record: dict) -> dict | None:
  """meta.json of a finished round dataset built from `record`; DatasetError when it was
  built from another source or setting, None when missing or unfinished."""
  try:
    meta = records.read_meta(out_dir)
  except records.DatasetError:
    return None
  if not dataset_lib.is_complete(meta):
    return None
  theirs = {k: v for k, v in meta.get("bootstrap", {}).items() if k != "selection"}
  if theirs != record:
    raise records.DatasetError(
        f"the bootstrap dataset in {out_dir} was built from {theirs}, not {record}; delete "
        f"{os.path.dirname(out_dir)} to rebuild that round")
  return meta


def round_config(config: ml_collections.ConfigDict, meta: dict, source: str,
                 source_step: int) -> ml_collections.ConfigDict:
  """The fine-tuning run of a round: Complete-Trace's format on the round's dataset, from
  the source's params, for bootstrap.finetune_steps, scored in slow mode."""
  c = compare.model_config(config, SOURCE_MODEL)
  c.data.num_train, c.data.num_valid = meta["counts"]["train"], meta["counts"][records.VALID]
  c.data.train_tasks = 0  # the round's dataset holds exactly the point's tasks
  c.train.num_steps = config.bootstrap.finetune_steps
  c.train.init_from, c.train.init_step = os.path.abspath(source), source_step
  return c


def run(source_run: RunConfig, point_dir: str, start_step: int,
        score: Callable[..., tuple[object, int]] = compare.train_and_evaluate
        ) -> Iterator[tuple[str, tuple[object, int]]]:
  """Rounds 1..bootstrap.rounds at the sweep point in `point_dir`, whose Complete-Trace run
  (`source_run`) is scored at `start_step`; yields (model name, score's answer) per round. `score(run,
  path, name, modes)` trains and scores a round and returns (its result, the step the next
  round starts from): compare.train_and_evaluate's (mode -> metrics, scored step), or
  select.score's (record, selected step)."""
  if jax.process_count() > 1:
    raise RuntimeError("bootstrapping runs in one process")
  config = source_run.config  # bootstrap.*, and the base of each round's config
  source, step = os.path.join(point_dir, SOURCE_MODEL), start_step
  train_tasks = source_run.data.train_tasks
  for r in range(1, config.bootstrap.rounds + 1):
    name = round_name(r)
    path = os.path.join(point_dir, name)
    out_dir = records.data_dir(path)
    record = {"round": r, "source": os.path.relpath(source, point_dir), "source_step": step,
              "samples": config.bootstrap.samples,
              "temperature": config.bootstrap.temperature, "seed": source_run.seed}
    meta = _existing(out_dir, record)
    if meta is None:
      print(f"[{name}] sampling {config.bootstrap.samples} responses per train and valid task "
            f"from {record['source']} (step {step})", flush=True)
      start = time.perf_counter()
      meta = build_round_dataset(source_run, source, step, train_tasks, out_dir, record)
      compare.add_time(path, "sample_s", time.perf_counter() - start)
    scored = score(config_lib.validate(round_config(config, meta, source, step)), path, name,
                   (MODE,))
    yield name, scored
    source, step, train_tasks = path, scored[1], 0
