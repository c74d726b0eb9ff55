"""Dataset generation: seeded, split by layout, no duplicates, resumable, refuses foreign configs."""

import json
import os

import pytest

from configs import maze as maze_configs
from configs import sokoban as sokoban_configs
from dualformer_jax.data import generate, records
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.vocab import Vocab
from dualformer_jax.tasks import make_task


def small_maze_config(size=5, **data):
  c = maze_configs.get_config("default")
  c.task.size = size
  c.data.num_train, c.data.num_test, c.data.num_shards, c.data.num_valid = 40, 12, 3, 0
  for k, v in data.items():
    c.data[k] = v
  return DataConfig.from_config(c)


def read_split(workdir, split, meta):
  d = records.data_dir(workdir)
  source = records.read_shards(records.shard_paths(d, split, meta["num_shards"][split]))
  return [records.decode_record(source[i]) for i in range(len(source))]


def shard_bytes(workdir):
  d = records.data_dir(workdir)
  return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))
          if n.endswith(".arrayrecord")}


def test_counts_meta_split_and_no_duplicates(tmp_path):
  c = small_maze_config()
  meta = generate.generate(c, str(tmp_path), workers=1)
  assert meta["status"] == "complete"
  assert meta["counts"] == {"train": 40, "test": 12}
  vocab = Vocab.from_list(meta["vocab"])
  task = make_task(c.task)
  layouts, prompts = {}, {}
  for split in ("train", "test"):
    recs = read_split(str(tmp_path), split, meta)
    assert len(recs) == meta["counts"][split]
    specs = [task.spec_from_prompt(vocab.decode(r["prompt"])) for r in recs]
    layouts[split] = {task.layout_key(s) for s in specs}
    prompts[split] = [tuple(r["prompt"]) for r in recs]
    assert len(set(prompts[split])) == len(prompts[split]), "duplicate task"
    for r, s in zip(recs, specs):  # every stored plan is a correct, optimal answer
      verdict = task.check(vocab.decode(r["prompt"]), vocab.decode(r["plan"]))
      assert verdict.correct and verdict.plan_len >= c.task.size
  assert not layouts["train"] & layouts["test"], "a wall layout is in both splits"
  assert meta["lengths"]["train"]["trace"]["max"] >= meta["lengths"]["train"]["trace"]["mean"]


def test_a_valid_split_takes_layouts_of_neither_other_split(tmp_path):
  """num_valid > 0 adds held-out layouts; num_valid = 0 keeps the old fingerprint and shards."""
  c = small_maze_config(num_valid=10)
  meta = generate.generate(c, str(tmp_path / "v"), workers=1)
  assert meta["counts"] == {"train": 40, "test": 12, "valid": 10} and "valid" in meta["lengths"]
  vocab, task = Vocab.from_list(meta["vocab"]), make_task(c.task)
  layouts = {s: {task.layout_key(task.spec_from_prompt(vocab.decode(r["prompt"])))
                 for r in read_split(str(tmp_path / "v"), s, meta)} for s in meta["counts"]}
  assert layouts["valid"] and not layouts["valid"] & (layouts["train"] | layouts["test"])
  assert not layouts["train"] & layouts["test"]
  assert "num_valid" not in generate.generator_fingerprint(small_maze_config())
  assert generate.generator_fingerprint(c)["num_valid"] == 10


def test_deterministic_whatever_the_worker_count(tmp_path):
  c = small_maze_config()
  generate.generate(c, str(tmp_path / "a"), workers=1)
  generate.generate(c, str(tmp_path / "b"), workers=2)
  assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
  other = small_maze_config(seed=7)
  generate.generate(other, str(tmp_path / "c"), workers=1)
  assert shard_bytes(tmp_path / "a") != shard_bytes(tmp_path / "c")


def test_resume_redoes_only_missing_shards(tmp_path):
  c = small_maze_config()
  generate.generate(c, str(tmp_path), workers=1)
  before = shard_bytes(tmp_path)
  d = records.data_dir(str(tmp_path))
  name = records.shard_name("train", 1, 3)
  os.remove(os.path.join(d, name))
  with open(os.path.join(d, name + ".tmp"), "wb") as f:  # an interrupted write
    f.write(b"partial")
  meta = json.load(open(os.path.join(d, records.META)))
  meta["status"] = "incomplete"
  records.write_meta(d, meta)
  generate.generate(c, str(tmp_path), workers=1)
  assert shard_bytes(tmp_path) == before


def test_refuses_a_dataset_from_another_config(tmp_path):
  generate.generate(small_maze_config(), str(tmp_path), workers=1)
  with pytest.raises(records.DatasetError, match="num_train: 40 -> 41"):
    generate.generate(small_maze_config(num_train=41), str(tmp_path), workers=1)


def test_too_small_task_space_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.setattr(generate, "_MAX_BARREN_DRAWS", 300)
  c = small_maze_config(size=3, num_train=500)  # few distinct 3x3 tasks with plans of >= 3 steps
  with pytest.raises(records.DatasetError, match="too small"):
    generate.generate(c, str(tmp_path), workers=1)


