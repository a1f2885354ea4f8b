"""Format reward: `<think> … </think> <answer> … </answer>`, tolerant of whitespace.

Only whitespace may come before `<think>`, between the blocks and after `</answer>`; the
tags themselves are exact and each appears once. The thought may be empty (Qwen3's
no-thinking mode emits `<think>\\n\\n</think>`), the answer may not. When the prompt already
ends with `<think>` (chat templates that open the thought for the model), the completion
starts inside the thought and must not repeat the tag; when it ends with a closed thought
(Qwen3's template with enable_thinking=False writes `<think>\\n\\n</think>`), the completion
is the answer block alone and must not open a second thought.
"""

import re

_FORMAT = re.compile(
    r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL
)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _well_formed(prompt: str, completion: str) -> bool:
    text = completion
    if prompt.rstrip().endswith("<think>"):
        text = "<think>" + completion
    elif prompt.rstrip().endswith("</think>"):
        text = "<think></think>" + completion
    match = _FORMAT.match(text)
    if match is None or not match["answer"].strip():
        return False
    # A lazy match can hide a second tag inside a block ("<think>a<think>b</think>…").
    return not any(tag in match["think"] or tag in match["answer"] for tag in _TAGS)


def format_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """1.0 where the completion is one thought block then one answer block, else 0.0."""
    return [float(_well_formed(p, c)) for p, c in zip(prompts, completions, strict=True)]
