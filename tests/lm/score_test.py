"""lm/score.py: the CLI end to end (a subprocess on a conftest checkpoint), `bucket`, `parse`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualformer_jax.lm import score

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 128  # conftest's


def _run(args, stdin: bytes) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get(
      "PYTHONPATH")]))}
  return subprocess.run([sys.executable, "-m", "dualformer_jax.lm.score", *args], input=stdin,
                        capture_output=True, cwd=ROOT, env=env, timeout=300)


def test_cli_scores_lines_in_order_and_answers_bad_ones(checkpoints, hf_log_probs):
  path, hf = checkpoints["mistral_window"]  # window 4: the longer rows cross it
  rng = np.random.default_rng(3)
  good = {0: rng.integers(0, VOCAB, 13).tolist(), 7: rng.integers(0, VOCAB, 20).tolist(),
          8: [VOCAB - 1, 0]}
  lines = [
      json.dumps({"ids": good[0]}),
      "{not json",
      json.dumps({"tokens": [1, 2]}),
      json.dumps({"ids": [1, "2"]}),
      json.dumps({"ids": [1, VOCAB]}),
      json.dumps({"ids": [5]}),
      "",
      json.dumps({"ids": good[7], "note": "extra keys are ignored"}),
      json.dumps({"ids": good[8]}),
      json.dumps({"ids": [1, True]}),
      json.dumps([1, 2]),
      "[" * 100_000,  # nested too deep for json: an error line, not a RecursionError
  ]
  stdin = ("\n".join(lines) + "\n").encode() + b'{"ids": [1, 2], "x": "\xff"}\n'
  # batch 4: three groups, the first and second each mixing good and bad lines and
  # the second two length buckets (16, 32).
  proc = _run([f"--checkpoint={path}", "--batch_size=4"], stdin)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
  assert len(out) == len(lines) + 1
  errors = {i: r["error"] for i, r in enumerate(out) if "error" in r}
  assert sorted(errors) == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]
  assert errors[1].startswith("not JSON")
  assert errors[2] == errors[10] == 'expected an object with an "ids" list'
  assert errors[3] == errors[9] == '"ids" must be a list of ints'
  assert errors[4] == f"id {VOCAB} is out of the vocabulary [0, {VOCAB})"
  assert errors[5] == "need at least 2 ids to score, got 1"
  assert errors[6] == "blank line"
  assert errors[11] == "not JSON: nested too deeply to read"
  assert errors[12].startswith("not UTF-8")
  for i, ids in good.items():
    assert set(out[i]) == {"logprobs"}
    want = hf_log_probs(hf, np.asarray([ids]), np.ones((1, len(ids)), bool))[0]
    assert len(out[i]["logprobs"]) == len(ids) - 1
    np.testing.assert_allclose(out[i]["logprobs"], want, atol=1e-4)


def test_cli_refuses_a_bad_checkpoint(tmp_path):
  """A missing config.json, and a config.json that is not UTF-8: one line each."""
  proc = _run([f"--checkpoint={tmp_path}"], b"")
  assert proc.returncode != 0
  assert "score: " in proc.stderr.decode() and "config.json: no such file" in \
      proc.stderr.decode()
  (tmp_path / "config.json").write_bytes(b'{"model_type": "\xff"}')
  proc = _run([f"--checkpoint={tmp_path}"], b"")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr.decode()
  assert "config.json: unreadable" in proc.stderr.decode()


def test_cli_refuses_a_batch_size_below_one(tmp_path):
  proc = _run([f"--checkpoint={tmp_path}", "--batch_size=0"], b"")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr.decode()
  assert "--batch_size=0 must be >= 1" in proc.stderr.decode()


def test_nan_weights_give_error_lines_and_a_failing_status(tmp_path):
  """Output stays strict JSON (no NaN literal): each scored line gets an error naming the
  broken weights, bad lines keep their own error, and the command exits non-zero."""
  from flax import nnx
  from dualformer_jax.lm import hf_checkpoint
  from dualformer_jax.lm.model import LM, LMConfig
  model = LM(LMConfig(vocab_size=VOCAB, dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      ffn_dim=32, max_position_embeddings=32), rngs=nnx.Rngs(0))
  model.norm.set_value(model.norm.get_value().at[0].set(float("nan")))
  hf_checkpoint.save(model, str(tmp_path))
  proc = _run([f"--checkpoint={tmp_path}", "--batch_size=2"],
              b'{"ids": [1, 2, 3]}\n{"ids": [7]}\n{"ids": [4, 5]}\n')
  assert proc.returncode == 1
  out = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
         for line in proc.stdout.decode().splitlines()]
  assert out == [{"error": score.NON_FINITE}, {"error": "need at least 2 ids to score, got 1"},
                 {"error": score.NON_FINITE}]
  assert "2 lines got non-finite log-probs" in proc.stderr.decode()


@pytest.mark.parametrize("length,want", [(0, 16), (1, 16), (2, 16), (16, 16), (17, 32),
                                         (32, 32), (33, 64), (1000, 1024)])
def test_bucket(length, want):
  assert score.bucket(length) == want


def test_parse():
  assert score.parse('{"ids": [0, 5, 127]}', VOCAB, 8) == [0, 5, 127]
  assert score.parse(b'{"ids": [3, 4]}\n', VOCAB, 8) == [3, 4]
  assert score.parse("  \n", VOCAB, 8) == "blank line"
  assert score.parse(b"\xff\n", VOCAB, 8).startswith("not UTF-8")
  assert score.parse("[1, 2]", VOCAB, 8) == 'expected an object with an "ids" list'
  assert score.parse('{"ids": "1 2"}', VOCAB, 8) == '"ids" must be a list of ints'
  assert score.parse('{"ids": [1, 2.0]}', VOCAB, 8) == '"ids" must be a list of ints'
  assert score.parse('{"ids": []}', VOCAB, 8) == "need at least 2 ids to score, got 0"
  assert score.parse('{"ids": [1, -1]}', VOCAB, 8) == \
      f"id -1 is out of the vocabulary [0, {VOCAB})"
  assert score.parse(json.dumps({"ids": list(range(9))}), VOCAB, 8) == \
      "9 ids: longer than max_len=8"
  assert score.parse(json.dumps({"ids": list(range(8))}), VOCAB, 8) == list(range(8))
