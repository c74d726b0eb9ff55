"""The tuning grid on a tiny maze set: one grid per model, chosen on valid, read by the sweep."""

import json
import os

import pytest

from configs import maze as maze_configs
from dualformer_jax.experiments import sweep, tune
from dualformer_jax.train import trainer


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
      "solution_only", (3e-3,), (2,), 12)  # one run: the choice is tested on its own
  c.sweep.select_tasks, c.sweep.select_samples = 3, 1
  c.compilation_cache_dir = ""
  return c


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tune"))
  return workdir, tune.run(tiny_config(), workdir)


def test_every_setting_of_the_grid_is_trained_and_scored_on_valid(tuned):
  workdir, out = tuned
  runs = out["models"]["solution_only"]["runs"]
  assert [(r["learning_rate"], r["num_steps"]) for r in runs] == [(3e-3, 2)]
  path = os.path.join(workdir, "solution_only", tune.run_name(3e-3, 2))
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  assert (cfg["train"]["learning_rate"], cfg["train"]["num_steps"],
          cfg["data"]["train_tasks"]) == (3e-3, 2, 12)
  with open(os.path.join(path, "eval", "2", "valid", "results.json")) as f:
    assert json.load(f)["fast"] == runs[0]["valid"]["fast"]
  assert runs[0]["valid"]["fast"]["num_tasks"] == 3
  assert runs[0]["score"] == runs[0]["valid"]["fast"]["1_optimal"]
  assert not os.path.exists(os.path.join(path, "eval", "2", "results.json"))  # no test split
  assert out["chosen"]["solution_only"]["learning_rate"] == 3e-3
  with open(os.path.join(workdir, "tune.json")) as f:
    assert json.load(f)["chosen"] == out["chosen"]
  with open(os.path.join(workdir, "tune.md")) as f:
    assert sum(" yes |" in line for line in f) == 1


def test_the_choice_is_the_best_mean_validation_score_then_swc_then_fewer_steps():
  def run(lr, steps, score, swc):
    return {"learning_rate": lr, "num_steps": steps, "score": score, "swc": swc}

  runs = [run(1e-3, 3000, 0.5, 0.2), run(3e-3, 3000, 0.7, 0.1), run(3e-3, 5000, 0.7, 0.1),
          run(6e-3, 5000, 0.6, 0.9)]
  assert tune.choose(runs) == run(3e-3, 3000, 0.7, 0.1)
  runs.append(run(1e-3, 5000, 0.7, 0.3))
  assert tune.choose(runs) == run(1e-3, 5000, 0.7, 0.3)


def test_the_sweep_trains_each_model_with_its_chosen_setting(tuned, monkeypatch):
  c = maze_configs.get_config("sweep")
  c.sweep.tuned = os.path.join(tuned[0], "tune.json")
  chosen = sweep.read_tuned(c)
  run = sweep.run_config(c, 1000, 1, "solution_only", chosen)
  assert (run.train.learning_rate, run.train.num_steps, run.seed, run.data.train_tasks) == (
      chosen["solution_only"]["learning_rate"], 2, c.seed + 1, 1000)
  assert sweep.run_config(c, 1000, 0, "dualformer", chosen).train.learning_rate == \
      c.train.learning_rate  # a model without a chosen setting keeps the config's
  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("a finished run trained again"))
  assert tune.run(tiny_config(), tuned[0])["chosen"] == tuned[1]["chosen"]


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
