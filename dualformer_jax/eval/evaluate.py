"""Dualformer evaluation: n sampled responses per task and mode, checked by the task.

Modes differ only in the forced decoder prefix (PAPER.md, "Controlling the
mode at inference"): fast `bos plan`, slow `bos create`, auto `bos`; the
sampling itself is infer/modes.py's, the model restored by infer/restore.py.
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

from dualformer_jax import distributed, io_utils
from dualformer_jax.config import RunConfig
from dualformer_jax.data import dataset as dataset_lib
from dualformer_jax.data import generate, records
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.eval import metrics as metrics_lib
from dualformer_jax.eval.eval_config import EvalConfig
from dualformer_jax.eval import render
from dualformer_jax.infer import modes, restore
from dualformer_jax.model import sharding
from dualformer_jax.tasks import make_task
from dualformer_jax.tasks.base import Task, Unsolvable, Verdict

PER_TASK = "per_task.json"  # beside results.json: mode -> metrics.per_task's lists


@dataclasses.dataclass(frozen=True)
class EvalTask:
  prompt: list[str]  # string tokens, no bos/eos
  optimal_len: int  # moves in the A* plan


def load_tasks(eval_cfg: EvalConfig, task: Task, data_dir: str, vocab: Vocab,
               size: int) -> list[EvalTask]:
  """The first `eval.num_tasks` tasks of the `eval.split` split (test or valid), or every
  task of `eval.tasks_file` (_file_tasks, for a model of task.size `size`). ValueError
  when there are none."""
  if eval_cfg.tasks_file:
    out = _file_tasks(eval_cfg.tasks_file, task, vocab, size)
  else:
    out = []
    for rec in dataset_lib.open_dataset(data_dir).records(eval_cfg.split)[:eval_cfg.num_tasks]:
      prompt, plan = vocab.decode(rec["prompt"]), vocab.decode(rec["plan"])
      out.append(EvalTask(prompt, task.check(prompt, plan).plan_len))
  if not out:
    raise ValueError("no tasks to evaluate")
  return out


def _file_tasks(path: str, task: Task, vocab: Vocab, size: int) -> list[EvalTask]:
  """Every task of a JSON-lines file of task specs.

  ValueError names the file and line of a bad task, including one whose prompt
  the model would read as another task (a maze prompt does not state its grid
  size: a 3x3 maze would be read, and scored, as a size x size one).
  """
  known = set(vocab.tokens)
  try:
    with open(path, errors="replace") as f:
      lines = list(f)
  except OSError as e:
    raise ValueError(f"config.eval.tasks_file={path!r}: {e.strerror}") from None
  out = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
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
          f"(task.size={size}) would read as another one, since the prompt does "
          f"not state the grid size; give {size}x{size} tasks")
    out.append(EvalTask(toks.prompt, task.check(toks.prompt, toks.plan).plan_len))
  return out


def output_dir(eval_cfg: EvalConfig, workdir: str, step: int) -> str:
  """Where the evaluation of checkpoint `step` is written: eval/<step>, or beside it for a
  tasks file (tasks-<file name>) or the valid split (valid), never over the test table."""
  out_dir = os.path.join(workdir, "eval", str(step))
  if eval_cfg.tasks_file:
    stem = os.path.splitext(os.path.basename(eval_cfg.tasks_file))[0]
    return os.path.join(out_dir, f"tasks-{stem}")
  if eval_cfg.split != "test":
    return os.path.join(out_dir, eval_cfg.split)
  return out_dir


def _compact(v: Verdict) -> Verdict:
  """The verdict with its plan replaced by a 128-bit digest: metrics only compare plans
  (diversity), and the digests keep the verdicts gathered from other processes small."""
  if v.plan is None:
    return v
  return dataclasses.replace(v, plan=hashlib.blake2b(repr(v.plan).encode(),
                                                     digest_size=16).digest())


def evaluate(run: RunConfig, workdir: str) -> dict:
  """Samples and scores every mode of `run.eval.modes`; returns mode -> metrics (on every
  process). Process 0 also writes each task's counts (metrics.per_task) to per_task.json."""
  ev, data = run.eval, run.data
  directory = records.data_dir(workdir)
  meta = records.read_meta(directory)
  generate.check_dataset_config(meta, data, directory)
  vocab = Vocab.from_list(meta["vocab"])
  task = make_task(data.task)
  tasks = load_tasks(ev, task, directory, vocab, data.task.size)
  mesh = sharding.make_mesh(run.mesh)
  graphdef, params, step = restore.restore_params(run.config, run.model, ev.dtype, workdir,
                                                  vocab, mesh, ev.checkpoint_step)
  settings = modes.Settings(
      num_samples=ev.num_samples,
      max_len=modes.decode_len(ev.max_decode_len, data.max_decoder_len),
      temperature=ev.temperature, top_k=ev.top_k,
      prompts_per_batch=modes.prompts_per_batch(ev.prompts_per_batch, mesh))
  num_pictures = min(ev.num_pictures, len(tasks))
  key = jax.random.key(run.seed)
  results, per_task, pictures = {}, {}, {}
  for mode in ev.mode_list:
    verdicts, pictures[mode] = _sample_and_check(graphdef, params, vocab, mesh, task, tasks,
                                                 mode, key, settings, num_pictures)
    optimal = [t.optimal_len for t in tasks]
    results[mode] = metrics_lib.compute_metrics(optimal, verdicts, auto=(mode == "auto"))
    per_task[mode] = metrics_lib.per_task(optimal, verdicts)
  if jax.process_index() == 0:
    _write(ev, data.task.size, output_dir(ev, workdir, step), step, task, tasks, results,
           per_task, pictures)
  return results


