"""Accuracy reward (math-verify, SPEC §6): answer extraction, equivalences, gold parsing."""

import concurrent.futures

import pytest

from g2rpo_jax.rewards import accuracy_reward, extract_answer, parse_gold

# (gold, completion, expected reward)
CASES = [
    # \boxed answers, plain and LaTeX golds
    ("5", r"so \boxed{5}", 1.0),
    ("5", r"so \boxed{6}", 0.0),
    ("-3", r"\boxed{-3}", 1.0),
    ("-3", r"\boxed{3}", 0.0),
    ("1000", r"\boxed{1,000}", 1.0),
    ("2\\pi", r"\boxed{2\pi}", 1.0),
    ("\\pi", r"\boxed{3.14}", 0.0),
    # fractions: \frac vs decimals vs a/b
    ("\\frac{1}{2}", r"\boxed{0.5}", 1.0),
    ("0.5", r"\boxed{\frac12}", 1.0),
    ("1/2", r"\boxed{\dfrac{1}{2}}", 1.0),
    ("\\frac{3}{4}", r"\boxed{\frac{4}{3}}", 0.0),
    ("\\sqrt{2}/2", r"\boxed{\frac{\sqrt{2}}{2}}", 1.0),
    # symbolic equivalence, equations
    ("x^2+2x+1", r"\boxed{(x+1)^2}", 1.0),
    ("x^2+2x+1", r"\boxed{(x-1)^2}", 0.0),
    ("y=2x+3", r"\boxed{y = 2x + 3}", 1.0),
    ("5", r"\boxed{x = 5}", 1.0),
    ("10^6", r"\boxed{1000000}", 1.0),
    # units, currency, degrees
    ("12", r"\boxed{12 \text{ cm}}", 1.0),
    ("12 cm", r"\boxed{12}", 1.0),
    ("12", "<answer>12 inches</answer>", 1.0),
    ("\\$18.90", r"\boxed{18.9}", 1.0),
    ("10^\\circ", r"\boxed{10}", 1.0),
    # percentages: math-verify also accepts the bare number and the fraction
    ("50\\%", r"\boxed{50\%}", 1.0),
    ("50\\%", r"\boxed{50}", 1.0),
    ("50\\%", r"\boxed{0.5}", 1.0),
    ("50\\%", r"\boxed{5}", 0.0),
    # intervals and sets
    ("(0,1]", r"\boxed{(0,1]}", 1.0),
    ("(0,1]", r"\boxed{[0,1]}", 0.0),
    ("[2,\\infty)", r"\boxed{[2, \infty)}", 1.0),
    ("\\{1,2,3\\}", r"\boxed{\{3,2,1\}}", 1.0),
    ("1,2,3", r"\boxed{3, 2, 1}", 1.0),
    ("\\{1,2,3\\}", r"\boxed{\{1,2\}}", 0.0),
    # multiple choice and text answers
    ("A", r"\boxed{A}", 1.0),
    ("A", r"\boxed{B}", 0.0),
    ("A", r"\boxed{\text{(A)}}", 1.0),
    ("\\text{Monday}", r"\boxed{\text{Monday}}", 1.0),
    ("\\text{Monday}", r"\boxed{\text{Tuesday}}", 0.0),
    # the <answer> block when there is no \boxed
    ("5", "<think>2+3</think>\n<answer>5</answer>", 1.0),
    ("5", "<answer>4</answer>", 0.0),
    ("5", "<answer>The answer is 5</answer>", 1.0),
    ("5", "<answer>x = 5</answer>", 1.0),
    ("5", r"<answer>\frac{10}{2}</answer>", 1.0),
    ("\\frac{3}{4}", r"<answer>$\frac{3}{4}$</answer>", 1.0),
    ("(0,1]", "<answer>(0, 1]</answer>", 1.0),
    ("(B)", "<answer>B</answer>", 1.0),
    ("C", "<answer>(C)</answer>", 1.0),
    ("5", "<answer>five</answer>", 0.0),
    ("5", "<answer>3</answer> then <answer>5</answer>", 1.0),
    # the last \boxed wins, and \boxed comes before the <answer> block
    ("5", r"\boxed{3} no wait \boxed{5}", 1.0),
    ("5", r"\boxed{5} no wait \boxed{3}", 0.0),
    ("5", r"\boxed{5} <answer>3</answer>", 1.0),
    ("5", r"<answer>3</answer> \boxed{5}", 1.0),
    ("3", r"\boxed{\boxed{3}}", 1.0),
    ("5", r"\boxed{5} and a truncated \boxed{6", 1.0),
    # no answer at all
    ("5", "", 0.0),
    ("5", "The answer is 5.", 0.0),
    ("5", "$5$", 0.0),
    ("5", r"\boxed{5", 0.0),
    ("5", r"\boxed{}", 0.0),
    ("5", "<answer></answer>", 0.0),
    ("5", "<answer>5", 0.0),
    # malformed LaTeX in the completion scores 0.0, never raises
    ("5", r"\boxed{\frac{1}{}}", 0.0),
    ("5", r"\boxed{)(][}", 0.0),
    ("5", r"\boxed{" + "\\sqrt{" * 50 + "}" * 50 + "}", 0.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), CASES)
def test_accuracy_table(gold: str, completion: str, expected: float) -> None:
    assert accuracy_reward(["prompt"], [completion], answer=[gold]) == [expected]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_batch_keeps_order_and_ignores_other_row_fields() -> None:
    completions = [r"\boxed{1}", r"\boxed{2}", r"\boxed{3}"]
    rewards = accuracy_reward(["p"] * 3, completions, answer=["1", "3", "3"], tests=[None] * 3)
    assert rewards == [1.0, 0.0, 1.0]


def test_row_without_gold_scores_zero() -> None:
    assert accuracy_reward(["p"], [r"\boxed{1}"], answer=[None]) == [0.0]


def test_works_off_the_main_thread() -> None:
    # math-verify's timeout uses SIGALRM, which only the main thread may set.
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        rewards = executor.submit(
            accuracy_reward, ["p", "p"], [r"\boxed{\frac12}", r"\boxed{2}"], answer=["0.5"] * 2
        ).result()
    assert rewards == [1.0, 0.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"a \boxed{1} b \boxed{\frac{2}{3}} c", r"\frac{2}{3}"),
        (r"\boxed {x^{2}}", "x^{2}"),
        (r"\fbox{7}", "7"),
        ("<answer> 4 </answer>", " 4 "),
        ("no answer", None),
        (r"\boxed{unclosed", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "gold",
    [
        "42",
        "-0.25",
        "\\frac{1}{2}",
        "$\\frac{1}{2}$",
        "\\boxed{7}",
        "(0, 1]",
        "\\{1, 2\\}",
        "x^2 + 1",
        "y = 2x + 3",
        "\\sqrt{3}",
        "\\infty",
        "A",
        "(B)",
        "\\text{Monday}",
        "12 cm",
        "12 inches",
        "50\\%",
        "\\$18.90",
        "The answer is 5",
        "$abc$",
    ],
)
def test_parse_gold_accepts(gold: str) -> None:
    assert parse_gold(gold)


@pytest.mark.parametrize(
    "gold", ["garbage]]", "garbage", "yes", "Monday", "abc", "]]", "", "   ", "$$", "\\text{}"]
)
def test_parse_gold_rejects(gold: str) -> None:
    with pytest.raises(ValueError, match="gold answer"):
        parse_gold(gold)


def test_unparseable_gold_is_an_error_not_a_reward() -> None:
    with pytest.raises(ValueError):
        accuracy_reward(["p"], [r"\boxed{garbage]]}"], answer=["garbage]]"])
