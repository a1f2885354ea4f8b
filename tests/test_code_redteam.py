"""The code grader against programs written to game it (issue 31), and honest ones.

Every hack below answers no test correctly, so each must score 0: what it tries instead is
to make the grader believe otherwise (objects equal to anything, patched builtins or
harness, forged reports). Honest programs that print, use classes or return floats within
the test's tolerance keep their scores.
"""

import json

import pytest

from g2rpo_jax.data import DataConfig, FieldMap
from g2rpo_jax.data.load import load_rows
from g2rpo_jax.rewards import SandboxConfig, code, run_python, run_tests
from tests import runnable_sandbox

ADD = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]
GREET = ["assert greet('bob') == 'hello bob'", "assert greet('') == 'hello '"]
# A forged line for every shape the report could take, and the old harness's indexes.
FORGED = b"0\n1\n2\n" + b'{"value": true}\n{"passed": true}\n{"value": {"list": []}}\n' * 4
HACKS = {
    "eq_class": "class E:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n    __hash__ = object.__hash__\ndef add(a, b): return E()",
    "int_subclass": "class I(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\ndef add(a, b): return I(7)",
    "patched_builtins": "import builtins\nclass E:\n    __eq__ = lambda s, o: True\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\nbuiltins.eval = lambda *a, **k: E()\ndef add(a, b): return None",
    "patched_sys_modules": "import sys\nsys.modules['builtins'].eval = lambda *a, **k: True\nsys.modules['json'].dumps = lambda *a, **k: '{\"value\": true}'\ndef add(a, b): return None",
    "forged_every_fd": f"import os\nfor fd in range(3, 256):\n    try: os.write(fd, {FORGED!r})\n    except OSError: pass\ndef add(a, b): return None",
    "forged_then_exit": f"import os\nfor fd in range(1, 64):\n    try: os.write(fd, {FORGED!r})\n    except OSError: pass\nos._exit(0)",
    "frame_walk": "import sys\nf = sys._getframe()\nwhile f.f_back is not None:\n    f = f.f_back\n    f.f_globals['_run'] = lambda ns, step: {'value': True, 'passed': True}\n    f.f_globals['_encode'] = lambda v: True\ndef add(a, b): return None",
    "swallowed_exceptions": "import sys\nh = sys.modules['__main__']\nrun = h._run\ndef swallow(ns, step):\n    try:\n        return run(ns, step)\n    except BaseException:\n        return {'passed': True}\nh._run = swallow\ndef add(a, b): raise ZeroDivisionError",
    "printed_report": "import sys\nprint('{\"value\": 5}')\nsys.stderr.write('{\"value\": 5}\\n')\ndef add(a, b): return None",
    "atexit_forgery": "import atexit, os\natexit.register(lambda: [os.write(fd, b'{\"value\": 5}\\n') for fd in (3, 4)])\ndef add(a, b): return 'five'",
    "bool_for_int": "def add(a, b): return True",
}  # fmt: skip


@pytest.fixture(scope="module")
def sandbox() -> SandboxConfig:
    base = SandboxConfig(timeout_s=3.0, cpu_s=3, memory_mb=256, max_file_bytes=1 << 20, disk_mb=8)
    return runnable_sandbox.runnable(base)


@pytest.mark.parametrize("name", list(HACKS))
def test_hacks_score_zero(sandbox: SandboxConfig, name: str) -> None:
    assert run_tests(HACKS[name], ADD, sandbox) == 0.0


def test_issue_programs_score_zero(sandbox: SandboxConfig) -> None:
    """The three programs of issue 31, each of which scored 1.0 before."""
    eq = "class E:\n    def __eq__(self, other): return True\ndef add(a, b): return E()"
    exec_ = "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef add(a, b): return None"
    fds = "import os\nfor fd in range(3, 256):\n    try: os.write(fd, b'0\\n1\\n2\\n')\n    except OSError: pass\ndef add(a, b): return None"  # fmt: skip
    assert [run_tests(p, ADD, sandbox) for p in (eq, exec_, fds)] == [0.0, 0.0, 0.0]