def _sample_and_check(graphdef, params, vocab: Vocab, mesh, task: Task, tasks: list[EvalTask],
                      mode: str, key: jax.Array, settings: modes.Settings, num_pictures: int
                      ) -> tuple[list[list[Verdict]], list[list[str]]]:
  """(each task's compact verdicts, the first response of the first num_pictures tasks) in
  `mode`: each process checks the tasks it sampled, then all are gathered."""
  mine = {}  # task index -> (compact verdicts, first response if pictured)
  for i, rows_SxL in modes.sample_prompts(graphdef, params, vocab, mesh,
                                          [t.prompt for t in tasks], mode, key, settings,
                                          desc=f"eval {mode}", quiet=jax.process_index() != 0):
    resp = [modes.response_tokens(r, vocab) for r in rows_SxL]
    mine[i] = ([_compact(task.check(tasks[i].prompt, r)) for r in resp],
               resp[0] if i < num_pictures else None)
  gathered = {}
  for part in distributed.allgather_objects(mine):
    gathered.update(part)
  if sorted(gathered) != list(range(len(tasks))):
    raise RuntimeError(f"evaluation gathered {len(gathered)} of {len(tasks)} tasks")
  return ([gathered[i][0] for i in range(len(tasks))],
          [gathered[i][1] for i in range(num_pictures)])


def _write(ev: EvalConfig, size: int, out_dir: str, step: int, task: Task,
           tasks: list[EvalTask], results: dict, per_task: dict, pictures: dict) -> None:
  """results.json, per_task.json, table.md and the pictures in out_dir; prints the table."""
  os.makedirs(out_dir, exist_ok=True)
  table = metrics_lib.markdown_table(results)
  n = ev.num_samples
  io_utils.write_json(os.path.join(out_dir, "results.json"), results, indent=1)
  io_utils.write_json(os.path.join(out_dir, PER_TASK), per_task)
  source = ev.tasks_file or "the test split"
  io_utils.write_text(os.path.join(out_dir, "table.md"),
                      f"checkpoint {step}, {len(tasks)} tasks of {source} x {n} samples\n\n"
                      f"{table}\n")
  for mode, responses in pictures.items():
    for i, response in enumerate(responses):
      render.render_response(task.name, tasks[i].prompt, response,
                             os.path.join(out_dir, f"{mode}_{i}.png"),
                             title=f"{mode} mode, task {i}", size=size)
  print(f"\nevaluation at step {step}: {len(tasks)} tasks x {n} samples per mode "
        f"({out_dir})\n{table}")
