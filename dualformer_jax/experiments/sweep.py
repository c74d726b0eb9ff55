"""The data-efficiency sweep: the comparison at several numbers of training tasks, with seeds.

  python -m dualformer_jax.experiments.sweep --config=configs/maze.py:sweep --workdir=DIR

One dataset holds data.num_train train tasks and a valid and a test split; the
point with N tasks (each value of sweep.num_train) trains every model of
sweep.models on the first N train tasks (nested subsets, one test split), once per
seed (sweep.seeds: seed, seed + 1, ...; the dataset stays), so small sets are seen
for many epochs. Every mode of every model is scored on the test split at the step
experiments/select.py selects (one rule for all) and at its last step; at the point
bootstrap.num_train each seed's Complete-Trace run is bootstrapped for
bootstrap.rounds rounds (bootstrap.py; models searchformer_r1, ...). With
sweep.tuned (a tune.json of experiments/tune.py) each model trains with its chosen
learning rate and steps.

Each point reports every metric's mean and spread over seeds, and a 95% interval for
each claim's difference (CLAIMS: Dualformer's mode minus a baseline; and each bootstrapping
round minus Complete-Trace), paired over test tasks and seeds (intervals.py).

Workdir layout:
  data/                      the dataset, generated once
  <N>/seed<k>/               one comparison per point and seed (data -> ../data), each model
                             in compare.py's layout, with summary.json (every record)
  sweep.json                 per point: metrics over seeds, steps, intervals, wall times
  sweep.md, sweep.png        the tables, and 1-Optimal / SWC against N per model and mode
Each stage whose output exists is skipped, so an interrupted sweep resumes with the
same command; raising sweep.seeds or bootstrap.rounds later runs only the new ones.
With sweep.record_dir, each model's result per point and seed is also kept there as
<N>/seed<k>/<model>.json (kept_results.py), small enough for git: a sweep on another
machine takes the results it finds and trains only the rest; sweep.json, sweep.md and
sweep.png are written there too, as in the workdir, keeping the points of an earlier
sweep.json there that this run does not compute.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from dualformer_jax import config as config_lib
from dualformer_jax import io_utils
from dualformer_jax.data import generate
from dualformer_jax.config import RunConfig
from dualformer_jax.experiments import (bootstrap, compare, intervals, kept_results, report,
                                        select)
from dualformer_jax.train import trainer

SWEEP = "sweep.json"
# (model, mode, baseline, its mode): the differences each point gives an interval for.
CLAIMS = (("dualformer", "fast", "solution_only", "fast"),
          ("dualformer", "slow", "complete_trace", "slow"),
          ("dualformer", "auto", "complete_trace", "slow"))
# Each bootstrapping round's slow mode is also compared with Complete-Trace's (aggregate).
# metric -> the per-task score it averages (metrics.per_task's counts).
PAIRED = {"1_optimal": lambda t: np.asarray(t["optimal"]) >= 1,
          "swc": lambda t: np.asarray(t["swc"])}
# The metrics whose mean and spread over seeds are reported.
SPREAD = ("1_solved", "1_optimal", "3_optimal", "swc", "mean_trace_len",
          "mean_trace_len_correct", "mean_trace_clauses", "mean_trace_clauses_correct",
          "slow_share", "malformed_share")


def models_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(m.strip() for m in config.sweep.models.split(",") if m.strip())


def read_tuned(config: ml_collections.ConfigDict) -> dict:
  """model -> {"learning_rate", "num_steps"} of sweep.tuned's tune.json; {} when unset."""
  if not config.sweep.tuned:
    return {}
  try:
    chosen = io_utils.read_json(config.sweep.tuned, "tune summary").get("chosen")
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f"config.sweep.tuned={config.sweep.tuned!r}: {e}") from None
  if not isinstance(chosen, dict) or not all(
      isinstance(v, dict) and {"learning_rate", "num_steps"} <= set(v) for v in chosen.values()):
    raise ValueError(f"config.sweep.tuned={config.sweep.tuned!r}: no 'chosen' object of "
                     "model -> learning_rate, num_steps (write it with experiments/tune.py)")
  return chosen


