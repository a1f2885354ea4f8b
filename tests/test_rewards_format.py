"""Format reward: one <think> block then one <answer> block, whitespace-tolerant."""

import pytest

from g2rpo_jax.rewards import format_reward

WELL_FORMED = [
    "<think>2+3=5</think><answer>5</answer>",
    "<think>\n2+3=5\n</think>\n<answer>\n5\n</answer>",
    "  \n<think>a</think>   \n\n  <answer>5</answer>\n\n",
    "<think>\n\n</think>\n\n<answer>5</answer>",  # Qwen3's empty thought (no-thinking mode)
    "<think>multi\nline\n\nthought with $x<y$ and </thin k></think>\t<answer>\\boxed{5}</answer>",
]
MALFORMED = [
    "",
    "5",
    "<answer>5</answer>",
    "<think>no answer</think>",
    "<think>a</think><answer></answer>",
    "<think>a</think><answer>  \n </answer>",
    "<think>a<answer>5</answer>",
    "<answer>5</answer><think>a</think>",
    "Sure! <think>a</think><answer>5</answer>",
    "<think>a</think><answer>5</answer> trailing text",
    "<think>a</think>text between<answer>5</answer>",
    "<think>a</think><answer>5</answer><answer>6</answer>",
    "<think>a<think>b</think><answer>5</answer>",
    "<think>a</think></think><answer>5</answer>",
    "<think>a</think><answer>5<answer>6</answer>",
    "<Think>a</Think><answer>5</answer>",
    "< think >a</think><answer>5</answer>",
    "<think>a</think><answer>5",
]


@pytest.mark.parametrize("completion", WELL_FORMED)
def test_well_formed(completion: str) -> None:
    assert format_reward(["Question?"], [completion]) == [1.0]


@pytest.mark.parametrize("completion", MALFORMED)
def test_malformed(completion: str) -> None:
    assert format_reward(["Question?"], [completion]) == [0.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("2+3=5</think><answer>5</answer>", 1.0),
        ("\n2+3=5\n</think>\n\n<answer>5</answer>", 1.0),
        ("<think>again</think><answer>5</answer>", 0.0),
        ("<answer>5</answer>", 0.0),
    ],
)
def test_prompt_that_opens_the_thought(completion: str, expected: float) -> None:
    prompt = "<|im_start|>assistant\n<think>\n"
    assert format_reward([prompt], [completion]) == [expected]


def test_batch() -> None:
    completions = [WELL_FORMED[0], MALFORMED[1], WELL_FORMED[1]]
    assert format_reward(["q"] * 3, completions, answer=["5"] * 3) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>5</answer>", 1.0),
        ("\n<answer>\n5\n</answer>\n", 1.0),
        ("<think>again</think><answer>5</answer>", 0.0),  # a second thought block
        ("</think><answer>5</answer>", 0.0),
        ("<answer></answer>", 0.0),
    ],
)
def test_prompt_that_closes_the_thought(completion: str, expected: float) -> None:
    """Qwen3's template with enable_thinking=False writes an empty thought into the prompt:
    the answer block alone is the format (issue 33)."""
    prompt = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert format_reward([prompt], [completion]) == [expected]
