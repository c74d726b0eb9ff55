"""Final-answer extraction and comparison for step-by-step math responses.

A response's answer is its last `\\boxed{...}` (nested braces allowed), else
what follows its last "The answer is" (to the end of that line, a trailing
period dropped). Two answers are equal when their normalized forms are: `$`,
spaces, `\\left`/`\\right`, `\\!` and a trailing period are removed, and a
number is written one way, so 0.5 = 1/2 = .50 = \\frac{1}{2} = \\dfrac12,
-3 = −3 (unicode minus), 1,000 = 1{,}000 = 1000, 2.0 = 2. Anything that is
not a plain number (expressions, intervals, text) compares as cleaned text.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac(?:\{([^{}]+)\}|(\d))(?:\{([^{}]+)\}|(\d))$")
# Longest numbers we turn into Fractions: bounds the work on hostile input.
_MAX_DIGITS = 100


def _boxed_contents(text: str) -> str | None:
  """The contents of the last well-closed \\boxed{...}, braces balanced; None if none."""
  found = None
  for m in _BOXED.finditer(text):
    depth, i = 1, m.end()
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      found = text[m.end():i - 1]
  return found


def extract_answer(text: str) -> str | None:
  """The final answer of a response (see the module docstring), or None."""
  boxed = _boxed_contents(text)
  if boxed is not None:
    return boxed.strip()
  matches = list(_ANSWER_IS.finditer(text))
  if not matches:
    return None
  rest = text[matches[-1].end():].split("\n", 1)[0].strip()
  rest = rest[:-1].strip() if rest.endswith(".") else rest
  return rest or None


def _number(s: str) -> Fraction | None:
  """s as an exact number when it is an integer, decimal, a/b or \\frac{a}{b}; else None."""
  if len(s) > _MAX_DIGITS:
    return None
  m = _FRAC.match(s)
  if m:
    sign, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
    a, b = _number(num), _number(den)
    if a is None or b is None or b == 0:
      return None
    return -a / b if sign == "-" else a / b
  if "/" in s:
    num, _, den = s.partition("/")
    a, b = _number(num), _number(den)
    return None if a is None or b is None or b == 0 else a / b
  if _NUMBER.fullmatch(s):
    return Fraction(s)
  return None


def normalize(answer: str) -> str:
  """The canonical form two equal answers share (see the module docstring)."""
  s = answer.replace("\u2212", "-").replace("$", "").replace("\\!", "")
  s = s.replace("\\left", "").replace("\\right", "").replace("{,}", ",")
  s = "".join(s.split())
  while s.startswith("{") and s.endswith("}") and _boxed_contents("\\boxed" + s) == s[1:-1]:
    s = s[1:-1]  # {x} -> x, but not {a}+{b}
  s = s.rstrip(".")
  if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", s):
    s = s.replace(",", "")  # thousands separators; "1,2" (a pair) is kept
  value = _number(s)
  if value is None:
    return s
  return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def same_answer(a: str | None, b: str | None) -> bool:
  """True when both are answers and their normalized forms match."""
  return a is not None and b is not None and normalize(a) == normalize(b) != ""


def is_correct(response: str, reference: str) -> bool:
  """Whether the answer extracted from `response` equals the reference answer."""
  return same_answer(extract_answer(response), reference)