def check_config(config: ml_collections.ConfigDict) -> RunConfig:
  """ValueError naming the first bad sweep.* / bootstrap.* field, before any work; returns
  the checked RunConfig."""
  run = config_lib.validate(config)
  values = tuple(config.sweep.num_train)

  def fail(field: str, why: str):
    raise ValueError(f"config.sweep.{field}={config.sweep[field]!r}: {why}")

  if not values:
    fail("num_train", "give the training-task counts, e.g. '(1000,3000,10000)'")
  if not all(isinstance(v, int) and v >= 1 for v in values):
    fail("num_train", "every value must be an int >= 1")
  if list(values) != sorted(set(values)):
    fail("num_train", "values must increase, without repeats")
  if values[-1] > config.data.num_train:
    fail("num_train", f"{values[-1]} exceeds data.num_train={config.data.num_train}, the train "
         "tasks generated; raise data.num_train")
  if config.data.num_valid < 1:
    raise ValueError("config.data.num_valid=0: the sweep selects each model's checkpoint on "
                     "the valid split; set data.num_valid > 0")
  if config.sweep.seeds < 1:
    fail("seeds", "must be >= 1")
  models = models_of(config)
  if not models or any(m not in compare.MODELS for m in models) or len(set(models)) < len(models):
    fail("models", f"expected a comma-separated subset of {','.join(compare.MODELS)}")
  tuned = read_tuned(config)
  if tuned and set(models) - set(tuned):
    fail("tuned", f"has no setting for {sorted(set(models) - set(tuned))}")
  steps = [config.train.num_steps, *(v["num_steps"] for v in tuned.values())]
  if config.bootstrap.rounds:
    steps.append(config.bootstrap.finetune_steps)
  select.check_config(config, max(steps))
  bootstrap.check_config(config, values, models)
  trainer.preflight(run)  # mesh, schedule (the model: validate)
  for n in values:  # a record of another config is refused before any work
    for k in range(config.sweep.seeds):
      _recorded(config, n, k, tuned)
  return run


def run_config(config: ml_collections.ConfigDict, n: int, k: int, name: str,
               tuned: dict) -> ml_collections.ConfigDict:
  """Model `name` of `config` on the first `n` train tasks, with seed k (and its tuned
  learning rate and steps)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.train_tasks, c.seed = n, config.seed + k
  if name in tuned:
    c.train.learning_rate = float(tuned[name]["learning_rate"])
    c.train.num_steps = int(tuned[name]["num_steps"])
  return compare.model_config(c, name)


def record_path(config: ml_collections.ConfigDict, n: int, k: int, name: str) -> str:
  """Where sweep.record_dir keeps model `name`'s result at point n, seed k ("": none)."""
  if not config.sweep.record_dir:
    return ""
  return os.path.join(config.sweep.record_dir, str(n), f"seed{k}", name + ".json")


def _recorded(config: ml_collections.ConfigDict, n: int, k: int, tuned: dict) -> dict:
  """name -> the kept result (kept_results.py) of each model and bootstrap round of seed k
  at point n that sweep.record_dir holds; ValueError for one of another config."""
  kept = {name: kept_results.load(record_path(config, n, k, name),
                                  _kept_config(config, n, k, name, tuned), "sweep record")
          for name in (*models_of(config), *_rounds(config, n))}
  return {name: v for name, v in kept.items() if v is not None}


def _kept_config(config: ml_collections.ConfigDict, n: int, k: int, name: str,
                 tuned: dict) -> ml_collections.ConfigDict | dict:
  """The config a kept result is checked against: a model's run config; a bootstrap
  round's, that of the Complete-Trace run it starts from with the bootstrap settings
  (kept_results ignores bootstrap.* for every other run)."""
  if name in compare.MODELS:
    return run_config(config, n, k, name, tuned)
  source = run_config(config, n, k, bootstrap.SOURCE_MODEL, tuned).to_dict()
  return {**source, "bootstrap_round": source["bootstrap"]}


def _rounds(config: ml_collections.ConfigDict, n: int) -> list[str]:
  """The bootstrap rounds (model names) of the point with n tasks."""
  if not config.bootstrap.rounds or n != config.bootstrap.num_train:
    return []
  return [bootstrap.round_name(r) for r in range(1, config.bootstrap.rounds + 1)]


def run_seed(config: ml_collections.ConfigDict, workdir: str, n: int, k: int, meta: dict,
             tuned: dict) -> dict:
  """Every model (and bootstrap round) of seed k at the point with `n` tasks; returns the
  summary written to <n>/seed<k>/summary.json (model -> select.score's record).

  A model with a kept result (sweep.record_dir) is not trained; a fresh result is kept.
  The Complete-Trace run and its bootstrap rounds are kept or redone together: each round
  starts from the checkpoint of the run before it."""
  point = compare.run_dir(workdir, str(n))
  where = compare.run_dir(point, f"seed{k}")
  summary = compare.new_summary(config, meta)
  summary["seed"] = config.seed + k
  kept, rounds = _recorded(config, n, k, tuned), _rounds(config, n)
  chain = [bootstrap.SOURCE_MODEL, *rounds] if rounds else []
  if not all(name in kept for name in chain):
    kept = {name: v for name, v in kept.items() if name not in chain}
  runs = {}

  def add(name: str, scored: tuple[dict, int]) -> None:
    compare.add_model(summary, where, name, scored)
    if config.sweep.record_dir:
      kept_results.save(record_path(config, n, k, name),
                        {"scored": list(scored), "wall_s": summary["wall_s"][name],
                         "machine": kept_results.machine()},
                        _kept_config(config, n, k, name, tuned))

  def take(name: str) -> None:
    print(f"[{n} tasks, seed {k}] {name}: kept in {record_path(config, n, k, name)}",
          flush=True)
    compare.add_model(summary, where, name, tuple(kept[name]["scored"]),
                      wall_s=kept[name]["wall_s"])

  for name in models_of(config):
    runs[name] = config_lib.validate(run_config(config, n, k, name, tuned))
    if name in kept:
      take(name)
      continue
    print(f"[{n} tasks, seed {k}] {name}", flush=True)
    add(name, select.score(runs[name], compare.run_dir(where, name), name,
                           compare.MODELS[name][1]))
  if rounds and rounds[0] in kept:
    for name in rounds:
      take(name)
  elif rounds:
    start = summary["selected_step"][bootstrap.SOURCE_MODEL]
    for name, scored in bootstrap.run(runs[bootstrap.SOURCE_MODEL], where, start,
                                      select.score):
      add(name, scored)
  io_utils.write_json(os.path.join(where, compare.SUMMARY), summary, indent=1, default=list)
  return summary


