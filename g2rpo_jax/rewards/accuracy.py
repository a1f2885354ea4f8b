"""Accuracy reward: the completion's final answer checked against the gold with math-verify.

Gold and predicted answers are read by one rule, `_parse`: text with math delimiters goes to
math-verify as is; bare text is wrapped in `$…$` so LaTeX without delimiters (`\\frac12`,
`(0, 1]`, `A`) reads as math. When the wrapped reading turns English words into products of
variables (`yes` → y·e·s), the bare text is parsed instead, which finds numbers and
expressions inside prose ("The answer is 5", "5 dollars") and nothing in plain words.
"""

import functools
import re
import threading

import math_verify
from math_verify import ExprExtractionConfig, LatexExtractionConfig
from math_verify.errors import TimeoutException

# An escaped dollar (`\\$5`) is a currency sign, not a delimiter.
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
# math-verify's own limit per parse/verify; it uses SIGALRM, so only in the main thread.
_TIMEOUT_S = 5
# LaTeX text groups and command names are not words a parser could mistake for variables.
_TEXT_GROUP = re.compile(r"\\(?:text\w*|mathrm|mbox|operatorname)\s*\{[^{}]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _timeout_s() -> int | None:
    on_main = threading.current_thread() is threading.main_thread()
    return _TIMEOUT_S if on_main else None


def _has_bare_words(text: str) -> bool:
    """Whether `text` holds a run of 3+ letters outside LaTeX commands and text groups."""
    return bool(_WORD.search(_COMMAND.sub(" ", _TEXT_GROUP.sub(" ", text))))


def _reads_words_as_variables(parsed: list, text: str) -> bool:
    free_symbols = getattr(parsed[0], "free_symbols", None)
    return bool(free_symbols) and _has_bare_words(text)


def _parse(text: str) -> list:
    """Parses an answer with math-verify and no string fallback; [] when nothing parses."""

    def parse(s: str) -> list:
        return math_verify.parse(
            s, _EXTRACTION, fallback_mode="no_fallback", parsing_timeout=_timeout_s()
        )

    if _MATH_DELIMITER.search(text):
        return parse(text)
    wrapped = parse(f"${text}$")
    if wrapped and not _reads_words_as_variables(wrapped, text):
        return wrapped
    return parse(text)


def parse_gold(answer: str) -> list:
    """Parses a gold answer; raises ValueError when it holds no math.

    Accepted: numbers, fractions, LaTeX with or without delimiters, intervals, sets,
    equations, single letters (multiple choice "A", "(B)"), numbers with units or prose
    around them, words in `\\text{…}`. Rejected: text where math-verify finds nothing
    ("garbage]]", "yes"); an unparseable gold is a data error, never a free reward
    (SPEC §6). Wrap a gold in `$…$` to force letters to be read as variables ("$abc$").
    """
    parsed = _parse(answer.strip())
    if not parsed:
        raise ValueError(
            f"math-verify finds no math in the gold answer {answer!r} "
            "(write text answers as \\text{...})"
        )
    return parsed


@functools.lru_cache(maxsize=4096)
def _cached_gold(answer: str) -> tuple:
    # The G candidates of a prompt share its gold: parse it once per worker.
    return tuple(parse_gold(answer))


def _last_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{…}` (braces balanced), or None."""
    content, end = None, 0
    for match in _BOXED.finditer(text):
        if match.start() < end:
            continue  # nested in the previous box
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                content, end = text[match.end() : i], i
                break
        else:
            break  # unclosed: nothing after it can be closed either
    return content


def extract_answer(completion: str) -> str | None:
    """The completion's answer: the last `\\boxed{}`, else the last `<answer>` block."""
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed
    blocks = _ANSWER_BLOCK.findall(completion)
    return blocks[-1] if blocks else None


def _score(completion: str, answer: str | None) -> float:
    if answer is None:
        return 0.0  # a row with no gold (a code row in a mixed batch) earns nothing here
    gold = list(_cached_gold(answer))
    predicted = extract_answer(completion)
    if predicted is None or not predicted.strip():
        return 0.0
    try:
        parsed = _parse(predicted.strip())
        ok = bool(parsed) and math_verify.verify(gold, parsed, timeout_seconds=_timeout_s())
    except (Exception, TimeoutException):
        return 0.0  # the completion is at fault, never the trainer
    return 1.0 if ok else 0.0


def accuracy_reward(
    prompts: list[str], completions: list[str], answer: list[str | None], **_: object
) -> list[float]:
    """1.0 where the completion's answer equals the gold under math-verify, else 0.0."""
    del prompts
    return [_score(c, a) for c, a in zip(completions, answer, strict=True)]
