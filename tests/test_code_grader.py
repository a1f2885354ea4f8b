"""The code grader's trainer side, without a sandbox: which tests it judges itself (and what
the child is sent), the test formats of hub code sets, and comparing decoded values."""

import json
import math

import pytest

from g2rpo_jax.rewards import code, harness, verdict
from g2rpo_jax.rewards.testcases import CallTest, CodeTest, IoCase, parse_code, parse_tests


@pytest.mark.parametrize(
    ("source", "calls"),
    [
        ("assert add(2, 3) == 5", ["add(2, 3)"]),
        ("assert 5 == add(2, 3), 'message'", ["add(2, 3)"]),
        ("assert f(1) == 2 and f(2) != 3 or g() is None", ["f(1)", "f(2)", "g()"]),
        ("assert not is_prime(8)", ["is_prime(8)"]),
        ("assert abs(mean(xs) - 1.5) < 1e-6", ["mean(xs)"]),
        ("import math\nassert math.isclose(1.5, root(2), abs_tol=1e-3)", ["root(2)"]),
        ("from math import isclose\nassert isclose(root(2), 1.5)", ["root(2)"]),
        ("assert Solution().twoSum([2, 7], 9) in ([0, 1], [1, 0])", ["Solution().twoSum([2, 7], 9)"]),
        ("assert 'ab' in f('x')\nassert 0 < g(1) <= 3 or True", None),  # a chained comparison
        ("assert ' '.join(words(3)) == 'a b c'", ["' '.join(words(3))"]),
    ],
)  # fmt: skip
def test_asserts_become_calls_without_their_expected_values(source, calls) -> None:
    parsed = parse_code(source)
    if calls is None:
        assert isinstance(parsed, CodeTest)
    else:
        assert isinstance(parsed, CallTest)
        assert [c[1] for c in parsed.calls] == calls


@pytest.mark.parametrize(
    "source",
    [
        "def check(f):\n    assert f(2) == 4\ncheck(square)",  # arbitrary code
        "x = square(2)\nassert x == 4",
        "assert 1 == 1",  # no program involved
        "assert square(2) == square(-2)",  # no expected value
        "assert (square(2) == 4) == True",  # the comparison would run in the program
        "assert square(2).__eq__(4)",
        "assert [4].count(square(2)) == 1",
        "import operator\nassert operator.eq(square(2), 4)",
        "assert [square(i) for i in range(3) if i] == [1, 4]",
        "from math import *\nassert square(2) == 4",
        "assert f(x) if x else True",
    ],
)
def test_code_that_could_judge_in_the_program_is_not_a_call_test(source: str) -> None:
    assert isinstance(parse_code(source), CodeTest)


def _check(source: str, *values) -> bool:
    test = parse_code(source)
    assert isinstance(test, CallTest)
    return verdict.passes(test.check, list(values))


def test_checks_hold_as_python_would_on_plain_data() -> None:
    assert _check("assert f() == 5", 5) and _check("assert f() == 5", 5.0)
    assert not _check("assert f() == 1", True)  # bool is not a number here
    assert not _check("assert f() == (1, 2)", [1, 2])
    assert _check("assert f() != 3", 4) and not _check("assert f() != 3", 3)
    assert _check("assert f() is True", True) and not _check("assert f() is True", 1)
    assert _check("assert f()", [0]) and not _check("assert f()", "")
    assert _check("assert abs(f() - 0.3) < 1e-9", 0.1 + 0.2)
    assert not _check("assert f() == 0.3", 0.1 + 0.2)  # floats are exact without a tolerance
    assert not _check("assert abs(f() - 1) < 1", math.nan)
    assert _check("assert f() > 2 and f2() in {1, 2}", 3, 2)
    assert _check("assert 'b' in f()", "abc") and _check("assert 2 in f()", (1, 2))
    assert not _check("assert 2 in f()", [True, 2.5])


def test_an_error_fails_the_test_even_under_not() -> None:
    assert not _check("assert not f() > 3", "text")  # Python raises TypeError: the test fails
    assert not _check("assert not abs(f() - 1) < 0.5", True)
    assert not _check("assert f() != 3", verdict.UNAVAILABLE)
    assert not _check("assert not f()", verdict.UNAVAILABLE)


@pytest.mark.parametrize(
    "value",
    [None, True, -7, 2**100, 1.5, -0.0, math.inf, -math.inf, 1e300, 5e-324, "é\n\x00\x1f\"\\",
     "\ud800 lone surrogate", "𝄞", b"\x00\xff", [1, (2, [3])], {"a": {1: None}, (1, 2): frozenset({3})},
     {1, 2}, 1 + 2j, [], {}],
)  # fmt: skip
def test_values_round_trip_through_the_report(value) -> None:
    line = ('{"value": ' + harness._encode(value) + "}").encode("utf-8", "backslashreplace")
    (decoded,) = [verdict.call_value(r) for r in verdict.read_report(line, 1)]
    assert verdict.same(decoded, value) and type(decoded) is type(value)


