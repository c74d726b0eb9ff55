"""The comparison sweep on a tiny maze set: one dataset, three formats, summary, resume."""

import json
import os
import shutil

import pytest

from configs import maze as maze_configs
from dualformer_jax import config as config_lib
from dualformer_jax.eval import evaluate
from dualformer_jax.eval.metrics import METRIC_KEYS
from dualformer_jax.experiments import compare
from dualformer_jax.train import trainer
from dualformer_jax.train.logger import read_metrics


def tiny_config():
  c = maze_configs.get_config("compare")
  c.task.size = 5
  c.data.num_train, c.data.num_test, c.data.num_shards = 48, 8, 2
  c.data.max_prompt_len, c.data.max_decoder_len = 64, 160
  c.data.num_buckets = 1  # one compiled shape keeps the test fast
  c.train.num_steps = 4
  c.train.batch_size = 8
  c.train.warmup_steps = 1
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.eval_batches = 1
  c.train.checkpoint_every = 2
  c.eval.num_tasks, c.eval.num_samples, c.eval.num_pictures = 3, 2, 1
  c.compilation_cache_dir = ""
  return c


def test_models_differ_only_in_trace_format_and_modes():
  base = tiny_config()
  want = {"solution_only": ("solution_only", "fast"), "complete_trace": ("complete", "slow"),
          "dualformer": ("dualformer", "fast,slow,auto")}
  for name, (trace_mode, modes) in want.items():
    c = compare.model_config(base, name)
    assert (c.data.trace_mode, c.eval.modes) == (trace_mode, modes)
    c.data.trace_mode, c.eval.modes = base.data.trace_mode, base.eval.modes
    assert c.to_dict() == base.to_dict()
  with pytest.raises(ValueError, match="unknown model 'searchformer'"):
    compare.model_config(base, "searchformer")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  return workdir, compare.run(tiny_config(), workdir)


