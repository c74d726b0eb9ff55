"""math_data: the synthetic generator's steps and answers are exact; JSON lines are validated."""

import json
import re

import numpy as np
import pytest

from dualformer_jax.lm import math_data as md


def _eval_chain(problem: str) -> int:
  words = problem.split()
  value = int(words[0])
  for op, b in zip(words[1::2], words[2::2]):
    value = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
  return value


def test_synthetic_steps_and_answers_are_exact():
  rng = np.random.default_rng(0)
  for _ in range(300):
    ex = md.synthetic_example(rng, 2, 5, max_value=20, max_operand=9)
    words = ex.problem.split()
    assert 2 <= len(ex.steps) <= 5 and len(words) == 2 * len(ex.steps) + 1
    value = int(words[0])
    for step, op, b in zip(ex.steps, words[1::2], words[2::2]):
      a, sop, sb, eq, c = step.split()
      assert (int(a), sop, sb, eq) == (value, op, b, "=")
      value = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
      assert int(c) == value and 0 <= value < 20
      assert op != "*" or (int(a) >= 2 and int(b) >= 2)
    assert ex.answer == str(value) == str(_eval_chain(ex.problem))


def test_splits_are_disjoint_and_reproducible():
  train, test = md.synthetic_splits(500, 50, 3, 2, 4, 20, 9)
  assert len(train) == 500 and len(test) == 50
  assert not {e.problem for e in train} & {e.problem for e in test}
  assert md.synthetic_splits(500, 50, 3, 2, 4, 20, 9) == (train, test)
  assert md.synthetic_splits(500, 50, 4, 2, 4, 20, 9)[0] != train
  with pytest.raises(ValueError, match="distinct problems"):
    md.synthetic_splits(5000, 10, 0, 1, 1, 3, 1)


def test_tokenize_pieces_and_markers():
  vocab = md.WordVocab.for_synthetic(20, 9)
  ex = md.MathExample("3 + 4 * 2", ("3 + 4 = 7", "7 * 2 = 14"), "14")
  tok = md.tokenize(vocab, ex)
  assert tok.prompt_P[0] == vocab.bos_id and vocab.decode(tok.prompt_P) == "Problem: 3 + 4 * 2 Solution:"
  step_mark = md.marker_ids(vocab, md.STEP_MARK)
  assert all(np.array_equal(s[:len(step_mark)], step_mark) for s in tok.step_pieces)
  assert vocab.decode(tok.step_pieces[1]) == "Step: 7 * 2 = 14"
  assert tok.answer_A[-1] == vocab.eos_id and vocab.decode(tok.answer_A) == "The answer is 14"
  assert tok.full_len == len(tok.prompt_P) + 6 + 6 + 5
  kept, dropped = md.tokenize_all(vocab, [ex, md.MathExample("1", ("x",) * 0, "1")], 20)
  assert dropped == 1 and len(kept) == 1  # ex: 8 + 12 + 5 = 25 > 20 tokens; the other: 9
  with pytest.raises(ValueError, match="not in the synthetic vocabulary"):
    vocab.encode("Problem: 99")


def test_read_jsonl(tmp_path):
  path = tmp_path / "d.jsonl"
  rows = [{"problem": "What is 1/2 + 1/2?", "steps": ["1/2 + 1/2 = 2/2", "2/2 = 1"],
           "answer": "1", "source": "ignored"},
          {"problem": "2+2?", "steps": [], "answer": "4"}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  got = md.read_jsonl(str(path))
  assert got == [md.MathExample("What is 1/2 + 1/2?", ("1/2 + 1/2 = 2/2", "2/2 = 1"), "1"),
                 md.MathExample("2+2?", (), "4")]


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('["a"]', "expected an object"),
    ('{"problem": "", "steps": [], "answer": "1"}', "'problem'"),
    ('{"problem": "p", "steps": "one step", "answer": "1"}', "'steps'"),
    ('{"problem": "p", "steps": [1], "answer": "1"}', "'steps'"),
    ('{"problem": "p", "steps": []}', "'answer'"),
    pytest.param("[" * 100_000, "nested too deeply", id="too_deep"),  # was a RecursionError
])
def test_read_jsonl_names_the_bad_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"problem": "p", "steps": [], "answer": "1"}\n' + line + "\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}:2") + ".*" + re.escape(message)):
    md.read_jsonl(str(path))


def test_read_jsonl_missing_or_empty(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    md.read_jsonl(str(tmp_path / "nope.jsonl"))
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(ValueError, match="no examples"):
    md.read_jsonl(str(tmp_path / "empty.jsonl"))


def test_read_jsonl_names_a_line_that_is_not_utf8(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"problem": "p", "steps": [], "answer": "1"}\n'
                   b'{"problem": "caf\xe9", "steps": [], "answer": "1"}\n')
  with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8")):
    md.read_jsonl(str(path))


class _CountingTokenizer:
  """WordVocab's ids with a max_token_chars bound; records the length of every text encoded."""

  def __init__(self, vocab: md.WordVocab):
    self.vocab, self.encoded = vocab, []
    self.bos_id, self.eos_id, self.pad_id = vocab.bos_id, vocab.eos_id, vocab.pad_id
    self.vocab_size = vocab.vocab_size
    self.max_token_chars = max(len(t) for t in vocab.tokens)

  def encode(self, text):
    self.encoded.append(len(text))
    return self.vocab.encode(text)


def test_a_huge_example_is_left_out_without_being_tokenized():
  """Memory per input line stays bounded by its characters: an example whose text cannot fit
  max_len tokens (more than max_len x the longest token's characters) is never encoded."""
  tok = _CountingTokenizer(md.WordVocab.for_synthetic(10, 9))
  small = md.MathExample("1 + 2", ("1 + 2 = 3",), "3")
  huge = md.MathExample(" ".join(["1 + 2"] * 200_000), ("1 + 2 = 3",), "3")
  kept, dropped = md.tokenize_all(tok, [small, huge, small], 32)
  assert len(kept) == 2 and dropped == 1
  assert max(tok.encoded) < 100  # only the small examples' pieces were encoded
  assert md.may_fit(tok, small, 32) and not md.may_fit(tok, huge, 32)
  # Up to max_len x max_token_chars characters, an example is still tokenized and measured.
  assert md.may_fit(tok, md.MathExample("x" * (32 * tok.max_token_chars - 2), (), "1"), 32)