def test_sokoban_dataset(tmp_path):
  c = sokoban_configs.get_config("default")
  c.data.num_train, c.data.num_test, c.data.num_shards = 6, 3, 2
  meta = generate.generate(DataConfig.from_config(c), str(tmp_path), workers=1)
  vocab = Vocab.from_list(meta["vocab"])
  task = make_task(c.task)
  for r in read_split(str(tmp_path), "test", meta):
    assert task.check(vocab.decode(r["prompt"]), vocab.decode(r["plan"])).correct


@pytest.mark.parametrize("size,message", [(4, "cannot hold 1 boxes and 7 objects"),
                                          (70, "must be an integer in \\[3, 64\\]")])
def test_a_refused_sokoban_size_leaves_the_directory_reusable(tmp_path, size, message):
  """A size the generator cannot draw is refused before meta.json claims the directory, so
  the corrected command then runs without deleting anything by hand."""
  c = sokoban_configs.get_config("default")
  c.data.num_train, c.data.num_test, c.data.num_shards = 6, 3, 1
  bad = sokoban_configs.get_config("default")
  bad.update_from_flattened_dict({"task.size": size, "task.box_border_margin": 1,
                                  **{f"data.{k}": c.data[k] for k in ("num_train", "num_test",
                                                                       "num_shards")}})
  with pytest.raises(ValueError, match=f"config.task: sokoban tasks cannot be generated .*"
                     f"{message}"):
    generate.generate(DataConfig.from_config(bad), str(tmp_path), workers=1)
  assert not os.path.exists(os.path.join(records.data_dir(str(tmp_path)), records.META))
  assert generate.generate(DataConfig.from_config(c), str(tmp_path),
                           workers=1)["status"] == "complete"


def test_an_unfinished_dataset_with_no_shard_is_claimed_by_another_config(tmp_path, capsys):
  """meta.json of a run refused before writing any shard (an older version wrote it first)
  does not block the corrected config; one with a shard written still does."""
  directory = records.data_dir(str(tmp_path))
  generate.generate(small_maze_config(num_train=41), str(tmp_path), workers=1)
  meta = records.read_meta(directory)
  for name in os.listdir(directory):
    if name.endswith(".arrayrecord"):
      os.remove(os.path.join(directory, name))
  records.write_meta(directory, {**meta, "status": "incomplete"})
  assert generate.generate(small_maze_config(), str(tmp_path), workers=1)["counts"]["train"] == 40
  assert "no shard written; starting it again" in capsys.readouterr().out
  records.write_meta(directory, {**records.read_meta(directory), "status": "incomplete"})
  with pytest.raises(records.DatasetError, match="num_train: 40 -> 41"):
    generate.generate(small_maze_config(num_train=41), str(tmp_path), workers=1)


@pytest.mark.parametrize("get_config", [maze_configs.get_config, sokoban_configs.get_config])
def test_sample_group_asks_keep_before_any_search(get_config):
  """Shards reject the layouts they do not own before paying for a search."""
  import numpy as np
  task = make_task(get_config("default").task)
  asked = []

  def keep(key):
    asked.append(key)
    return len(asked) % 2 == 0

  rng = np.random.default_rng(0)
  groups = [task.sample_group(rng, keep=keep) for _ in range(40)]
  kept_keys = {task.layout_key(s) for g in groups for s in g}
  assert kept_keys and kept_keys <= set(asked[1::2])
  assert not kept_keys & set(asked[0::2])


def test_a_shard_deleted_from_a_complete_dataset_is_rewritten(tmp_path):
  """The advice of a missing shard's error (--mode=generate) must work although meta.json
  says complete: the shard comes back byte for byte."""
  c = small_maze_config()
  generate.generate(c, str(tmp_path), workers=1)
  before = shard_bytes(tmp_path)
  d = records.data_dir(str(tmp_path))
  os.remove(os.path.join(d, records.shard_name("test", 2, 3)))
  with pytest.raises(records.DatasetError, match="missing dataset shard .*--mode=generate"):
    read_split(str(tmp_path), "test", json.load(open(os.path.join(d, records.META))))
  generate.generate(c, str(tmp_path), workers=1)
  assert shard_bytes(tmp_path) == before


_GENERATE_FOREVER = """
import sys
sys.path.insert(0, {repo!r})
from configs import maze
from dualformer_jax.data import generate
from dualformer_jax.data.data_config import DataConfig
c = maze.get_config("default")
c.task.size = 10
c.data.num_train, c.data.num_test, c.data.num_shards, c.data.gen_workers = 200000, 2, 2, 2
generate.generate(DataConfig.from_config(c), {workdir!r})
"""


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      if ppid == pid:
        out.append(int(entry))
  return out


def _is_worker(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return b"spawn_main" in f.read()
  except OSError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the workers")
def test_workers_die_with_a_killed_parent(tmp_path):
  """kill -9 of the generating process: its workers stop instead of writing shards forever."""
  import signal
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parent = subprocess.Popen([sys.executable, "-c", _GENERATE_FOREVER.format(
      repo=repo, workdir=str(tmp_path))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  workers = []
  try:
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
      time.sleep(0.5)
      workers = [p for p in _children(parent.pid) if _is_worker(p)]
    assert len(workers) == 2, "the generation never started its two workers"
    time.sleep(1.0)  # the workers are generating now (a shard takes minutes)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in workers):
      time.sleep(0.2)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}")
             and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived their parent"
  finally:
    parent.kill()
    for p in workers:
      try:
        os.kill(p, signal.SIGKILL)
      except ProcessLookupError:
        pass
