"""show_data.py: examples drawn through the real train pipeline, printed as JSON lines."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualformer_jax import show_data
from dualformer_jax.data import dropping, records
from tests.data.pipeline_test import VOCAB, make_config, make_record, write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAMMAR = dropping.TraceGrammar.from_vocab(VOCAB)


def clauses(tokens: list[str]) -> list[tuple[str, ...]]:
  out = []
  for tok in tokens:
    if tok in ("create", "close"):
      out.append([])
    out[-1].append(tok)
  return [tuple(c) for c in out]


def check_decoder(example: dict, plan: list[str]) -> None:
  """The decoder is bos + the stored trace dropped at `level` + the plan + eos."""
  level, decoder = example["level"], example["decoder"]
  assert decoder[0] == "bos" and decoder[-1] == "eos"
  assert decoder[-1 - len(plan):-1] == plan
  kept = decoder[1:-1 - len(plan)]
  if level == 3:
    full = clauses(VOCAB.decode(dropping.drop_trace(VOCAB.encode(example["trace"]), 2, GRAMMAR)))
    it = iter(full)
    assert all(any(c == f for f in it) for c in clauses(kept))
  else:
    assert kept == VOCAB.decode(dropping.drop_trace(VOCAB.encode(example["trace"]), level,
                                                    GRAMMAR))


def test_draw_examples_match_their_levels(tmp_path):
  rng = np.random.default_rng(0)
  train = [make_record(rng) for _ in range(60)]
  write_dataset(records.data_dir(str(tmp_path)), train, [make_record(rng) for _ in range(5)])
  by_prompt = {tuple(VOCAB.decode(r["prompt"])): r for r in train}
  data = make_config()
  examples = show_data.draw_examples(data, 8, str(tmp_path), 30)
  assert len(examples) == 30
  assert {e["level"] for e in examples} == set(range(5))
  for e in examples:
    assert set(e) == {"level", "prompt", "trace", "decoder"}
    json.loads(json.dumps(e))
    rec = by_prompt[tuple(e["prompt"])]
    assert e["trace"] == VOCAB.decode(rec["trace"])  # the complete stored trace
    check_decoder(e, VOCAB.decode(rec["plan"]))
  with pytest.raises(ValueError, match="num=0"):
    show_data.draw_examples(data, 8, str(tmp_path), 0)


def test_cli_generates_a_missing_dataset_and_prints_json_lines(tmp_path):
  cmd = [sys.executable, "-m", "dualformer_jax.show_data",
         f"--config={os.path.join(REPO, 'configs', 'maze.py')}", f"--workdir={tmp_path}",
         "--num=6", "--config.task.size=5", "--config.data.num_train=24",
         "--config.data.num_test=4", "--config.data.num_shards=1", "--config.data.gen_workers=1",
         "--config.data.trace_mode=fixed_level", "--config.data.fixed_level=1",
         "--config.train.batch_size=4"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 6
  for line in lines:
    e = json.loads(line)
    assert e["level"] == 1 and e["prompt"][0] == "start"
    no_close = [t for c in clauses(e["trace"]) if c[0] == "create" for t in c]
    assert e["decoder"][:1 + len(no_close)] == ["bos", *no_close]
    plan = e["decoder"][1 + len(no_close):-1]
    assert plan and plan[0] == "plan" and len(plan) % 3 == 0 and e["decoder"][-1] == "eos"
  assert os.path.exists(os.path.join(records.data_dir(str(tmp_path)), records.META))
  # The dataset now in the workdir belongs to that config: another one is refused.
  other = subprocess.run([c if c != "--config.task.size=5" else "--config.task.size=6"
                          for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert other.returncode != 0 and "different config" in other.stderr
  assert "Traceback" not in other.stderr and "error: the dataset" in other.stderr
  # A damaged shard: one line that names it, no traceback.
  shard = records.shard_paths(records.data_dir(str(tmp_path)), "train", 1)[0]
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 2)
    f.write(b"\xff" * 64)
  bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert f"error: cannot read dataset shard {shard}" in bad.stderr