def test_sweep_writes_the_summary_of_every_model_and_mode(sweep):
  workdir, summary = sweep
  with open(os.path.join(workdir, compare.SUMMARY)) as f:
    assert json.load(f)["models"] == summary["models"]
  assert summary["task"] == "maze"
  assert {m: sorted(v) for m, v in summary["models"].items()} == {
      "solution_only": ["fast"], "complete_trace": ["slow"],
      "dualformer": ["auto", "fast", "slow"]}
  for name, modes in summary["models"].items():
    for mode, metrics in modes.items():
      assert set(metrics) == set(METRIC_KEYS)
      assert (metrics["num_tasks"], metrics["num_samples"]) == (3, 2)
      with open(os.path.join(workdir, name, "eval", "4", "results.json")) as f:
        assert json.load(f)[mode] == metrics  # M is the run's results.json object
    assert summary["wall_s"][name]["train_s"] > 0 and summary["wall_s"][name]["eval_s"] > 0
  for name in ("results.md", "optimal.png", "reasoning_length.png", "loss.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0


def test_the_three_runs_share_one_dataset_and_train_their_own_format(sweep):
  workdir, _ = sweep
  data = os.path.realpath(os.path.join(workdir, "data"))
  trace_tokens = {}
  for name in compare.MODELS:
    assert os.path.realpath(os.path.join(workdir, name, "data")) == data
    rows = [r for r in read_metrics(os.path.join(workdir, name)) if "trace_tokens" in r]
    trace_tokens[name] = sum(r["trace_tokens"] for r in rows)
    evals = [r for r in read_metrics(os.path.join(workdir, name)) if "eval_trace_tokens" in r]
    assert evals and (evals[-1]["eval_trace_tokens"] == 0) == (name == "solution_only")
  assert trace_tokens["solution_only"] == 0
  assert trace_tokens["complete_trace"] > trace_tokens["dualformer"] > 0


def test_a_finished_sweep_is_not_recomputed(sweep, monkeypatch):
  workdir, summary = sweep

  def fail(*args):
    raise AssertionError("a finished stage ran again")

  monkeypatch.setattr(trainer, "train", fail)
  monkeypatch.setattr(evaluate, "evaluate", fail)
  again = compare.run(tiny_config(), workdir)
  assert again["models"] == summary["models"]


def test_a_missing_evaluation_is_redone_without_training(sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  shutil.rmtree(os.path.join(workdir, "dualformer", "eval"))
  calls = []
  real_evaluate = evaluate.evaluate

  def counted(config, path):
    calls.append(os.path.basename(path))
    return real_evaluate(config, path)

  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", counted)
  summary = compare.run(tiny_config(), workdir)
  assert calls == ["dualformer"]
  assert summary["models"] == sweep[1]["models"]  # same checkpoint, same seed, same samples


def test_an_interrupted_training_stops_the_sweep(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  monkeypatch.setattr(trainer, "train",
                      lambda c, path: trainer.TrainResult(step=2, interrupted=True,
                                                          signal_number=15))
  with pytest.raises(compare.Interrupted, match="solution_only: stopped by signal 15 at step 2"):
    compare.run(tiny_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, compare.SUMMARY))


def test_a_run_directory_with_its_own_data_is_refused(tmp_path):
  os.makedirs(tmp_path / "dualformer" / "data")
  with pytest.raises(FileExistsError, match="must share one dataset"):
    compare.run_dir(str(tmp_path), "dualformer")



def test_an_evaluation_with_another_sample_count_is_redone(sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  calls = []

  def fake_evaluate(config, path):
    calls.append(os.path.basename(path))
    return {m: dict(sweep[1]["models"]["dualformer"]["fast"], num_samples=config.eval.num_samples)
            for m in config.eval.modes.split(",")}

  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
  config = tiny_config()
  config.eval.num_samples = 3
  summary = compare.run(config, workdir)
  assert calls == list(compare.MODELS)
  assert summary["models"]["complete_trace"]["slow"]["num_samples"] == 3


def test_an_unreadable_results_file_is_named_and_redone(sweep, tmp_path, monkeypatch, capsys):
  """An empty results.json (a write cut short before writes were atomic) is named and its
  evaluation redone, instead of a JSONDecodeError that names no file."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  bad = os.path.join(workdir, "dualformer", "eval", "4", "results.json")
  open(bad, "w").close()
  calls = []

  def fake_evaluate(config, path):
    calls.append(os.path.basename(path))
    return sweep[1]["models"]["dualformer"]

  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
  summary = compare.run(tiny_config(), workdir)
  assert calls == ["dualformer"] and summary["models"] == sweep[1]["models"]
  assert f"{bad} is unreadable" in capsys.readouterr().out



def _fake_evaluate(sweep, calls):
  def fake_evaluate(config, path):
    calls.append(os.path.basename(path))
    return {m: dict(sweep[1]["models"]["dualformer"]["fast"], num_tasks=config.eval.num_tasks)
            for m in config.eval.modes.split(",")}
  return fake_evaluate


@pytest.mark.parametrize("field,value", [("num_tasks", 2), ("temperature", 0.5),
                                         ("dtype", "bfloat16")])
def test_an_evaluation_with_other_settings_is_redone(sweep, tmp_path, monkeypatch, capsys,
                                                     field, value):
  """Any eval setting that changes the metrics (not only num_samples) makes the saved
  evaluation stale: it is redone, saying which field changed, and summary.json holds the
  new numbers beside the new config."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  calls = []
  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", _fake_evaluate(sweep, calls))
  config = tiny_config()
  config.eval[field] = value
  summary = compare.run(config, workdir)
  assert calls == list(compare.MODELS)
  old = "float32" if field == "dtype" else tiny_config().eval[field]
  assert f"eval.{field}: {old!r} -> {value!r}" in capsys.readouterr().out
  assert summary["config"]["eval"][field] == value
  if field == "num_tasks":  # rerun with the same settings: the new evaluation is reused
    calls.clear()
    compare.run(config, workdir)
    assert calls == []


def test_an_evaluation_without_a_settings_record_is_redone(sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  os.remove(os.path.join(workdir, "dualformer", "eval", "4", compare.EVAL_SETTINGS))
  calls = []
  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", _fake_evaluate(sweep, calls))
  compare.run(tiny_config(), workdir)
  assert calls == ["dualformer"]


@pytest.mark.parametrize("content", ["", '{"train_s": 12', '[1, 2]'])
def test_a_damaged_timing_file_gives_unknown_times_not_zero(sweep, tmp_path, monkeypatch,
                                                            capsys, content):
  """An empty or cut timing.json is named and its times become null (unknown) for good,
  never a fresh count from 0 s that would read as a measured wall time."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  timing = os.path.join(workdir, "dualformer", compare.TIMING)
  with open(timing, "w") as f:
    f.write(content)
  os.remove(os.path.join(workdir, "dualformer", "eval", "4", compare.EVAL_SETTINGS))
  monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("training ran again"))
  monkeypatch.setattr(evaluate, "evaluate", _fake_evaluate(sweep, []))
  summary = compare.run(tiny_config(), workdir)  # evaluates again: adds eval seconds
  assert summary["wall_s"]["dualformer"] == {"train_s": None, "eval_s": None}
  assert summary["wall_s"]["solution_only"]["train_s"] > 0
  assert f"timing file {timing}" in capsys.readouterr().out
  with open(timing) as f:
    assert json.load(f) == {"train_s": None, "eval_s": None}
  if content == "":  # and they stay unknown
    summary = compare.run(tiny_config(), workdir)
    assert summary["wall_s"]["dualformer"] == {"train_s": None, "eval_s": None}


def test_a_mesh_or_model_error_fails_before_the_dataset(tmp_path):
  for field, value in (("mesh.fsdp", 3), ("model.attention", "flash")):
    config = tiny_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match="config.mesh|attention='flash'"):
      compare.run(config, str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


def test_only_the_missing_modes_are_sampled_and_merged_with_the_saved(sweep, tmp_path,
                                                                        monkeypatch):
  workdir = str(tmp_path / "copy")
  shutil.copytree(sweep[0], workdir, symlinks=True)
  where = os.path.join(workdir, "dualformer", "eval", "4")
  for name in ("results.json", evaluate.PER_TASK):
    with open(os.path.join(where, name)) as f:
      saved = json.load(f)
    del saved["auto"]
    with open(os.path.join(where, name), "w") as f:
      json.dump(saved, f)
  asked = []

  def fake_evaluate(config, path):
    asked.append(config.eval.modes)
    return {"auto": sweep[1]["models"]["dualformer"]["auto"]}

  monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
  c = config_lib.validate(compare.model_config(tiny_config(), "dualformer"))
  metrics, per_task = compare.evaluate_at(c, os.path.join(workdir, "dualformer"), "dualformer",
                                          4, ("fast", "slow", "auto"))
  assert asked == ["auto"] and metrics == sweep[1]["models"]["dualformer"]
  with open(os.path.join(where, "results.json")) as f:
    assert json.load(f) == sweep[1]["models"]["dualformer"]
  assert per_task["auto"] is None and len(per_task["fast"]["optimal"]) == 3
  metrics, _ = compare.evaluate_at(c, os.path.join(workdir, "dualformer"), "dualformer", 4,
                                   ("fast",))
  assert asked == ["auto"] and metrics == {"fast": sweep[1]["models"]["dualformer"]["fast"]}
