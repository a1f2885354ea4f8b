"""The toy reasoning task: addition written least-significant digit first, one step per digit.

Every number is written with its units digit first, so the i-th step of the sum reads the
i-th digit of each operand and the carry of the step before; each step depends only on
nearby tokens, which is what makes the task learnable by a tiny decoder (NOTES.md, "Toy
task"). Example, 365 + 141 = 506:

    prompt  563+141=
    trace   <think>5+1+0=06;6+4+0=10;3+1+1=05;</think>
            <answer>605</answer>

A step is `a+b+c=kd;`: operand digits a and b, carry-in c, then carry-out k and sum digit d.
The answer is the sum, units digit first (the final carry, when 1, is its last digit).
Difficulty is the number of digits per operand; the trace of an n-digit problem is
10n + 5 or 10n + 6 tokens under the toy tokenizer (`<think>` and the other tags are one
token each).
"""

import dataclasses
import re
from collections.abc import Collection, Sequence

import numpy as np

THINK, END_THINK = "<think>", "</think>"
ANSWER, END_ANSWER = "<answer>", "</answer>"
TAGS = (THINK, END_THINK, ANSWER, END_ANSWER)
# Every character a prompt or trace can hold besides the tags.
ALPHABET = "0123456789+=;\n "
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Problem:
    """a + b, both with `digits` digits (the most significant one nonzero when digits > 1)."""

    a: int
    b: int
    digits: int

    @property
    def prompt(self) -> str:
        return f"{lsd_first(self.a, self.digits)}+{lsd_first(self.b, self.digits)}="

    @property
    def answer(self) -> str:
        """The sum, units digit first: `digits` digits, plus the final carry when it is 1."""
        total = self.a + self.b
        return lsd_first(total, self.digits + (total >= 10**self.digits))

    @property
    def trace(self) -> str:
        """The reference completion: one step per digit, then the answer block."""
        steps, carry = [], 0
        for x, y in zip(
            lsd_first(self.a, self.digits), lsd_first(self.b, self.digits), strict=True
        ):
            total = int(x) + int(y) + carry
            steps.append(f"{x}+{y}+{carry}={total // 10}{total % 10};")
            carry = total // 10
        return f"{THINK}{''.join(steps)}{END_THINK}\n{ANSWER}{self.answer}{END_ANSWER}"

    def row(self) -> dict:
        """The problem as a data row (DESIGN.md "Data rows")."""
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "guidance": self.trace,
            "difficulty": float(self.digits),
        }


def lsd_first(value: int, digits: int) -> str:
    """`value` as exactly `digits` decimal digits, units digit first (zero-padded)."""
    if not 0 <= value < 10**digits:
        raise ValueError(f"{value} does not fit in {digits} digits")
    return str(value).zfill(digits)[::-1]


def sample_problem(rng: np.random.Generator, digits: int) -> Problem:
    """A uniformly random problem with `digits` digits per operand (1 digit: 0–9)."""
    if digits < 1:
        raise ValueError(f"digits={digits} must be >= 1")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    a, b = (int(x) for x in rng.integers(low, 10**digits, size=2))
    return Problem(a, b, digits)


def make_problems(
    seed: int | Sequence[int],
    count: int,
    digits: int | Sequence[int],
    weights: Sequence[float] | None = None,
    exclude: Collection[Problem] = (),
) -> list[Problem]:
    """`count` problems drawn from `np.random.default_rng(seed)`: the same seed, the same list.

    digits: one size, or sizes drawn per problem with probabilities `weights` (default
    uniform). A problem in `exclude` (e.g. a held-out set) is drawn again.
    """
    rng = np.random.default_rng(seed)
    sizes = (digits,) if isinstance(digits, int) else tuple(digits)
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    problems = []
    for i in rng.choice(len(sizes), size=count, p=p):
        problem = sample_problem(rng, sizes[i])
        while problem in exclude:
            problem = sample_problem(rng, sizes[i])
        problems.append(problem)
    return problems


def parse_prompt(prompt: str) -> Problem:
    """The problem a prompt states (its inverse: `parse_prompt(p.prompt) == p`)."""
    match = re.fullmatch(r"(\d+)\+(\d+)=", prompt.strip())
    if match is None or len(match[1]) != len(match[2]):
        raise ValueError(f"not a toy-task prompt: {prompt!r}")
    a, b = (int(s[::-1]) for s in match.groups())
    return Problem(a, b, len(match[1]))


def extract_answer(completion: str) -> str | None:
    """The text of the last `<answer>` block, stripped; None when there is none."""
    blocks = _ANSWER_BLOCK.findall(completion)
    return blocks[-1].strip() if blocks else None


def is_correct(problem: Problem, completion: str) -> bool:
    """The exact verifier: the last answer block is the sum, digit for digit.

    Stricter than math-verify, which reads "015" and "15" as the same number (an
    LSD-first answer whose units digit is 0 and a wrong one without it); the steps in
    the thought are not checked, only the answer.
    """
    return extract_answer(completion) == problem.answer
