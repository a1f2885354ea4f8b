"""Code reward: the completion's last ```python block run against the row's tests.

The verdict is reached in the trainer's process from values the program cannot forge
without solving the task (README "Code rewards"); the test formats are in testcases.py.
- stdin/stdout cases: the program runs once per case with the input on stdin and passes
  when it exits 0 with the expected output (compared line by line, trailing whitespace and
  surrounding blank lines ignored). After a case times out the remaining cases count as
  failed, so a looping program costs one time limit, not one per case.
- call tests (asserts of a supported form, function cases): one sandbox run executes the
  program as `__main__` with empty stdin, then evaluates each call (harness.py) and reports
  its value; the expected values never enter the sandbox, and the comparison is made here
  (verdict.py). A program that raises or exits passes none of them; a call that hangs fails
  itself and every call after it.
- other test code scores 0, unless `trust_test_code`: then it runs in the program's process
  after the program, as before, and a program can forge its verdict.
Reward = fraction of tests passed; 0.0 with no python block or no tests (a row without a
`tests` value, such as a math row in a mixed batch, scores 0.0).
"""

import logging
import pathlib
import re
from typing import Any

from g2rpo_jax.rewards import verdict
from g2rpo_jax.rewards.sandbox import SandboxConfig, run_python
from g2rpo_jax.rewards.testcases import CallTest, CodeTest, IoCase, Step, Test, parse_tests

_log = logging.getLogger(__name__)
_DEFAULT_SANDBOX = SandboxConfig()
_FENCE = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HARNESS = pathlib.Path(__file__).with_name("harness.py").read_text()
UNTRUSTED = (
    "test code that is not a call-based assert scores 0 (it would run in the program's own "
    "process, where the program can forge its verdict; rewards.code.trust_test_code=true "
    "runs it anyway)"
)
_warned_untrusted = False


def extract_program(completion: str) -> str | None:
    """The body of the completion's last closed ```python (or ```py) block, or None."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else None


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _io_passed(program: str, cases: list[IoCase], sandbox: SandboxConfig) -> int:
    passed = 0
    for case in cases:
        result = run_python(program, case.input, sandbox)
        if result.timed_out:
            break
        output = result.stdout.decode("utf-8", errors="replace")
        passed += result.exit_code == 0 and _lines(output) == _lines(case.output)
    return passed


def _in_process_passed(
    program: str, tests: list[CallTest | CodeTest], sandbox: SandboxConfig
) -> int:
    """Tests passed in one run of the program followed by the tests' steps."""
    steps: list[Step] = []
    for test in tests:
        steps += test.calls if isinstance(test, CallTest) else [("code", test.source)]
    source = f"{_HARNESS}\nmain({program!r}, {steps!r})\n"
    report = verdict.read_report(run_python(source, "", sandbox).stdout, len(steps))
    passed, at = 0, 0
    for test in tests:
        if isinstance(test, CallTest):
            values = [verdict.call_value(line) for line in report[at : at + len(test.calls)]]
            passed += verdict.passes(test.check, values)
            at += len(test.calls)
        else:
            passed += report[at].get("passed") is True
            at += 1
    return passed


def _warn_untrusted_once() -> None:
    global _warned_untrusted
    if not _warned_untrusted:
        _warned_untrusted = True
        _log.warning("code reward: %s", UNTRUSTED)


def run_tests(
    program: str,
    tests: Any,
    sandbox: SandboxConfig = _DEFAULT_SANDBOX,
    *,
    trust_test_code: bool = False,
) -> float:
    """Fraction of `tests` (a format of testcases.py) that `program` passes."""
    parsed = parse_tests(tests)
    if not parsed:
        return 0.0
    io = [t for t in parsed if isinstance(t, IoCase)]
    in_process = [
        t
        for t in parsed
        if isinstance(t, CallTest) or (trust_test_code and isinstance(t, CodeTest))
    ]
    if len(io) + len(in_process) < len(parsed):
        _warn_untrusted_once()
    passed = _io_passed(program, io, sandbox)
    if in_process:
        passed += _in_process_passed(program, in_process, sandbox)
    return passed / len(parsed)


def check_tests(tests: Any, *, trust_test_code: bool = False) -> str | None:
    """For a data loader: raises ValueError or TypeError for malformed tests; returns a
    warning when some of them will score 0 for being untrusted test code."""
    parsed: list[Test] = parse_tests(tests)
    if not parsed:
        raise ValueError("no tests")
    untrusted = [i for i, t in enumerate(parsed) if isinstance(t, CodeTest)]
    if untrusted and not trust_test_code:
        return f"tests {untrusted} of {len(parsed)}: {UNTRUSTED}"
    return None


def code_reward(
    prompts: list[str],
    completions: list[str],
    tests: list[Any],
    *,
    sandbox: SandboxConfig = _DEFAULT_SANDBOX,
    trust_test_code: bool = False,
    **_: object,
) -> list[float]:
    """Fraction of the row's tests passed by the completion's last python block."""
    del prompts
    rewards = []
    for completion, row_tests in zip(completions, tests, strict=True):
        program = extract_program(completion)
        missing = program is None or row_tests is None  # no code, or a row of another task
        rewards.append(
            0.0
            if missing
            else run_tests(program, row_tests, sandbox, trust_test_code=trust_test_code)
        )
    return rewards
