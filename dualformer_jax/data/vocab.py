"""Token <-> id mapping and the rule for reading token sequences.

pad, bos and eos come first and are distinct: pad is 0 (grain and the loss
masks assume it); bos is 1; eos is 2. Every reader of a prompt or a response
(task checkers, evaluation, pictures) sees it through `strip_specials`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS = "pad", "bos", "eos"
SPECIALS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class UnknownTokenError(KeyError):
  pass


def strip_specials(tokens: Iterable) -> list:
  """The tokens a reader acts on: pad and bos dropped, eos and everything after it cut.

  pad and bos only frame a sequence (batch padding, the decoder's start), and
  the model's output ends at its first eos, whatever it samples after.
  """
  out = []
  for tok in tokens:
    if tok == EOS:
      break
    if tok != PAD and tok != BOS:
      out.append(tok)
  return out


class Vocab:
  """A fixed token list; the id of a token is its index."""

  def __init__(self, task_tokens: Sequence[str]):
    tokens = list(SPECIALS) + [t for t in task_tokens if t not in SPECIALS]
    if len(set(tokens)) != len(tokens):
      dup = sorted({t for t in tokens if tokens.count(t) > 1})
      raise ValueError(f"duplicate tokens in vocabulary: {dup}")
    self.tokens: list[str] = tokens
    self._ids = {t: i for i, t in enumerate(tokens)}

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and self.tokens == other.tokens

  def id(self, token: str) -> int:
    try:
      return self._ids[token]
    except KeyError:
      raise UnknownTokenError(f"unknown token {token!r} (vocabulary of {len(self)} tokens)") from None

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """String tokens -> int32 ids; UnknownTokenError names the first bad token."""
    ids = self._ids
    try:
      return np.fromiter((ids[t] for t in tokens), dtype=np.int32)
    except KeyError as e:
      raise UnknownTokenError(
          f"unknown token {e.args[0]!r} (vocabulary of {len(self)} tokens)") from None

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Ids -> string tokens; an id outside the vocabulary raises ValueError."""
    toks = self.tokens
    out = []
    for i in ids:
      i = int(i)
      if not 0 <= i < len(toks):
        raise ValueError(f"id {i} outside the vocabulary of {len(toks)} tokens")
      out.append(toks[i])
    return out

  def to_list(self) -> list[str]:
    return list(self.tokens)

  @classmethod
  def from_list(cls, tokens: Sequence[str]) -> "Vocab":
    if tuple(tokens[:3]) != SPECIALS:
      raise ValueError(f"a stored vocabulary must start with {SPECIALS}, got {list(tokens[:3])}")
    return cls(tokens[3:])
