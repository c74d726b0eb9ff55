r"""Final-answer extraction and comparison for step-by-step math responses, as MATH graders do.

A response's answer is its last `\boxed{...}` (nested braces allowed), else
what follows its last "The answer is" (to the end of that line, a trailing
period dropped). Two answers are equal when their normalized forms are. The
normalization follows the MATH dataset's own grader (Hendrycks et al.,
`is_equiv`) and the conventions its answers are written in:

  - dropped: `$`, `\$`, `%`, `\%`, `^\circ` / `^{\circ}` / `°`, spacing
    (`\!`, `\,`, `\;`, `\ `, whitespace), `\left` / `\right`, a trailing period,
    a leading `x =` (one variable, one `=`), and a `\text{...}` unit after a number
    (`5 \text{ cm}`, `3\text{ cm}^2`); any other `\text{X}` is read as X;
  - LaTeX arguments as LaTeX reads them: `\sqrt2` = `\sqrt{2}`, `\frac12` =
    `\frac{1}{2}`, `\frac\pi2` = `\frac{\pi}{2}`, with `\dfrac` / `\tfrac` = `\frac`
    anywhere in the answer;
  - a number written one way: 0.5 = 1/2 = .50 = \frac{1}{2}, -3 = −3 (unicode
    minus), 1,000 = 1{,}000 = 1000, 2.0 = 2; `a/b` only for two plain numbers (so
    1/2/3 is text, not 3/2);
  - tuples, intervals and sets (`(a, b)`, `[a, b)`, `\{a, b\}`, a bare `a, b`)
    element by element, in order, their brackets kept.

Anything else compares as cleaned text: an answer is never called equal to a
different one by a guess (false negatives are possible, false positives are bugs).
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# Longest numbers we turn into Fractions: bounds the work on hostile input.
_MAX_DIGITS = 100
# Longer answers are compared as whitespace-free text only: bounds the recursion
# (nested \frac / brackets) and the work on hostile input.
_MAX_CHARS = 400

_DROPPED = re.compile(
    r"\\left\.|\\right\.|\\(?:left|right|big|Big|bigg|Bigg|displaystyle)(?![A-Za-z])"
    r"|\\[!,;: ]|\\\$|\$|\\%|%|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])")
_TEXT = re.compile(r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm)\s*\{([^{}]*)\}")
# A unit: \text{words} ending the answer after a number-like head (a digit, or a closing
# brace / bracket as in \frac{1}{2} or (1, 2)), with an optional ^2 / ^3. Not \mathrm:
# 2\mathrm{i} is a number, not 2 of a unit.
_UNIT = re.compile(r"(?<=[0-9}).])\s*\\(?:text|textrm|textnormal|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
                   r"(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$")
_VARIABLE_IS = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=")
_MACROS = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
_CONTROL = re.compile(r"\\(?:[A-Za-z]+|.)")  # \pi, \{
_ARGS = {"frac": 2, "sqrt": 1}
_OPEN, _CLOSE = "([{", ")]}"


def _group_end(s: str, i: int) -> int | None:
  """Index just past the bracket group opening at s[i] (any of ([{ vs )]}), or None."""
  depth = 0
  for j in range(i, len(s)):
    if s[j] in _OPEN:
      depth += 1
    elif s[j] in _CLOSE:
      depth -= 1
      if depth == 0:
        return j + 1
  return None


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


def _argument(s: str, i: int) -> tuple[str, int] | None:
  """The LaTeX argument starting at s[i] (a {group}, a control word or one character) and
  the index past it; None when there is none (the end, or an unclosed brace)."""
  if i >= len(s) or s[i] in "}])":
    return None
  if s[i] == "{":
    end = _brace_end(s, i)
    return None if end is None else (s[i + 1:end - 1], end)
  if s[i] == "\\":
    m = _CONTROL.match(s, i)
    return (m.group(), m.end()) if m else None
  return s[i], i + 1


def _brace_end(s: str, i: int) -> int | None:
  """Index just past the {...} opening at s[i] (braces only), or None."""
  depth = 0
  for j in range(i, len(s)):
    depth += {"{": 1, "}": -1}.get(s[j], 0)
    if depth == 0:
      return j + 1
  return None


def _brace_arguments(s: str) -> str:
  r"""Every argument of \frac and \sqrt in braces, as LaTeX reads them: \frac12 ->
  \frac{1}{2}, \sqrt2x -> \sqrt{2}x, \frac\pi2 -> \frac{\pi}{2} (recursively)."""
  out, i = [], 0
  for m in _MACROS.finditer(s):
    if m.start() < i:
      continue  # inside an argument already rewritten
    out.append(s[i:m.end()])
    j = m.end()
    while m.group(1) == "sqrt" and j < len(s) and s[j].isspace():
      j += 1
    if m.group(1) == "sqrt" and s[j:j + 1] == "[":  # \sqrt[3]{x}: the index stays
      end = s.find("]", j)
      if end < 0:
        i = j
        continue
      out.append(s[j:end + 1])
      j = end + 1
    for _ in range(_ARGS[m.group(1)]):
      while j < len(s) and s[j].isspace():  # \frac 1 2 = \frac{1}{2}
        j += 1
      arg = _argument(s, j)
      if arg is None:
        break
      out.append("{" + _brace_arguments(arg[0]) + "}")
      j = arg[1]
    i = j
  out.append(s[i:])
  return "".join(out)


def _number(s: str) -> Fraction | None:
  r"""s as an exact number: an integer, a decimal, a/b of two of those, or \frac{a}{b} of
  two numbers (arguments already braced); else None."""
  if len(s) > _MAX_DIGITS:
    return None
  m = re.match(r"([+-]?)\\frac\{", s)
  if m:
    num_end = _brace_end(s, m.end() - 1)
    if num_end is None or s[num_end:num_end + 1] != "{" or _brace_end(s, num_end) != len(s):
      return None
    a, b = _number(s[m.end():num_end - 1]), _number(s[num_end + 1:-1])
    if a is None or b is None or b == 0:
      return None
    return -a / b if m.group(1) == "-" else a / b
  if s.count("/") == 1:
    num, den = s.split("/")
    if not (_NUMBER.fullmatch(num) and _NUMBER.fullmatch(den)) or Fraction(den) == 0:
      return None
    return Fraction(num) / Fraction(den)
  return Fraction(s) if _NUMBER.fullmatch(s) else None


def _split_top_level(s: str) -> list[str] | None:
  """s cut at its commas outside any bracket; None when its brackets do not balance."""
  parts, depth, start = [], 0, 0
  for j, ch in enumerate(s):
    if ch in _OPEN:
      depth += 1
    elif ch in _CLOSE:
      depth -= 1
      if depth < 0:
        return None
    elif ch == "," and depth == 0:
      parts.append(s[start:j])
      start = j + 1
  return parts + [s[start:]] if depth == 0 else None


def _canonical(s: str) -> str:
  """The canonical form of a cleaned (whitespace-free, arguments braced) answer or element."""
  while s.startswith("{") and s.endswith("}") and _brace_end(s, 0) == len(s):
    s = s[1:-1]  # {x} -> x, but not {a}+{b}
  s = s.rstrip(".")
  if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", s):
    s = s.replace(",", "")  # thousands separators; "1,2" (a pair) is kept
  value = _number(s)
  if value is not None:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
  # Tuples, intervals, sets: the brackets as written, each element canonical, in order.
  if s.startswith("\\{") and s.endswith("\\}") and _brace_end(s, 1) == len(s):
    opening, inner, closing = "\\{", s[2:-2], "\\}"
  elif s[:1] in "([" and s[-1:] in ")]" and _group_end(s, 0) == len(s):
    opening, inner, closing = s[0], s[1:-1], s[-1]
  else:
    opening, inner, closing = "", s, ""
  parts = _split_top_level(inner)
  if parts is None or (not opening and len(parts) < 2) or "" in parts:
    return s
  return opening + ",".join(_canonical(p) for p in parts) + closing


def normalize(answer: str) -> str:
  """The canonical form two equal answers share (see the module docstring)."""
  s = answer.replace("\u2212", "-").replace("{,}", ",")
  s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
  s = _DROPPED.sub("", s)
  if len(s) > _MAX_CHARS:
    return "".join(s.split())
  s = _UNIT.sub("", s)
  s = _TEXT.sub(r"\1", s)
  s = "".join(_brace_arguments(s).split())
  if s.count("=") == 1:
    s = _VARIABLE_IS.sub("", s)  # x = 5 -> 5 (not x + y = 5)
  return _canonical(s)


def same_answer(a: str | None, b: str | None) -> bool:
  """True when both are answers and their normalized forms match."""
  return a is not None and b is not None and normalize(a) == normalize(b) != ""


def is_correct(response: str, reference: str) -> bool:
  """Whether the answer extracted from `response` equals the reference answer."""
  return same_answer(extract_answer(response), reference)
