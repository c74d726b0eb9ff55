"""The data-efficiency sweep with one Searchformer bootstrapping round, on a tiny maze set:
the valid split, nested subsets, best-validation scoring, resume, the kept responses, bad input.

One sweep is trained once for the module, at one point (16 of 32 tasks) with Complete-Trace
and one round, to keep the suite fast; report_test draws a table and plot of several points.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import maze as maze_configs
from dualformer_jax import config as config_lib
from dualformer_jax.data import dataset, dropping, generate, records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.train_stream import train_iterator
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.eval import evaluate
from dualformer_jax.experiments import bootstrap, report, select, sweep
from dualformer_jax.infer import restore
from dualformer_jax.model import sharding
from dualformer_jax.tasks import make_task
from dualformer_jax.train import step as step_lib
from dualformer_jax.train import trainer


def tiny_config():
  c = maze_configs.get_config("sweep")
  c.task.size = 5
  c.data.num_train, c.data.num_valid, c.data.num_test, c.data.num_shards = 32, 8, 8, 2
  c.data.gen_workers = 1
  c.data.max_prompt_len, c.data.max_decoder_len = 64, 160
  c.data.num_buckets = 1  # one compiled shape keeps the test fast
  c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 2, 8, 1
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 2, 2, 1
  c.train.checkpoint_every, c.train.keep_checkpoints = 1, 2  # two candidates, both kept
  c.eval.num_tasks, c.eval.num_samples, c.eval.num_pictures = 3, 2, 1
  c.sweep.num_train, c.sweep.models = (16,), "complete_trace"
  c.sweep.seeds, c.sweep.select_tasks, c.sweep.select_samples = 2, 2, 1
  c.bootstrap.num_train, c.bootstrap.samples, c.bootstrap.finetune_steps = 16, 2, 1
  c.compilation_cache_dir = ""
  return c


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  c = tiny_config()
  c.sweep.record_dir = os.path.join(workdir, "kept")  # each model's result, per seed
  return workdir, sweep.run(c, workdir)


def _layouts(task, ds, split):
  return {task.layout_key(task.spec_from_prompt(ds.vocab.decode(r["prompt"])))
          for r in ds.records(split)}


def test_the_valid_split_holds_layouts_in_neither_train_nor_test(swept):
  ds = dataset.open_dataset(records.data_dir(swept[0]))
  assert ds.meta["counts"] == {"train": 32, "valid": 8, "test": 8}
  task = make_task(tiny_config().task)
  train, valid, test = (_layouts(task, ds, s) for s in ("train", "valid", "test"))
  assert valid and not valid & train and not valid & test and not train & test
  c = tiny_config()
  c.data.num_valid = 0  # datasets made before the valid split keep their fingerprint
  old = DataConfig.from_config(c)
  assert "num_valid" not in generate.generator_fingerprint(old)
  assert generate.split_counts(old) == {"train": 32, "test": 8}


def test_a_point_trains_on_the_first_tasks_only(swept):
  directory = records.data_dir(swept[0])
  seen = {}
  for n in (16, 0):  # 0: every task
    it = train_iterator(DataConfig.from_config(tiny_config()),
                        dataset.open_dataset(directory, train_tasks=n), 8, 0, 1,
                        include_index=True)
    seen[n] = np.concatenate([next(it)["index"] for _ in range(8)])  # 4 epochs of 16
    it.close()
  assert seen[16].max() == 15 and len(set(seen[16].tolist()) - {-1}) >= 12
  assert seen[0].max() >= 16
  with pytest.raises(records.DatasetError, match="train_tasks=33: .* has 32 train tasks"):
    dataset.open_dataset(directory, train_tasks=33)


def _json(*path):
  with open(os.path.join(*path)) as f:
    return json.load(f)


def test_every_seed_is_scored_at_its_best_sampled_validation_step_and_its_last(swept):
  workdir, out = swept
  assert out["num_train"] == [16] and list(out["points"]) == ["16"]
  point = out["points"]["16"]
  assert point["seeds"] == [0, 1] and set(point["models"]) == {"complete_trace",
                                                               "searchformer_r1"}
  for k in range(2):
    where = os.path.join(workdir, "16", f"seed{k}")
    with open(os.path.join(where, "summary.json")) as f:
      summary = json.load(f)
    assert summary["seed"] == k
    for model, record in summary["models"].items():
      path = os.path.join(where, model)
      with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["seed"] == k
      curve = record["validation"]["slow"]
      saved = select.saved_steps(config_lib.validate(tiny_config()), path)
      assert sorted(curve) == [str(s) for s in saved]
      chosen = record["selected_step"]["slow"]
      assert chosen == select.best(
          {int(s): _json(path, "eval", s, "valid", "results.json")["slow"] for s in curve})
      assert point["selected_step"][model]["slow"][k] == chosen
      for which, step in (("selected", chosen), ("last", record["last_step"])):
        with open(os.path.join(path, "eval", str(step), "results.json")) as f:
          assert json.load(f)["slow"] == record[which]["slow"]
        assert len(record["per_task"][which]["slow"]["optimal"]) == 3  # eval.num_tasks
      with open(os.path.join(path, "eval", str(chosen), "valid", "results.json")) as f:
        assert json.load(f)["slow"]["num_tasks"] == 2  # sweep.select_tasks
  ones = [_json(workdir, "16", f"seed{k}", "summary.json")
          ["models"]["complete_trace"]["selected"]["slow"]["1_optimal"] for k in range(2)]
  assert point["models"]["complete_trace"]["slow"]["selected"]["1_optimal"]["mean"] == \
      pytest.approx(np.mean(ones))
  assert "mean_trace_clauses" in point["models"]["searchformer_r1"]["slow"]["selected"]
  for name in ("sweep.md", "sweep.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  for name in ("sweep.json", "sweep.md"):  # the summary is kept with the rows
    with open(os.path.join(workdir, name)) as a, open(os.path.join(workdir, "kept", name)) as b:
      assert a.read() == b.read()


def test_a_finished_sweep_is_not_recomputed(swept, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("a finished stage ran again")

  for module, fn in ((trainer, "train"), (evaluate, "evaluate"),
                     (bootstrap, "sample_responses")):
    monkeypatch.setattr(module, fn, fail)
  for fn in ("write_report", "write_sweep_report"):  # drawing is not a stage; it is slow
    monkeypatch.setattr(report, fn, lambda *a: [])
  again = sweep.run(tiny_config(), swept[0])["points"]
  assert json.dumps(again, sort_keys=True) == json.dumps(swept[1]["points"], sort_keys=True)


def test_kept_results_are_taken_on_another_machine_instead_of_training(swept, tmp_path,
                                                                       monkeypatch):
  kept = str(tmp_path / "kept")
  shutil.copytree(os.path.join(swept[0], "kept"), kept)
  assert sorted(os.listdir(os.path.join(kept, "16", "seed1"))) == [
      "complete_trace.json", "searchformer_r1.json"]
  # Seed 1 lost its round: its Complete-Trace run, whose checkpoint the round starts from,
  # is trained again with the round; seed 0 is taken as kept.
  os.remove(os.path.join(kept, "16", "seed1", "searchformer_r1.json"))
  trained, train = [], trainer.train
  monkeypatch.setattr(trainer, "train", lambda run, path: trained.append(
      os.path.relpath(path, tmp_path / "w")) or train(run, path))
  for fn in ("write_report", "write_sweep_report"):
    monkeypatch.setattr(report, fn, lambda *a: [])
  c = tiny_config()
  c.sweep.record_dir = kept
  again = sweep.run(c, str(tmp_path / "w"))  # a fresh workdir
  assert trained == ["16/seed1/complete_trace", "16/seed1/searchformer_r1"]

  def results(out):  # every figure but the wall times of the runs trained again
    return json.dumps({n: {k: v for k, v in p.items() if k != "wall_s"}
                       for n, p in out["points"].items()}, sort_keys=True)

  assert results(again) == results(swept[1])
  assert os.path.exists(os.path.join(kept, "16", "seed1", "searchformer_r1.json"))


def test_a_sweep_of_some_points_adds_to_the_kept_summary(swept, tmp_path, monkeypatch):
  kept = str(tmp_path / "kept")
  shutil.copytree(os.path.join(swept[0], "kept"), kept)
  summary = _json(kept, "sweep.json")
  summary["points"] = {"8": summary["points"]["16"], **summary["points"]}  # an earlier point
  with open(os.path.join(kept, "sweep.json"), "w") as f:
    json.dump(summary, f)
  monkeypatch.setattr(report, "write_sweep_report", lambda *a: [])
  c = tiny_config()
  c.sweep.record_dir = kept
  out = sweep.run(c, str(tmp_path / "w"))  # every run of point 16 is kept: none trains
  assert list(out["points"]) == ["8", "16"] == list(_json(kept, "sweep.json")["points"])
  assert out["points"]["8"] == summary["points"]["8"]
  c.sweep.select_samples = 2  # another config: its points are not mixed in
  assert list(sweep._other_points(c)) == []


def test_a_kept_result_of_another_config_is_refused_before_any_work(swept, tmp_path):
  c = tiny_config()
  c.sweep.record_dir = os.path.join(swept[0], "kept")
  c.sweep.select_samples = 2  # the selection is measured differently now
  with pytest.raises(ValueError, match=r"another config \(sweep.select_samples differ"):
    sweep.run(c, str(tmp_path / "w"))
  c = tiny_config()
  c.sweep.record_dir = os.path.join(swept[0], "kept")
  c.bootstrap.samples = 3  # the round is built differently; the models are not
  with pytest.raises(ValueError, match=r"searchformer_r1.json: recorded with another config "
                                       r"\(bootstrap_round.samples differ"):
    sweep.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_the_round_keeps_an_optimal_response_or_the_task_sequence(swept):
  point = os.path.join(swept[0], "16", "seed0")
  source = dataset.open_dataset(records.data_dir(os.path.join(point, "complete_trace")), 16)
  ds = dataset.open_dataset(records.data_dir(os.path.join(point, "searchformer_r1")))
  assert ds.meta["counts"] == {"train": 16, "valid": 8, "test": 8}
  assert ds.meta["bootstrap"]["source"] == "complete_trace"
  task = make_task(tiny_config().task)
  for split in ("train", "valid"):
    kept = 0
    for old, new in zip(source.records(split), ds.records(split)):
      assert np.array_equal(old["prompt"], new["prompt"])
      if np.array_equal(old["trace"], new["trace"]) and np.array_equal(old["plan"], new["plan"]):
        continue
      kept += 1
      prompt = ds.vocab.decode(new["prompt"])
      optimal = task.check(prompt, ds.vocab.decode(old["plan"])).plan_len
      verdict = task.check(prompt, ds.vocab.decode(np.concatenate([new["trace"], new["plan"]])))
      assert verdict.correct and verdict.plan_len == optimal
    assert ds.meta["bootstrap"]["selection"][split]["optimal"] >= kept
  assert [r["plan"].tolist() for r in ds.records("test")] == \
      [r["plan"].tolist() for r in source.records("test")]
  r1 = os.path.join(point, "searchformer_r1")
  with open(os.path.join(r1, "config.json")) as f:
    train_cfg = json.load(f)["train"]
  assert (train_cfg["num_steps"], train_cfg["init_step"]) == (
      1, swept[1]["points"]["16"]["selected_step"]["complete_trace"]["slow"][0])
  assert train_cfg["init_from"] == os.path.abspath(os.path.join(point, "complete_trace"))


def test_a_finetuning_run_starts_from_the_source_params(swept):
  c = bootstrap.round_config(tiny_config(), {"counts": {"train": 16, "valid": 8}},
                             os.path.join(swept[0], "16", "seed0", "complete_trace"), 2)
  vocab = records.read_meta(records.data_dir(swept[0]))["vocab"]
  r = config_lib.validate(c)
  mesh = sharding.make_mesh(r.mesh)
  fresh = step_lib.abstract_train_state(r.model, r.train, mesh, r.seed)  # shapes only: cheap
  started = trainer._init_params(r, vocab, mesh, fresh)
  _, source, _ = restore.restore_params(c, r.model, r.eval.dtype, r.train.init_from,
                                        Vocab.from_list(vocab), mesh, 2)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), started.params, source)
  assert all(jax.tree.leaves(same)) and started.step is fresh.step  # the step stays fresh


def test_the_shortest_optimal_response_is_kept():
  task = make_task(tiny_config().task)
  spec = task.spec_from_json({"width": 5, "height": 5, "start": [0, 0], "goal": [2, 0],
                              "walls": [[1, 1]]})
  toks = task.solve_tokens(spec, None)
  vocab = Vocab(task.vocabulary())
  grammar = dropping.TraceGrammar.from_vocab(vocab)
  optimal = task.check(toks.prompt, toks.plan).plan_len
  first = toks.trace[:toks.trace.index("create", 1)]  # up to the second create clause
  assert 0 < len(first) < len(toks.trace) - len(first)
  detour = [t for cell in ("0 0", "0 1", "0 2", "1 2", "2 2", "2 1", "2 0")
            for t in ("plan", *cell.split())]
  responses = [
      [*toks.trace, *toks.plan],  # optimal, the full A* trace
      [*first, *detour],  # a correct plan, not optimal
      [*first[:-1], *toks.plan],  # optimal, but a clause lacks a cost: no trace to train on
      [*first, *first, *toks.plan],  # optimal, shorter than A*'s: kept
      ["create", "0", "0", *toks.plan],  # optimal, a trace of no clause
  ]
  assert task.check(toks.prompt, [*first, *detour]).correct
  best = bootstrap.shortest_optimal(task, toks.prompt, optimal, responses, vocab, grammar)
  assert best == ([*first, *first], toks.plan)
  assert bootstrap.shortest_optimal(task, toks.prompt, optimal, responses[1:3], vocab,
                                    grammar) is None


@pytest.mark.parametrize("field,value,message", [
    ("sweep.num_train", (), "give the training-task counts"),
    ("sweep.num_train", (16, 8), "must increase, without repeats"),
    ("sweep.num_train", (8, 8), "must increase, without repeats"),
    ("sweep.num_train", (0, 8), "an int >= 1"),
    ("sweep.num_train", (16, 64), "64 exceeds data.num_train=32"),
    ("sweep.models", "dualformer,searchformer", "subset of solution_only,complete_trace"),
    ("sweep.models", "", "subset of"),
    ("data.num_valid", 0, "data.num_valid=0: the sweep selects"),
    ("sweep.seeds", 0, "sweep.seeds=0: must be >= 1"),
    ("sweep.select_tasks", 9, "select_tasks=9: exceeds data.num_valid=8"),
    ("sweep.select_samples", 0, "select_samples=0: must be >= 1"),
    ("train.keep_checkpoints", 1, "keep_checkpoints=1: selection by sampled validation"),
    ("sweep.tuned", "/nonexistent/tune.json", "sweep.tuned='/nonexistent/tune.json'"),
    ("data.train_tasks", 33, r"data.train_tasks=33: must be in \[0, data.num_train=32\]"),
    ("bootstrap.num_train", 20, r"must be one of sweep.num_train=\(16,\)"),
    ("bootstrap.samples", 0, "bootstrap.samples=0: must be >= 1"),
    ("bootstrap.finetune_steps", 0, "must be >= 1"),
    ("bootstrap.rounds", -1, "must be >= 0"),
])
def test_bad_sweep_settings_are_refused_before_any_work(tmp_path, field, value, message):
  c = tiny_config()
  group, key = field.split(".")
  c[group][key] = value
  with pytest.raises(ValueError, match=message):
    sweep.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_bootstrapping_needs_the_complete_trace_model():
  c = tiny_config()
  c.sweep.models = "dualformer"
  with pytest.raises(ValueError, match="starts from complete_trace, which sweep.models lacks"):
    sweep.check_config(c)
  c.bootstrap.rounds = 0
  sweep.check_config(c)
  config_lib.validate(c)


def _record(modes: dict, last_step=4):
  """select.score's record of one model: mode -> per-task optimal counts, scored alike at
  the selected step 2 and the last step."""
  metrics = {m: {"1_optimal": float(np.mean(np.asarray(o) >= 1)), "swc": 0.1,
                 "mean_trace_len": 5.0, "mean_trace_len_correct": 4.0} for m, o in modes.items()}
  per_task = {m: {"optimal": o, "solved": o, "swc": [0.1] * len(o)} for m, o in modes.items()}
  return {"selected": metrics, "last": metrics, "selected_step": {m: 2 for m in modes},
          "last_step": last_step, "per_task": {"selected": per_task, "last": per_task},
          "validation": {}}


def test_a_point_reports_spreads_and_an_interval_per_claim(tmp_path):
  rng = np.random.default_rng(0)
  seeds = []
  for k in range(3):
    base = (rng.random(40) < 0.5).astype(int).tolist()
    seeds.append({"seed": k, "wall_s": {m: {"train_s": 1.0, "eval_s": 2.0} for m in
                                        ("solution_only", "complete_trace", "dualformer")},
                  "models": {"solution_only": _record({"fast": base}),
                             "complete_trace": _record({"slow": base}),
                             "dualformer": _record({"fast": [1] * 40, "slow": base,
                                                    "auto": base})}})
  point = sweep.aggregate(seeds)
  assert point["seeds"] == [0, 1, 2]
  assert point["wall_s"]["dualformer"] == {"train_s": 3.0, "eval_s": 6.0}
  assert point["selected_step"]["dualformer"] == {"fast": [2, 2, 2], "slow": [2, 2, 2],
                                                  "auto": [2, 2, 2]}
  fast = point["models"]["dualformer"]["fast"]["selected"]["1_optimal"]
  assert (fast["mean"], fast["std"], fast["n"]) == (1.0, 0.0, 3)
  claims = {(c["mode"], c["baseline"], c["metric"]): c for c in point["intervals"]["selected"]}
  assert set(claims) == {(m, b, x) for m, b in (("fast", "solution_only"),
                                                ("slow", "complete_trace"),
                                                ("auto", "complete_trace"))
                         for x in ("1_optimal", "swc")}
  assert claims["fast", "solution_only", "1_optimal"]["excludes_zero"]  # 100% against ~50%
  same = claims["slow", "complete_trace", "1_optimal"]  # identical per-task scores
  assert (same["diff"], same["low"], same["high"], same["excludes_zero"]) == (0, 0, 0, False)
  table = report.seeds_markdown({"seeds": 3, "selection": "a rule", "points": {"40": point}})
  assert "| 40 | Dualformer | fast | 100.0% ± 0.0 [100.0-100.0] |" in table
  assert "| 40 | Dualformer fast - Solution-Only fast | selected step | 1_optimal |" in table
  rows = [r for r in table.splitlines() if "Dualformer slow - Complete-Trace slow | last" in r]
  assert rows[0].endswith("| no |") and "Selection: a rule" in table
  paths = report.write_sweep_report(str(tmp_path), {"seeds": 3, "points": {"40": point}})
  assert all(os.path.getsize(p) > 0 for p in paths)


def test_each_bootstrapping_round_is_compared_with_complete_trace():
  """A round's slow mode minus Complete-Trace's, paired over tasks and seeds, like a claim."""
  rng = np.random.default_rng(1)
  seeds = []
  for k in range(3):
    base = (rng.random(40) < 0.3).astype(int).tolist()
    seeds.append({"seed": k, "wall_s": {m: {"train_s": 1.0} for m in
                                        ("complete_trace", "searchformer_r1", "searchformer_r2")},
                  "models": {"complete_trace": _record({"slow": base}),
                             "searchformer_r1": _record({"slow": [1] * 40}),
                             "searchformer_r2": _record({"slow": base})}})
  claims = {(c["model"], c["metric"]): c for c in sweep.aggregate(seeds)["intervals"]["last"]}
  assert set(claims) == {(m, x) for m in ("searchformer_r1", "searchformer_r2")
                         for x in ("1_optimal", "swc")}
  assert claims["searchformer_r1", "1_optimal"]["excludes_zero"]  # 100% against ~30%
  assert not claims["searchformer_r2", "1_optimal"]["excludes_zero"]  # the same scores
  assert all(c["baseline"] == "complete_trace" and c["mode"] == c["baseline_mode"] == "slow"
             for c in claims.values())
  table = report.seeds_markdown({"seeds": 3, "points": {"40": sweep.aggregate(seeds)}})
  assert "| 40 | Searchformer r1 slow - Complete-Trace slow | selected step | 1_optimal |" in table
  assert bootstrap.is_round("searchformer_r12") and not bootstrap.is_round("searchformer_rx")


def test_the_selected_step_has_the_best_1_optimal_then_swc_then_comes_later():
  def m(opt, swc):
    return {"1_optimal": opt, "swc": swc}

  assert select.best({2: m(0.5, 0.1), 4: m(0.5, 0.1), 6: m(0.4, 0.9)}) == 4
  assert select.best({2: m(0.5, 0.3), 4: m(0.5, 0.1), 6: m(0.4, 0.9)}) == 2
  assert select.best({2: m(0.1, 0.0), 4: m(0.2, 0.0)}) == 4