def aggregate(seeds: list[dict]) -> dict:
  """One point's entry of sweep.json from its seeds' summaries (run_seed's)."""
  models: dict = {}
  for name in seeds[0]["models"]:
    records = [s["models"][name] for s in seeds if name in s["models"]]
    models[name] = {
        mode: {which: {key: intervals.spread([r[which][mode].get(key) for r in records])
                       for key in SPREAD} for which in ("selected", "last")}
        for mode in records[0]["selected"]}
  steps = {name: {mode: [s["models"][name]["selected_step"][mode] for s in seeds]
                  for mode in models[name]} for name in models}
  last = {name: seeds[0]["models"][name]["last_step"] for name in models}
  claims = {"selected": [], "last": []}
  rounds = [(name, bootstrap.MODE, bootstrap.SOURCE_MODEL, bootstrap.MODE) for name in models
            if bootstrap.is_round(name)]
  for model, mode, base, base_mode in (*CLAIMS, *rounds):
    if model not in models or base not in models or mode not in models[model]:
      continue
    for which in claims:
      for metric, per_task in PAIRED.items():
        a = [per_task(s["models"][model]["per_task"][which][mode]) for s in seeds]
        b = [per_task(s["models"][base]["per_task"][which][base_mode]) for s in seeds]
        claims[which].append({"model": model, "mode": mode, "baseline": base,
                              "baseline_mode": base_mode, "metric": metric,
                              **intervals.paired_difference(a, b)})
  wall = {name: {key: (None if any(s["wall_s"][name].get(key) is None for s in seeds)
                       else round(sum(s["wall_s"][name][key] for s in seeds), 1))
                 for key in seeds[0]["wall_s"][name]} for name in models}
  return {"seeds": [s["seed"] for s in seeds], "models": models, "selected_step": steps,
          "last_step": last, "intervals": claims, "wall_s": wall}


RULE = {True: "each mode at the saved step of highest sampled 1-Optimal on {t} valid tasks x "
              "{s} responses of that mode (ties: SWC, then the later step)",
        False: "each model at its saved step of lowest validation loss"}


def _other_points(config: ml_collections.ConfigDict) -> dict:
  """The points of sweep.record_dir's sweep.json that this run does not compute, when it
  was written under this config (up to the point list): a sweep of some points adds to the
  kept summary instead of replacing it."""
  path = os.path.join(config.sweep.record_dir, SWEEP) if config.sweep.record_dir else ""
  if not path or not os.path.exists(path):
    return {}
  kept = io_utils.read_json(path, "sweep summary")
  if kept_results.fingerprint(kept["config"]) != kept_results.fingerprint(config):
    return {}
  return {n: p for n, p in kept["points"].items()
          if int(n) not in set(config.sweep.num_train)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole sweep: data, every point and seed, sweep.json and its report (rewritten after
  each point, so a sweep stopped part-way has the table and plot of the points it finished)."""
  data = check_config(config).data
  tuned = read_tuned(config)
  os.makedirs(workdir, exist_ok=True)
  meta = generate.generate(data, workdir)
  rule = RULE[bool(config.sweep.select_tasks)].format(t=config.sweep.select_tasks,
                                                     s=config.sweep.select_samples)
  out = {"task": config.task.name, "num_train": list(config.sweep.num_train),
         "seeds": config.sweep.seeds, "selection": rule, "tuned": tuned,
         "points": _other_points(config),
         "reference": compare.new_summary(config, meta)["reference"],
         "config": config.to_dict()}
  for n in config.sweep.num_train:
    seeds = [run_seed(config, workdir, n, k, meta, tuned) for k in range(config.sweep.seeds)]
    out["points"][str(n)] = aggregate(seeds)
    out["points"] = dict(sorted(out["points"].items(), key=lambda p: int(p[0])))
    for where in {workdir, config.sweep.record_dir} - {""}:  # the summary kept with the rows
      io_utils.write_json(os.path.join(where, SWEEP), out, indent=1, default=list)
      report.write_sweep_report(where, out)
  return out


if __name__ == "__main__":
  compare.cli(run, "sweep.md", "configs/maze.py:sweep", "directory of the sweep")
