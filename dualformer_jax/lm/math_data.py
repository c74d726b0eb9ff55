"""Step-by-step math problems: a synthetic arithmetic generator, a JSON-lines reader,
the text format shared by both, and a word-level vocabulary for the synthetic data.

Text format (one convention for the tiny model and for fine-tuned LLMs):

  prompt    "Problem: <problem>\nSolution:"
  solution  "\nStep: <step 1>" ... "\nStep: <step n>" "\nThe answer is <answer>" eos

Every intermediate step starts with the same marker and the answer line with
its own, so the mode of an answer is chosen by the tokens forced after the
prompt, as Dualformer does with `create` / `plan` for mazes: slow mode forces
STEP_MARK (at least one step is written), fast mode forces ANSWER_MARK (the
answer comes at once). Markers and contents are tokenized separately, so a
forced marker is exactly the prefix the model saw in training whatever the
tokenizer merges.

Synthetic problems are chains of +, -, * on small non-negative integers,
evaluated left to right (a calculator chain, no precedence), one step per
operation: "3 + 4 * 2 - 5" -> "3 + 4 = 7", "7 * 2 = 14", "14 - 5 = 9", answer 9.
Every intermediate value stays in [0, max_value), so each number is one token
and the step tables are small enough for a tiny model to learn in CPU minutes;
solving without steps (fast mode) needs the whole chain in one go.

JSON lines (the paper preset; e.g. MATH solutions split into steps), one object
per line:
  {"problem": str, "steps": [str, ...], "answer": str}
`steps` are the intermediate reasoning steps (each may be dropped in training;
may be empty), `answer` the final answer as it should be written after
"The answer is" (e.g. "\\frac{1}{2}", "1000"). Other keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Protocol, Sequence

import numpy as np

PROMPT_FORMAT = "Problem: {problem}\nSolution:"
STEP_MARK = "\nStep:"
ANSWER_MARK = "\nThe answer is"
OPS = ("+", "-", "*")


@dataclasses.dataclass(frozen=True)
class MathExample:
  problem: str
  steps: tuple[str, ...]  # intermediate steps, in order
  answer: str


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedExample:
  """One example as token-id pieces, so dropping steps is a concatenation, not a re-tokenization.

  prompt_P: bos + prompt; step_pieces: STEP_MARK ids + step ids, one array per
  step; answer_A: ANSWER_MARK ids + answer ids + eos.
  """
  prompt_P: np.ndarray
  step_pieces: tuple[np.ndarray, ...]
  answer_A: np.ndarray
  answer: str  # the reference answer text, for checking responses

  @property
  def full_len(self) -> int:
    """Tokens of the complete (nothing dropped) sequence."""
    return len(self.prompt_P) + sum(len(s) for s in self.step_pieces) + len(self.answer_A)


class Tokenizer(Protocol):
  """What the math code needs of a tokenizer (WordVocab here, the HF one for checkpoints)."""
  bos_id: int
  eos_id: int
  pad_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...  # no bos/eos added

  def decode(self, ids: Sequence[int]) -> str: ...


class WordVocab:
  """Whitespace-split words -> ids; pad 0, bos 1, eos 2 (as data/vocab.py).

  Enough for the synthetic format: its prompts and solutions are words and
  single-token numbers. decode joins with spaces (newlines are not kept).
  """

  def __init__(self, words: Sequence[str]):
    self.tokens = ["<pad>", "<bos>", "<eos>"] + list(dict.fromkeys(words))
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.vocab_size = len(self.tokens)

  @classmethod
  def for_synthetic(cls, max_value: int, max_operand: int) -> "WordVocab":
    words = " ".join([PROMPT_FORMAT, STEP_MARK, ANSWER_MARK]).replace("{problem}", "").split()
    numbers = [str(i) for i in range(max(max_value, max_operand + 1))]
    return cls(words + list(OPS) + ["="] + numbers)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(f"word {e.args[0]!r} is not in the synthetic vocabulary") from None

  def decode(self, ids: Sequence[int]) -> str:
    specials = (self.pad_id, self.bos_id, self.eos_id)
    return " ".join(self.tokens[int(i)] for i in ids if int(i) not in specials)


def _apply(op: str, a: int, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def synthetic_example(rng: np.random.Generator, min_ops: int, max_ops: int, max_value: int,
                      max_operand: int) -> MathExample:
  """A chain of min_ops..max_ops operations whose every value is in [0, max_value).

  An operation is drawn uniformly among those with a legal operand (`*` needs a
  value >= 2 and operands >= 2, so it never collapses the chain), then its operand.
  """
  value = int(rng.integers(0, max_value))
  words, steps = [str(value)], []
  for _ in range(int(rng.integers(min_ops, max_ops + 1))):
    legal = {op: [b for b in range(1, max_operand + 1)
                  if 0 <= _apply(op, value, b) < max_value and (op != "*" or min(b, value) >= 2)]
             for op in OPS}
    ops = [op for op in OPS if legal[op]]
    op = ops[int(rng.integers(len(ops)))]
    b = legal[op][int(rng.integers(len(legal[op])))]
    result = _apply(op, value, b)
    steps.append(f"{value} {op} {b} = {result}")
    words += [op, str(b)]
    value = result
  return MathExample(" ".join(words), tuple(steps), str(value))


def synthetic_splits(num_train: int, num_test: int, seed: int, min_ops: int, max_ops: int,
                     max_value: int, max_operand: int
                     ) -> tuple[list[MathExample], list[MathExample]]:
  """(train, test) of distinct problems: no test problem appears in train.

  ValueError when the problem space is too small for that many distinct problems.
  """
  rng = np.random.default_rng(seed)
  seen: dict[str, MathExample] = {}
  want = num_train + num_test
  for _ in range(20 * want):
    ex = synthetic_example(rng, min_ops, max_ops, max_value, max_operand)
    seen.setdefault(ex.problem, ex)
    if len(seen) == want:
      examples = list(seen.values())
      return examples[num_test:], examples[:num_test]
  raise ValueError(f"found only {len(seen)} distinct problems, need {want}: raise "
                   "task.max_ops / task.max_value or ask for fewer examples")


def read_jsonl(path: str) -> list[MathExample]:
  """Examples of a JSON-lines file (fields in the module docstring); blank lines skipped.

  ValueError naming the file and line of the first bad record.
  """
  if not os.path.isfile(path):
    raise ValueError(f"dataset file {path!r} does not exist")
  out = []
  with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named with its number
    for n, raw in enumerate(f, 1):
      where = f"{path}:{n}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 ({e})") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
      except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with problem, steps, answer")
      problem, steps, answer = rec.get("problem"), rec.get("steps"), rec.get("answer")
      if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{where}: 'problem' must be a non-empty string")
      if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: 'steps' must be a list of strings")
      if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: 'answer' must be a non-empty string")
      out.append(MathExample(problem.strip(), tuple(s.strip() for s in steps), answer.strip()))
  if not out:
    raise ValueError(f"dataset file {path!r} has no examples")
  return out


def _ids(tok: Tokenizer, text: str) -> np.ndarray:
  return np.asarray(tok.encode(text), np.int32)


def prompt_ids(tok: Tokenizer, problem: str) -> np.ndarray:
  """bos + the prompt, as in training; the sampler is given this (plus a mode marker)."""
  return np.concatenate([[tok.bos_id], _ids(tok, PROMPT_FORMAT.format(problem=problem))]
                        ).astype(np.int32)


def marker_ids(tok: Tokenizer, marker: str) -> np.ndarray:
  return _ids(tok, marker)


def tokenize(tok: Tokenizer, ex: MathExample) -> TokenizedExample:
  step_mark, answer_mark = marker_ids(tok, STEP_MARK), marker_ids(tok, ANSWER_MARK)
  steps = tuple(np.concatenate([step_mark, _ids(tok, " " + s)]).astype(np.int32)
                for s in ex.steps)
  answer = np.concatenate([answer_mark, _ids(tok, " " + ex.answer), [tok.eos_id]])
  return TokenizedExample(prompt_ids(tok, ex.problem), steps, answer.astype(np.int32), ex.answer)


def tokenize_all(tok: Tokenizer, examples: Sequence[MathExample], max_len: int
                 ) -> tuple[list[TokenizedExample], int]:
  """Tokenized examples whose complete sequence fits max_len, and how many did not.

  Over-long examples are left out, never truncated: a cut solution would teach
  the model to stop without an answer. One is tokenized only if `may_fit`, so a
  huge line costs its characters, not a tokenization.
  """
  kept = [t for t in (tokenize(tok, ex) for ex in examples if may_fit(tok, ex, max_len))
          if t.full_len <= max_len]
  return kept, len(examples) - len(kept)


def may_fit(tok: Tokenizer, ex: MathExample, max_len: int) -> bool:
  """False when `ex` cannot fit `max_len` tokens, found without tokenizing.

  No token of the tokenizer spans more than its `max_token_chars` characters,
  so a text of n characters has at least n / max_token_chars tokens. A
  tokenizer without that bound (WordVocab: words may be far apart) is never
  pre-checked.
  """
  longest = getattr(tok, "max_token_chars", None)
  if not longest:
    return True
  chars = len(ex.problem) + sum(len(s) for s in ex.steps) + len(ex.answer)
  return chars <= max_len * longest
