"""answers: extraction (boxed with nested braces, "The answer is") and equivalence as MATH's
graders judge it (a table of pairs, checked in both directions)."""

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


# MATH's conventions (its grader's `is_equiv` and how its reference answers are written):
# the same answer in the forms a response and a reference take.
MATH_EQUAL = [
    (r"\$18.90", "18.90"), (r"\$1{,}000", "1000"), (r"50\%", "50"), ("12%", "12"),
    (r"90^\circ", "90"), (r"90^{\circ}", "90"), ("45°", "45"),
    (r"5 \text{ cm}", "5"), (r"3\text{ cm}^2", "3"), (r"\frac{1}{2}\text{ cup}", "0.5"),
    (r"(A)", r"\text{(A)}"), (r"\text{Monday}", "Monday"), (r"\mbox{(C)}", "(C)"),
    ("x = 5", "5"), (r"y = \frac{3}{4}", "0.75"), (r"k=\sqrt{3}", r"\sqrt3"),
    (r"\sqrt2", r"\sqrt{2}"), (r"2\sqrt2", r"2\sqrt{2}"), (r"\sqrt[3]2", r"\sqrt[3]{2}"),
    (r"\frac12", r"\frac{1}{2}"), (r"\frac1{\sqrt2}", r"\frac{1}{\sqrt{2}}"),
    (r"\frac\pi2", r"\frac{\pi}{2}"), (r"\dfrac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
    (r"\tfrac{1}{4}", "0.25"), (r"1+\dfrac{x}{2}", r"1 + \frac x2"),
    (r"\left( 3, \frac{1}{2} \right)", "(3, 0.5)"), (r"\left\{ 1,2,3 \right\}", r"\{1, 2, 3\}"),
    (r"[0, \tfrac12)", "[0,0.5)"), (r"\left(-\infty, 5\right]", r"(-\infty,5]"),
    (r"-1, \frac{1}{2}", "-1,0.5"), (r"\left(\frac{1}{2}, (2, 3)\right)", "(0.5,(2,3))"),
]
# Different answers, however alike their text: never called equal.
MATH_DIFFERENT = [
    ("1/2/3", r"\frac{3}{2}"), ("(1, 2)", "(2, 1)"), ("(0, 1]", "(0, 1)"), (r"\{1, 2\}", "(1, 2)"),
    ("(1, 2)", "1, 2"), ("(1, 2, 3)", "(1, 2)"), (r"\sqrt{23}", r"\sqrt23"),
    (r"\frac123", r"\frac{12}{3}"), (r"\frac{1}{2}", r"\frac{1}{3}"), (r"2\sqrt{2}", r"\sqrt{2}"),
    ("x = 5", "x = 6"), ("x + y = 5", "5"), ("a = 1, b = 2", "1, 2"),
    (r"\text{(A)}", r"\text{(B)}"), (r"x \in \text{R}", r"x \in \text{Q}"),
    (r"90^\circ", "90^2"), (r"\$18.90", "18.09"), (r"5 \text{ cm}", "50"), (r"\frac{1}{2}", "2"),
    (r"3+2\mathrm{i}", "3+2"),
]


@pytest.mark.parametrize("a, b", MATH_EQUAL)
def test_math_equal_pairs_both_ways(a, b):
  assert answers.same_answer(a, b) and answers.same_answer(b, a)


@pytest.mark.parametrize("a, b", MATH_DIFFERENT)
def test_math_different_pairs_both_ways(a, b):
  assert not answers.same_answer(a, b) and not answers.same_answer(b, a)


def test_math_answer_in_a_response():
  assert answers.is_correct(r"The cost is $\boxed{\$18.90}$.", "18.90")
  assert answers.is_correct(r"so $\boxed{x = \dfrac12}$", r"\frac{1}{2}")
  assert not answers.is_correct(r"so $\boxed{1/2/3}$", r"\frac{3}{2}")


def test_is_correct_needs_an_answer():
  assert answers.is_correct("Step: 2 * 3 = 6\nThe answer is 6", "6.0")
  assert not answers.is_correct("Step: 2 * 3 = 6", "6")
  assert not answers.same_answer(None, "6")


def test_hostile_input_is_bounded():
  huge = "9" * 10_000
  assert answers.normalize(huge) == huge  # too long to be parsed as a number: kept as text
  assert answers.extract_answer("\\boxed{" * 1000) is None
  deep = "\\frac{" * 150 + "1" + "}{2}" * 150  # nested past any answer, within the length cap
  assert answers.same_answer(deep, deep)
  assert not answers.same_answer("(" * 5000 + ")" * 5000, "()")