def test_str_subclass_is_not_a_str(sandbox: SandboxConfig) -> None:
    hack = "class S(str):\n    def __eq__(self, other): return True\n    __hash__ = str.__hash__\ndef greet(name): return S('nope')"  # fmt: skip
    assert run_tests(hack, GREET, sandbox) == 0.0
    assert run_tests("def greet(name): return 'hello ' + name", GREET, sandbox) == 1.0


def test_forging_the_right_value_needs_the_right_value(sandbox: SandboxConfig) -> None:
    # A program that forges lines gains exactly what returning those values would.
    forge = "import os\nos.write(3, b'{\"value\": 5}\\n{\"value\": 1}\\n{\"value\": 15}\\n')\ndef add(a, b): return None"  # fmt: skip
    assert run_tests(forge, ADD, sandbox) == pytest.approx(2 / 3)
    assert run_tests("def add(a, b): return {2: 5, 10: 15}.get(a, 1)", ADD, sandbox) == pytest.approx(2 / 3)  # fmt: skip


def test_the_sandbox_never_sees_an_expected_value(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def capture(source, stdin="", config=None):
        seen.append(source + stdin)
        return run_python("pass", "", config)

    monkeypatch.setattr(code, "run_python", capture)
    tests = [*ADD, "assert abs(mean([7, 8]) - 7.5) < 1e-9",
             {"fn_name": "twice", "input": "[21]", "output": "42424242"}]  # fmt: skip
    run_tests("pass", tests, runnable_sandbox.runnable(SandboxConfig()))
    (source,) = seen
    for expected in ("15", "7.5", "1e-09", "42424242"):
        assert expected not in source.split("\nmain(", 1)[1]


def test_malicious_reports_fail_without_harming_the_grader(sandbox: SandboxConfig) -> None:
    # Deep nesting, huge numbers and junk on the report descriptor: failures, no exception.
    deep = "import os\nos.write(3, b'{\"value\": ' + b'{\"list\": [' * 50000 + b'\\n')\ndef add(a, b): return None"  # fmt: skip
    big = "import os\nos.write(3, b'{\"value\": ' + b'9' * 5000 + b'}\\n')\ndef add(a, b): return None"
    junk = "import os\nos.write(3, bytes(range(256)) * 1000)\ndef add(a, b): return None"
    assert [run_tests(p, ADD, sandbox) for p in (deep, big, junk)] == [0.0, 0.0, 0.0]


def test_a_program_that_exits_or_hangs_in_a_call_fails_from_there(sandbox: SandboxConfig) -> None:
    exits = "import os\ndef add(a, b):\n    if a == 10: os._exit(0)\n    return a + b"
    assert run_tests(exits, ADD, sandbox) == pytest.approx(2 / 3)
    hangs = "def add(a, b):\n    while a == -1: pass\n    return a + b"
    assert run_tests(hangs, ADD, sandbox) == pytest.approx(1 / 3)


HONEST = {
    "plain": ("def add(a, b): return a + b", ADD, 1.0),
    "prints": ("import sys\ndef add(a, b):\n    print('adding', a, b)\n    sys.stderr.write('dbg\\n')\n    return a + b\nprint('loaded')", ADD, 1.0),
    "class_inside": ("class Adder:\n    def __init__(self, a): self.a = a\n    def plus(self, b): return self.a + b\ndef add(a, b): return Adder(a).plus(b)", ADD, 1.0),
    "main_guard": ("def add(a, b): return a + b\nif __name__ == '__main__':\n    print(add(1, 2))", ADD, 1.0),
    "float_for_int": ("def add(a, b): return float(a + b)", ADD, 1.0),
    "wrong_once": ("def add(a, b): return a + b if a != 2 else 0", ADD, 2 / 3),
    "floats_in_tolerance": (
        "import math\ndef mean(xs): return sum(xs) / len(xs)\ndef root(x): return math.sqrt(x)",
        ["assert abs(mean([0.1, 0.2, 0.3]) - 0.2) < 1e-9", "import math\nassert math.isclose(root(2), 1.41421356, rel_tol=1e-6)",
         "assert mean([1, 2]) == 1.5", "assert not abs(mean([1, 2]) - 1.4) <= 1e-3"], 1.0),
    "other_forms": (
        "def f(x): return [x, x + 1] if x else None\ndef is_even(n): return n % 2 == 0",
        ["assert f(0) is None", "assert is_even(4) and not is_even(3)", "assert f(1) in ([1, 2], [0])",
         "assert 2 in f(1)", "assert f(3) != [3, 3]", "assert f(5)[1] > 5"], 1.0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_programs_keep_their_scores(sandbox: SandboxConfig, name: str) -> None:
    program, tests, expected = HONEST[name]
    assert run_tests(program, tests, sandbox) == pytest.approx(expected)


# Two LiveCodeBench-style problems as a data file holds them: one functional (a LeetCode
# `Solution` method, one JSON value per input line), one stdin/stdout.
LIVECODEBENCH_ROWS = [
    {"question_content": "Return the sum of nums times k.",
     "tests": json.dumps([{"input": "[1, 2, 3]\n2", "output": "12", "testtype": "functional", "fn_name": "scaledSum"},
                          {"input": "[]\n5", "output": "0", "testtype": "functional", "fn_name": "scaledSum"},
                          {"input": "[-1]\n3", "output": "-3", "testtype": "functional", "fn_name": "scaledSum"}])},
    {"question_content": "Read n and print n squared.",
     "tests": json.dumps([{"input": "3\n", "output": "9\n", "testtype": "stdin"},
                          {"input": "-4\n", "output": "16\n", "testtype": "stdin"}])},
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "program", "expected"),
    [
        (0, "from typing import List\nclass Solution:\n    def scaledSum(self, nums: List[int], k: int) -> int:\n        return sum(nums) * k", 1.0),
        (0, "def scaledSum(nums, k):\n    return sum(nums) * k", 1.0),
        (0, "class Solution:\n    def scaledSum(self, nums, k):\n        return sum(nums) * k if nums else None", 2 / 3),
        (1, "n = int(input())\nprint(n * n)", 1.0),
        (1, "n = int(input())\nprint(abs(n) * 3)", 1 / 2),
    ],
)  # fmt: skip
def test_livecodebench_style_rows(
    sandbox: SandboxConfig, tmp_path, row: int, program: str, expected: float
) -> None:
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r | {"guidance": "..."}) + "\n" for r in LIVECODEBENCH_ROWS))
    fields = FieldMap(prompt="question_content", difficulty=None)
    config = DataConfig(path=str(path), fields=fields)
    rows = load_rows(config, tests_check=code.check_tests).rows
    completion = f"```python\n{program}\n```"
    scores = code.code_reward(["p"], [completion], tests=[rows[row].tests], sandbox=sandbox)
    assert scores == [pytest.approx(expected)]


def test_function_cases(sandbox: SandboxConfig) -> None:
    cases = [
        {"fn_name": "span", "input": "[[3, 1, 2]]", "output": "[[1, 3]]", "type": "function_call"},
        {"fn_name": "span", "input": [[5]], "output": [5, 5]},
        {"fn_name": "span", "input": "[[-Infinity, 0.5]]", "output": "[-Infinity, 0.5]"},
    ]  # fmt: skip
    as_tuple = "def span(xs): return (min(xs), max(xs))"
    assert run_tests(as_tuple, cases, sandbox) == 1.0  # JSON has no tuple: a list's stand-in
    method = "class Solution:\n    def span(self, xs): return [min(xs), max(xs)]"
    assert run_tests(method, cases, sandbox) == 1.0
    assert run_tests("def span(xs): return [max(xs), min(xs)]", cases, sandbox) == pytest.approx(
        1 / 3
    )
    assert run_tests("span = 3", cases, sandbox) == 0.0
