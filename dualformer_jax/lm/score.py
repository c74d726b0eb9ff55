"""Scores token sequences with a Hugging Face checkpoint: JSON lines in, log-probs out.

  python -m dualformer_jax.lm.score --checkpoint=DIR [--dtype=float32] < in.jsonl

Each input line `{"ids": [int, ...]}` gets one output line `{"logprobs":
[...]}` with len(ids) - 1 values, log p(ids[i+1] | ids[:i+1]); a bad line
(not JSON, not UTF-8, no ids, ids not ints, out of vocabulary, fewer than 2
ids, longer than --max_len) gets `{"error": "..."}` and scoring goes on. A
blank line is a bad line too (answered with an error, not skipped), so output
line n always answers input line n, whatever a line holds (a JSON nesting too
deep to read is an error line too). Output is strict JSON: a line whose
log-probs are not finite (broken weights) gets an error, and the command
then exits with status 1. Lines are read --batch_size at a time and
answered in order; each group is padded to a power-of-two length bucket (at
least MIN_BUCKET) and to --batch_size rows, so a run compiles one program per
bucket, not one per line.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from dualformer_jax.lm import hf_checkpoint
from dualformer_jax.lm.model import LM, log_probs

MIN_BUCKET = 16
# The answer to a line whose log-probs are not all finite: only broken weights do that
# (log_softmax of finite logits is finite), so the run also ends with a non-zero status.
NON_FINITE = "the model gives non-finite log-probs (NaN/Inf): its weights are broken"

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Hugging Face checkpoint directory "
                                  "(config.json + safetensors).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute and parameter dtype.")
_ATTENTION = flags.DEFINE_enum("attention", "auto", ["auto", "xla", "blockwise", "cudnn", "splash"],
                               "Attention implementation (model/attention.py).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Lines scored per call (rows of one batch).")
_MAX_LEN = flags.DEFINE_integer("max_len", 0, "Longest accepted sequence; 0: the model's "
                                "max_position_embeddings.")


def bucket(length: int) -> int:
  """The padded length for a sequence: the next power of two, at least MIN_BUCKET."""
  return max(MIN_BUCKET, 1 << (length - 1).bit_length())


def parse(line: str | bytes, vocab_size: int, max_len: int) -> list[int] | str:
  """The ids of one input line, or an error message."""
  if isinstance(line, bytes):
    try:
      line = line.decode("utf-8")
    except UnicodeDecodeError as e:
      return f"not UTF-8: {e}"
  if not line.strip():
    return "blank line"
  try:
    obj = json.loads(line)
  except ValueError as e:
    return f"not JSON: {e}"
  except RecursionError:
    return "not JSON: nested too deeply to read"
  if not isinstance(obj, dict) or "ids" not in obj:
    return 'expected an object with an "ids" list'
  ids = obj["ids"]
  if not isinstance(ids, list) or not all(type(i) is int for i in ids):
    return '"ids" must be a list of ints'
  if len(ids) < 2:
    return f"need at least 2 ids to score, got {len(ids)}"
  if len(ids) > max_len:
    return f"{len(ids)} ids: longer than max_len={max_len}"
  bad = [i for i in ids if not 0 <= i < vocab_size]
  if bad:
    return f"id {bad[0]} is out of the vocabulary [0, {vocab_size})"
  return ids


class Scorer:
  """log_probs over fixed [batch_size, bucket] shapes, compiled once per bucket."""

  def __init__(self, model: LM, batch_size: int):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: must be >= 1")
    self.graphdef, self.state = nnx.split(model)
    self.batch_size = batch_size
    self._fn = jax.jit(lambda state, ids, valid: log_probs(
        nnx.merge(self.graphdef, state), ids, valid))

  def __call__(self, seqs: list[list[int]]) -> list[list[float]]:
    """Log-probs of up to batch_size sequences of one bucket."""
    t = bucket(max(len(s) for s in seqs))
    ids_BxT = np.zeros((self.batch_size, t), np.int32)
    valid_BxT = np.zeros((self.batch_size, t), bool)
    for r, s in enumerate(seqs):
      ids_BxT[r, :len(s)], valid_BxT[r, :len(s)] = s, True
    out_BxT1 = np.asarray(self._fn(self.state, jnp.asarray(ids_BxT), jnp.asarray(valid_BxT)))
    return [out_BxT1[r, :len(s) - 1].tolist() for r, s in enumerate(seqs)]


def score_lines(scorer: Scorer, lines: Iterable[str | bytes], vocab_size: int, max_len: int
                ) -> Iterator[dict[str, Any]]:
  """One result dict per input line, in order; batch_size lines are scored together."""
  chunk: list[str | bytes] = []

  def flush():
    parsed = [parse(line, vocab_size, max_len) for line in chunk]
    results: list[dict[str, Any]] = [{"error": p} if isinstance(p, str) else {} for p in parsed]
    by_bucket: dict[int, list[int]] = {}
    for i, p in enumerate(parsed):
      if not isinstance(p, str):
        by_bucket.setdefault(bucket(len(p)), []).append(i)
    for rows in by_bucket.values():
      for i, lp in zip(rows, scorer([parsed[i] for i in rows])):
        results[i] = {"logprobs": lp} if all(math.isfinite(x) for x in lp) else {
            "error": NON_FINITE}
    chunk.clear()
    return results

  for line in lines:
    chunk.append(line)
    if len(chunk) == scorer.batch_size:
      yield from flush()
  if chunk:
    yield from flush()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required")
  if _BATCH_SIZE.value < 1 or _MAX_LEN.value < 0:
    raise app.UsageError(f"--batch_size={_BATCH_SIZE.value} must be >= 1 and --max_len="
                         f"{_MAX_LEN.value} >= 0")
  try:
    model = hf_checkpoint.load(_CHECKPOINT.value, dtype=_DTYPE.value, param_dtype=_DTYPE.value,
                               attention=_ATTENTION.value)
  except (hf_checkpoint.CheckpointError, OSError) as e:
    sys.exit(f"score: {e}")
  max_len = _MAX_LEN.value or model.cfg.max_position_embeddings
  scorer = Scorer(model, _BATCH_SIZE.value)
  broken = 0
  # Bytes, decoded per line by parse: a line that is not UTF-8 gets an error, not the run.
  for result in score_lines(scorer, sys.stdin.buffer, model.cfg.vocab_size, max_len):
    broken += result.get("error") == NON_FINITE
    sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
    sys.stdout.flush()
  if broken:
    sys.exit(f"score: {broken} lines got non-finite log-probs: the weights in "
             f"{_CHECKPOINT.value} hold NaN/Inf or overflow in --dtype={_DTYPE.value}")


if __name__ == "__main__":
  app.run(main)
