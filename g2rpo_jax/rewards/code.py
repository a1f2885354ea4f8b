"""Code reward: the completion's last ```python block run against the row's tests.

A row's `tests` is one of:
- a list of {"input": str, "output": str} cases: the program runs once per case with the
  input on stdin and passes when it exits 0 with the expected output (compared line by
  line, trailing whitespace and surrounding blank lines ignored). After a case times out
  the remaining cases count as failed, so a looping program costs one time limit, not one
  per case;
- a string of test code (one test), or a list of statements such as asserts (one test
  each): the program runs first, as `__main__` with empty stdin, and must finish without
  an exception or exit; then each test runs in its namespace. A test that hangs fails
  itself and every test after it.
A string holding a JSON list (as some datasets store their cases) is decoded first: run as
Python it would be a literal that always passes.
Reward = fraction of tests passed; 0.0 with no python block or no tests (a row without a
`tests` value, such as a math row in a mixed batch, scores 0.0).
"""

import json
import re
from typing import Any

from g2rpo_jax.rewards.sandbox import SandboxConfig, run_python

_DEFAULT_SANDBOX = SandboxConfig()
_FENCE = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
# The program's own output goes to /dev/null, so printing digits cannot pose as a report; the
# harness reports each passed test's index on a private copy of stdout. (Code that writes to
# that descriptor on purpose could forge it: the sandbox contains harm, not every hack.)
_HARNESS = """\
import os as _os
_report = _os.dup(1)
_null = _os.open(_os.devnull, _os.O_WRONLY)
_os.dup2(_null, 1)
_namespace = {{"__name__": "__main__", "__builtins__": __builtins__}}
exec(compile({program!r}, "solution.py", "exec"), _namespace)
for _index, _test in enumerate({tests!r}):
    try:
        exec(compile(_test, f"test_{{_index}}.py", "exec"), _namespace)
    except BaseException:
        continue
    _os.write(_report, f"{{_index}}\\n".encode())
"""


def extract_program(completion: str) -> str | None:
    """The body of the completion's last closed ```python (or ```py) block, or None."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else None


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _io_fraction(program: str, cases: list[dict[str, str]], sandbox: SandboxConfig) -> float:
    passed = 0
    for case in cases:
        result = run_python(program, case["input"], sandbox)
        if result.timed_out:
            break
        output = result.stdout.decode("utf-8", errors="replace")
        passed += result.exit_code == 0 and _lines(output) == _lines(case["output"])
    return passed / len(cases)


def _assert_fraction(program: str, tests: list[str], sandbox: SandboxConfig) -> float:
    result = run_python(_HARNESS.format(program=program, tests=tests), "", sandbox)
    reported = result.stdout.decode("ascii", errors="replace").split()
    passed = {int(i) for i in reported if i.isdigit() and int(i) < len(tests)}
    return len(passed) / len(tests)


def _decode_json_list(text: str) -> list | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def run_tests(program: str, tests: Any, sandbox: SandboxConfig = _DEFAULT_SANDBOX) -> float:
    """Fraction of `tests` (a format of the module docstring) that `program` passes."""
    if isinstance(tests, str):
        tests = _decode_json_list(tests) or [tests]
    if not isinstance(tests, list | tuple):
        raise TypeError(f"tests must be a string or a list, not {type(tests).__name__}")
    if not tests:
        return 0.0
    if all(isinstance(t, str) for t in tests):
        if not all(t.strip() for t in tests):
            raise ValueError("an empty test would always pass")
        return _assert_fraction(program, list(tests), sandbox)
    if all(isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests):
        return _io_fraction(program, list(tests), sandbox)
    raise TypeError("tests must all be strings or all be {'input', 'output'} dicts")


def code_reward(
    prompts: list[str],
    completions: list[str],
    tests: list[Any],
    *,
    sandbox: SandboxConfig = _DEFAULT_SANDBOX,
    **_: object,
) -> list[float]:
    """Fraction of the row's tests passed by the completion's last python block."""
    del prompts
    rewards = []
    for completion, row_tests in zip(completions, tests, strict=True):
        program = extract_program(completion)
        missing = program is None or row_tests is None  # no code, or a row of another task
        rewards.append(0.0 if missing else run_tests(program, row_tests, sandbox))
    return rewards
