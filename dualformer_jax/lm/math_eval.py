"""Greedy@1, Pass@k and solution lengths of a math LM, per mode, through the sampling front
(infer/modes.py: fixed-size batches, fillers, keys, prefixes as the planning evaluation).

Modes differ only in the tokens forced after the prompt (math_data's format),
as the planning modes do with `create` / `plan`:
  slow  prompt + STEP_MARK: the model must write at least one step;
  fast  prompt + ANSWER_MARK: the model writes the answer at once;
  auto  the prompt alone: the model chooses.
The paper's math section reports one free-running evaluation per model; the
fast/slow split is this project's, so that the math models can be read the way
the maze tables are (a p = 0 model has never seen an answer right after the
prompt: its fast mode is the "complete trace forced to answer" baseline).

Greedy@1: share of problems whose greedy (top_k = 1) response is correct.
Pass@k: the unbiased estimate from n >= k samples at `eval.temperature`
(Chen et al. 2021): 1 - C(n - c, k) / C(n, k) per problem, c correct, averaged.
A response is correct when it ended (eos within the length budget) and its
extracted answer equals the reference (answers.py). Lengths are those of the
greedy responses: solution tokens after the prompt (the forced marker and eos
included), and steps (STEP_MARK occurrences).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from dualformer_jax import io_utils
from dualformer_jax.infer import modes
from dualformer_jax.infer import sampler as sampler_lib
from dualformer_jax.lm import answers
from dualformer_jax.lm import math_data as md
from dualformer_jax.lm.math_config import MathEvalConfig

_MODE_MARK = {"slow": md.STEP_MARK, "fast": md.ANSWER_MARK, "auto": ""}


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (needs k <= n)."""
  if not 0 < k <= n or not 0 <= c <= n:
    raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def count_marks(ids: np.ndarray, mark: np.ndarray) -> int:
  """Non-overlapping occurrences of the token run `mark` in `ids`."""
  n, m, i, count = len(ids), len(mark), 0, 0
  while m and i + m <= n:
    if np.array_equal(ids[i:i + m], mark):
      count, i = count + 1, i + m
    else:
      i += 1
  return count


def _prefixes(tok: md.Tokenizer, examples: Sequence[md.MathExample], mode: str
              ) -> tuple[list[np.ndarray], np.ndarray]:
  """The forced tokens per problem (prompt + the mode's marker), and the prompt lengths."""
  mark = md.marker_ids(tok, _MODE_MARK[mode]) if _MODE_MARK[mode] else np.zeros(0, np.int32)
  prompts = [md.prompt_ids(tok, e.problem) for e in examples]
  return ([np.concatenate([p, mark]).astype(np.int32) for p in prompts],
          np.asarray([len(p) for p in prompts]))


def _score(tok: md.Tokenizer, samples: sampler_lib.Samples, prompt_lens: np.ndarray,
           refs: Sequence[str], step_mark: np.ndarray) -> dict[str, np.ndarray]:
  """Per row: correct, solution tokens, steps, finished (host arrays)."""
  ids_RxL, len_R, done_R = (np.asarray(x) for x in jax.device_get(tuple(samples)))
  correct, tokens, steps = [], [], []
  for r, ref in enumerate(refs):
    sol = ids_RxL[r, prompt_lens[r]:len_R[r]]
    body = sol[:-1] if done_R[r] else sol  # eos is not text
    correct.append(bool(done_R[r]) and answers.is_correct(tok.decode(body.tolist()), ref))
    tokens.append(len(sol))
    steps.append(count_marks(sol, step_mark))
  return {"correct": np.asarray(correct), "tokens": np.asarray(tokens, np.float64),
          "steps": np.asarray(steps, np.float64), "finished": done_R.astype(bool)}


def _mesh_of(params: Any) -> jax.sharding.Mesh | None:
  """The mesh the params were trained on: the sampler then splits its rows (and KV cache)
  over the batch axes; without it an 8B model's cache for 160 rows was 3.3x larger per
  chip (python -m dualformer_jax.compile --config=configs/math.py:paper, v5e:2x4)."""
  sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
  return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None


