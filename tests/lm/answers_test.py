"""answers: extraction (boxed with nested braces, "The answer is") and numeric equivalence."""

import pytest

from dualformer_jax.lm import answers


@pytest.mark.parametrize("text, expected", [
    (r"so $x = \boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{1} first, then \boxed{2}", "2"),  # the last one counts
    (r"The answer is \boxed{3}", "3"),  # boxed wins over the phrase
    ("Step: 3 + 4 = 7\nThe answer is 7.\ntrailing text", "7"),
    ("The final answer is: -2", "-2"),
    ("The answer is 4 The answer is 9", "9"),
    (r"\boxed{never closed", None),
    ("no answer here", None),
    ("The answer is", None),
])
def test_extract_answer(text, expected):
  assert answers.extract_answer(text) == expected


@pytest.mark.parametrize("a, b", [
    ("0.5", "1/2"), (".50", r"\frac{1}{2}"), (r"\dfrac12", "0.5"), ("-3", "\u22123"),
    ("1,000", "1000"), ("1{,}000", "1000.0"), ("$ 5 $", "5"), ("2.", "2"), ("{7}", "7"),
    (r"-\frac{1}{2}", r"\frac{-1}{2}"), (r"\left( 1, 2 \right)", "(1,2)"), ("x + 1", "x+1"),
])
def test_equivalent_forms(a, b):
  assert answers.same_answer(a, b)


@pytest.mark.parametrize("a, b", [
    ("1/2", "2"), ("1,2", "12"), ("-3", "3"), ("1/0", "0"), ("x+1", "x+2"), ("", ""),
])
def test_different_answers(a, b):
  assert not answers.same_answer(a, b)


def test_is_correct_needs_an_answer():
  assert answers.is_correct("Step: 2 * 3 = 6\nThe answer is 6", "6.0")
  assert not answers.is_correct("Step: 2 * 3 = 6", "6")
  assert not answers.same_answer(None, "6")


def test_hostile_input_is_bounded():
  huge = "9" * 10_000
  assert answers.normalize(huge) == huge  # too long to be parsed as a number: kept as text
  assert answers.extract_answer("\\boxed{" * 1000) is None