def test_objects_are_not_plain_data() -> None:
    class Int(int):
        pass

    for value in (object(), Int(3), [1, Int(2)], {"a": object()}, print):
        with pytest.raises(TypeError):
            harness._encode(value)
    loop: list = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        harness._encode(loop)


@pytest.mark.parametrize(
    "line",
    [b"", b"not json", b"5", b'{"value": {"object": 1}}', b'{"value": {"set": [{"list": []}]}}',
     b'{"value": 1, "error": "x"}', b'{"error": "ValueError"}', b'{"passed": true}',
     b'{"value": ' + b"[" * 100000, b'{"value": ' + b'{"list": [' * 5000 + b"]}" * 5000 + b"}",
     b'{"value": {"dict": [[{"list": []}, 1]]}}', b'{"value": {"bytes": "zz"}}'],
)  # fmt: skip
def test_malformed_report_lines_are_unavailable(line: bytes) -> None:
    (value,) = [verdict.call_value(r) for r in verdict.read_report(line, 1)]
    assert value is verdict.UNAVAILABLE


def test_report_lines_are_positional() -> None:
    report = verdict.read_report(b'{"value": 1}\ngarbage\n{"value": 3}\n{"value": 4}\n', 3)
    assert [verdict.call_value(r) for r in report] == [1, verdict.UNAVAILABLE, 3]
    assert verdict.read_report(b"", 2) == [{}, {}]
    assert verdict.read_report(b"\n" * (4 << 20), 2) == [{}, {}]


def test_hub_case_formats() -> None:
    info = {"language": "python", "test_cases": [
        {"input": "1 2\n", "output": "3\n", "type": "stdin_stdout", "fn_name": None},
        {"input": "[[1, 2], 3]", "output": "[[1, 2, 3]]", "type": "function_call", "fn_name": "push"},
    ]}  # fmt: skip
    io, call = parse_tests(json.dumps(info))
    assert io == IoCase("1 2\n", "3\n")
    assert call.calls == (("fn", "push", ([1, 2], 3)),)
    # TACO stores outputs wrapped in a list; a tuple answers for the list JSON would give.
    assert verdict.passes(call.check, [[1, 2, 3]]) and verdict.passes(call.check, [(1, 2, 3)])
    assert not verdict.passes(call.check, [[1, 2]])
    taco = {"fn_name": "inc", "inputs": [[1], [5]], "outputs": [[2], [6]]}
    assert [t.calls for t in parse_tests(taco)] == [
        (("fn", "inc", (1,)),),
        (("fn", "inc", (5,)),),
    ]
    stdin_taco = parse_tests({"inputs": ["1\n", ["2", "3"]], "outputs": ["1\n", "5\n"]})
    assert stdin_taco == [IoCase("1\n", "1\n"), IoCase("2\n3", "5\n")]
    (lcb,) = parse_tests([{"input": "[1, 2]\n\"x\"", "output": "3", "testtype": "functional",
                           "fn_name": "f"}])  # fmt: skip
    assert lcb.calls == (("fn", "f", ([1, 2], "x")),)


@pytest.mark.parametrize(
    ("tests", "error"),
    [
        ({"language": "cpp", "test_cases": []}, "not Python"),
        ([{"input": "1", "output": "2", "type": "function_call"}], "fn_name"),
        ([{"input": "[1]", "output": "not json", "fn_name": "f"}], "not JSON"),
        ([{"input": "1", "output": "2", "type": "interactive"}], "unknown case type"),
        ([{"input": 1, "output": "2"}], "strings"),
        ({"inputs": [1, 2], "outputs": [1]}, "2 inputs but 1 outputs"),
        (["assert f(1) == 2", "assert ("], "does not parse"),
        (["assert f(1) == 2", " "], "empty"),
        (3, "not int"),
    ],
)
def test_malformed_tests_are_named(tests, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        code.check_tests(tests)


def test_check_tests_warns_about_untrusted_code() -> None:
    assert code.check_tests(["assert f(1) == 2"]) is None
    warning = code.check_tests(["assert f(1) == 2", "for i in range(3):\n    assert f(i) == i + 1"])
    assert warning is not None and "tests [1] of 2" in warning and "trust_test_code" in warning
    assert code.check_tests(["x = 1\nassert f(x) == 2"], trust_test_code=True) is None