def _run_mode(graphdef: nnx.GraphDef, params: Any, tok: md.Tokenizer,
              examples: Sequence[md.MathExample], eval_cfg: MathEvalConfig, max_len: int,
              key: jax.Array, *, mode: str, num_samples: int, top_k: int) -> dict[str, np.ndarray]:
  """Samples num_samples responses per problem; per-row results, [problems, num_samples]."""
  prefixes, prompt_lens = _prefixes(tok, examples, mode)
  width = max(len(p) for p in prefixes)
  if width >= max_len:
    raise ValueError(f"a prompt of {width} tokens leaves no room in data.max_len={max_len}")
  step_mark = md.marker_ids(tok, md.STEP_MARK)
  settings = modes.Settings(num_samples=num_samples, max_len=max_len,
                            temperature=float(eval_cfg.temperature), top_k=top_k,
                            prompts_per_batch=int(eval_cfg.problems_per_batch))
  out: dict[str, list] = {}
  for _, idx, samples in modes.sample_batches(
      graphdef, params, prefixes, key, settings, eos_id=tok.eos_id,
      # A HF vocabulary without a pad token pads with eos, which must stay sampleable.
      pad_id=None if tok.pad_id == tok.eos_id else tok.pad_id, mesh=_mesh_of(params),
      desc=f"{mode} {'greedy' if top_k == 1 else 'sampled'}"):
    rows = [i for i in idx for _ in range(num_samples)]
    # Lengths count from the end of the prompt proper: a forced marker is solution.
    scored = _score(tok, samples, prompt_lens[rows], [examples[i].answer for i in rows],
                    step_mark)
    keep = len(set(idx)) * num_samples  # drop the filler rows
    for k, v in scored.items():
      out.setdefault(k, []).append(v[:keep])
  return {k: np.concatenate(v).reshape(len(examples), num_samples) for k, v in out.items()}


def evaluate_model(graphdef: nnx.GraphDef, params: Any, tok: md.Tokenizer,
                   examples: Sequence[md.MathExample], eval_cfg: MathEvalConfig, max_len: int,
                   seed: int) -> dict[str, dict]:
  """{mode: {greedy_at_1, pass_at_<k>..., mean_tokens, mean_steps, finished, ...}};
  eval_cfg was checked when built (pass_ks <= num_samples, the modes)."""
  if not examples:
    raise ValueError("no evaluation problems")
  ks = sorted({int(k) for k in eval_cfg.pass_ks})
  n = int(eval_cfg.num_samples)
  key = jax.random.key(seed)
  results = {}
  for m, mode in enumerate(eval_cfg.mode_list):
    greedy = _run_mode(graphdef, params, tok, examples, eval_cfg, max_len,
                       jax.random.fold_in(key, 2 * m), mode=mode, num_samples=1, top_k=1)
    sampled = _run_mode(graphdef, params, tok, examples, eval_cfg, max_len,
                        jax.random.fold_in(key, 2 * m + 1), mode=mode, num_samples=n,
                        top_k=int(eval_cfg.top_k))
    c = sampled["correct"].sum(axis=1)
    res = {"problems": len(examples), "greedy_at_1": float(greedy["correct"].mean())}
    for k in ks:
      res[f"pass_at_{k}"] = float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))
    res.update(mean_tokens=float(greedy["tokens"].mean()), mean_steps=float(greedy["steps"].mean()),
               finished=float(greedy["finished"].mean()),
               sampled_mean_tokens=float(sampled["tokens"].mean()),
               sampled_mean_steps=float(sampled["steps"].mean()))
    results[mode] = res
  return results


def table(results: dict[str, dict[str, dict]], ks: Sequence[int]) -> str:
  """Markdown table, one row per (run, mode); `results` = {run name: evaluate_model output}."""
  ks = sorted({int(k) for k in ks})
  head = ["run", "mode", "Greedy@1"] + [f"Pass@{k}" for k in ks] + ["tokens", "steps"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run, by_mode in results.items():
    for mode, r in by_mode.items():
      cells = [run, mode, f"{100 * r['greedy_at_1']:.1f}"]
      cells += [f"{100 * r[f'pass_at_{k}']:.1f}" for k in ks]
      cells += [f"{r['mean_tokens']:.1f}", f"{r['mean_steps']:.2f}"]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(path: str, results: dict, config_json: dict, text_table: str) -> None:
  """Results, the config that produced them, and the table, as one JSON file (atomic)."""
  io_utils.write_json(path, {"results": results, "table": text_table, "config": config_json},
                      indent=1)
