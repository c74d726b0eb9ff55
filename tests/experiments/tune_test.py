"""The tuning grid on a tiny maze set: one grid per model, chosen on valid, read by the sweep.

Training and the validation samples are faked here (each run's config is recorded): the
sweep test trains and samples the valid split for real through the same two calls
(compare.ensure_trained, compare.evaluate_at with select.valid_config)."""

import json
import os

import pytest

from configs import maze as maze_configs
from dualformer_jax.experiments import compare, sweep, tune


def tiny_config():
  c = maze_configs.get_config("tune")
  c.task.size = 5
  c.data.num_train, c.data.num_valid, c.data.num_test, c.data.num_shards = 16, 4, 4, 1
  c.data.gen_workers = 1
  c.data.max_prompt_len, c.data.max_decoder_len = 64, 160
  c.data.num_buckets = 1  # one compiled shape keeps the test fast
  c.train.batch_size, c.train.warmup_steps = 8, 1
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 2, 100, 1  # no test loss
  c.train.checkpoint_every = 2
  c.tune.models, c.tune.learning_rates, c.tune.num_steps, c.tune.num_train = (
      "solution_only,dualformer", (1e-3, 3e-3), (2,), 12)
  c.sweep.select_tasks, c.sweep.select_samples = 3, 1
  c.compilation_cache_dir = ""
  return c


def _valid(opt, swc=0.1):
  return {"1_optimal": opt, "swc": swc, "num_tasks": 3}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tune"))
  trained, sampled = [], []
  score = {(1e-3, "fast"): 0.25, (3e-3, "fast"): 0.75, (1e-3, "slow"): 0.5,  # exact sums
           (3e-3, "slow"): 0.5, (1e-3, "auto"): 0.75, (3e-3, "auto"): 0.25}

  def evaluate_at(c, path, name, step, modes):
    sampled.append((path, c.eval.split, c.eval.num_tasks, c.eval.num_samples, step, modes))
    return {m: _valid(score[c.train.learning_rate, m]) for m in modes}, {}

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(compare, "ensure_trained", lambda c, path, name: trained.append((c, path)))
    mp.setattr(compare, "evaluate_at", evaluate_at)
    out = tune.run(tiny_config(), workdir)
  return workdir, out, trained, sampled


def test_every_setting_of_the_grid_is_trained_and_scored_on_valid(tuned):
  workdir, out, trained, sampled = tuned
  assert [(c.data.trace_mode, c.train.learning_rate, c.train.num_steps, c.data.train_tasks)
          for c, _ in trained] == [("solution_only", 1e-3, 2, 12), ("solution_only", 3e-3, 2, 12),
                                   ("dualformer", 1e-3, 2, 12), ("dualformer", 3e-3, 2, 12)]
  assert [os.path.relpath(p, workdir) for _, p in trained] == [
      "solution_only/lr0.001_steps2", "solution_only/lr0.003_steps2",
      "dualformer/lr0.001_steps2", "dualformer/lr0.003_steps2"]
  assert all(os.path.realpath(os.path.join(p, "data")) == os.path.realpath(
      os.path.join(workdir, "data")) for _, p in trained)  # one dataset
  assert {s[1:5] for s in sampled} == {("valid", 3, 1, 2)}  # the valid split, last step
  assert [s[5] for s in sampled] == [("fast",)] * 2 + [("fast", "slow", "auto")] * 2
  so, df = out["models"]["solution_only"], out["models"]["dualformer"]
  assert so["chosen"]["learning_rate"] == 3e-3  # fast 0.75 against 0.25
  assert df["chosen"]["learning_rate"] == 1e-3  # mean 0.5 both: ties -> SWC, steps, grid order
  assert [r["score"] for r in df["runs"]] == [0.5, 0.5]
  with open(os.path.join(workdir, "tune.json")) as f:
    assert json.load(f)["chosen"] == out["chosen"]
  with open(os.path.join(workdir, "tune.md")) as f:
    assert sum(" yes |" in line for line in f) == 2


def test_the_choice_is_the_best_mean_validation_score_then_swc_then_fewer_steps():
  def run(lr, steps, score, swc):
    return {"learning_rate": lr, "num_steps": steps, "score": score, "swc": swc}

  runs = [run(1e-3, 3000, 0.5, 0.2), run(3e-3, 3000, 0.7, 0.1), run(3e-3, 5000, 0.7, 0.1),
          run(6e-3, 5000, 0.6, 0.9)]
  assert tune.choose(runs) == run(3e-3, 3000, 0.7, 0.1)
  runs.append(run(1e-3, 5000, 0.7, 0.3))
  assert tune.choose(runs) == run(1e-3, 5000, 0.7, 0.3)


def test_the_sweep_trains_each_model_with_its_chosen_setting(tuned):
  c = maze_configs.get_config("sweep")
  c.sweep.tuned = os.path.join(tuned[0], "tune.json")
  chosen = sweep.read_tuned(c)
  run = sweep.run_config(c, 1000, 1, "solution_only", chosen)
  assert (run.train.learning_rate, run.train.num_steps, run.seed, run.data.train_tasks) == (
      3e-3, 2, c.seed + 1, 1000)
  assert sweep.run_config(c, 1000, 0, "dualformer", chosen).train.learning_rate == 1e-3
  assert sweep.run_config(c, 1000, 0, "complete_trace", chosen).train.learning_rate == \
      c.train.learning_rate  # a model without a chosen setting keeps the config's
  c.sweep.models = "complete_trace"
  with pytest.raises(ValueError, match=r"has no setting for \['complete_trace'\]"):
    sweep.check_config(c)


@pytest.mark.parametrize("field,value,message", [
    ("tune.models", "searchformer", "subset of solution_only"),
    ("tune.learning_rates", (), "give peak learning rates"),
    ("tune.learning_rates", (0.0,), "give peak learning rates"),
    ("tune.num_steps", (0,), "give step counts"),
    ("tune.num_train", 17, r"must be in \[0, data.num_train=16\]"),
    ("sweep.select_tasks", 0, "tuning scores valid tasks"),
    ("sweep.select_tasks", 5, "tuning scores valid tasks"),
])
def test_bad_tune_settings_are_refused_before_any_work(tmp_path, field, value, message):
  c = tiny_config()
  group, key = field.split(".")
  c[group][key] = value
  with pytest.raises(ValueError, match=message):
    tune.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_a_tune_json_without_choices_is_refused(tmp_path):
  bad = tmp_path / "tune.json"
  bad.write_text(json.dumps({"chosen": {"dualformer": {"learning_rate": 1e-3}}}))
  c = maze_configs.get_config("sweep")
  c.sweep.tuned = str(bad)
  with pytest.raises(ValueError, match="no 'chosen' object"):
    sweep.check_config(c)


def _fake_tune(c, workdir):
  """tune.run with training and sampling faked; returns (out, settings trained)."""
  trained = []

  def evaluate_at(run, path, name, step, modes):
    return {m: _valid(0.5 if run.train.learning_rate == 1e-3 else 0.25) for m in modes}, {}

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(compare, "ensure_trained", lambda run, path, name: trained.append(
        (name, run.train.learning_rate)))
    mp.setattr(compare, "evaluate_at", evaluate_at)
    return tune.run(c, workdir), trained


def test_recorded_rows_are_taken_on_another_machine_instead_of_training(tmp_path):
  c = tiny_config()
  c.tune.record_dir = str(tmp_path / "records")
  first, trained = _fake_tune(c, str(tmp_path / "machine1"))
  assert len(trained) == 4
  assert sorted(os.listdir(tmp_path / "records" / "dualformer")) == [
      "lr0.001_steps2.json", "lr0.003_steps2.json"]
  os.remove(tmp_path / "records" / "solution_only" / "lr0.003_steps2.json")
  second, trained = _fake_tune(c, str(tmp_path / "machine2"))  # a fresh workdir
  assert trained == [("solution_only", 3e-3)]  # only the run without a record
  assert second["models"] == first["models"] and second["chosen"] == first["chosen"]
  # The choices are kept with the rows, for a sweep on another machine.
  c.sweep.tuned = str(tmp_path / "records" / "tune.json")
  assert sweep.read_tuned(c) == first["chosen"]


def test_a_record_of_another_config_is_refused_before_any_work(tmp_path):
  c = tiny_config()
  c.tune.record_dir = str(tmp_path / "records")
  _fake_tune(c, str(tmp_path / "w1"))
  c.sweep.select_samples = 2  # the validation score is measured differently now
  with pytest.raises(ValueError, match=r"another config \(sweep.select_samples differ"):
    _fake_tune(c, str(tmp_path / "w2"))
  assert not os.path.exists(tmp_path / "w2")
  c.sweep.select_samples, c.compilation_cache_dir = 1, "/elsewhere"  # where, not what
  assert _fake_tune(c, str(tmp_path / "w3"))[1] == []


def test_a_grown_grid_or_sweep_keeps_its_records(tmp_path):
  c = tiny_config()
  c.tune.record_dir = str(tmp_path / "records")
  _fake_tune(c, str(tmp_path / "w1"))
  # Which other runs the grid or the sweep holds does not change what one run computes.
  c.tune.learning_rates, c.sweep.num_train, c.sweep.seeds = (1e-3, 3e-3, 6e-3), (8, 12), 5
  c.bootstrap.rounds = 1  # bootstrapping changes only its own rounds
  assert _fake_tune(c, str(tmp_path / "w2"))[1] == [("solution_only", 6e-3), ("dualformer", 6e-3)]


def test_a_corrupt_record_is_named(tmp_path):
  c = tiny_config()
  c.tune.record_dir = str(tmp_path / "records")
  bad = tmp_path / "records" / "dualformer" / "lr0.001_steps2.json"
  bad.parent.mkdir(parents=True)
  bad.write_text("[1, 2")
  with pytest.raises(ValueError, match="lr0.001_steps2.json"):
    _fake_tune(c, str(tmp_path / "w"))
  bad.write_text("[1, 2]")
  with pytest.raises(ValueError, match="holds no JSON object; delete it"):
    _fake_tune(c, str(tmp_path / "w"))
