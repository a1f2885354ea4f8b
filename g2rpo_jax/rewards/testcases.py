"""A row's `tests`, parsed in the trainer into what can be judged outside the program.

Accepted forms (a string holding a JSON list or object is decoded first):
- a list of case dicts:
  - stdin/stdout `{"input": str, "output": str}` (`"type": "stdin_stdout"`, `"testtype":
    "stdin"` and a null `fn_name` may come along);
  - function call `{"fn_name": str, "input": arguments, "output": value}`. With `"type":
    "function_call"` (verifiable-coding-problems, TACO) the input is a JSON list of the
    arguments and an output stored as a one-element list also accepts its element; with
    `"testtype": "functional"` (LiveCodeBench) the input holds one JSON value per line.
    A string output is JSON. The call resolves `fn_name` among the program's globals, else
    as a method of a fresh `Solution()`;
- test code: one string, or a list of strings, one test each (mixed with case dicts is fine);
- `{"language", "test_cases": [...]}` (verification_info; the language must be Python), or
  TACO's `{"inputs": [...], "outputs": [...], "fn_name"?}`.

Test code is a *call test* when every statement is an import or an `assert` whose condition
is built from `==`, `!=`, `is`/`is not` None/True/False, `in`/`not in`, `<`, `<=`, `>`,
`>=`, `abs(A - B) < tol`, `math.isclose(A, B, ...)`, `not`, `and`, `or` and bare truth,
where in each comparison one side is a literal (the expected value) and the other the call:
an expression without comparisons, truth tests, dunder attributes, methods of non-string
literals or names the test imports. The child evaluates only the calls (the imports are not
run: a call may not use them); the rest stays here. Any other test code is a `CodeTest`,
run in the program's own process only under `trust_test_code` (its verdict can then be
forged). A call is evaluated as written, so one that embeds the answer (`f(2) - 5 == 0`)
shows it to the program: write `f(2) == 5`.
"""

import ast
import dataclasses
import json
from typing import Any

from g2rpo_jax.rewards.verdict import (
    All,
    Check,
    Close,
    Contains,
    Either,
    Equal,
    Identical,
    Leaf,
    Negation,
    Order,
    Truth,
)

Step = tuple[
    str, ...
]  # what the child runs: ("expr", source), ("fn", name, args), ("code", source)
_NOT_LITERAL = object()
_ORDER_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
_STDIN_TYPES = (None, "stdin_stdout", "stdin")
_CALL_TYPES = ("function_call", "functional")


@dataclasses.dataclass(frozen=True)
class IoCase:
    """The program runs with `input` on stdin; its stdout must match `output`."""

    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class CallTest:
    """Passes when every call returns plain data and `check` holds on the values."""

    calls: tuple[Step, ...]
    check: Check


@dataclasses.dataclass(frozen=True)
class CodeTest:
    """Test code the grader cannot judge outside the program."""

    source: str


Test = IoCase | CallTest | CodeTest


def parse_tests(tests: Any) -> list[Test]:
    """The tests of a row; TypeError or ValueError naming the problem for a malformed one."""
    if isinstance(tests, str):
        decoded = _decode_json(tests)
        tests = tests if decoded is None else decoded
    if isinstance(tests, dict):
        tests = _cases_of(tests)
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list | tuple):
        raise TypeError(f"tests must be a string, a list or an object, not {type(tests).__name__}")
    return [_parse_one(i, test) for i, test in enumerate(tests)]


def _decode_json(text: str) -> list | dict | None:
    """The list or object a string holds as JSON (run as Python, a list of cases would be a
    literal that always passes), else None."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list | dict) else None


def _cases_of(tests: dict) -> list:
    if "test_cases" in tests:
        language = tests.get("language", "python")
        if not isinstance(language, str) or language.lower() not in ("python", "python3"):
            raise ValueError(f"tests in {language!r}, not Python")
        return _list(tests["test_cases"], "test_cases")
    if {"inputs", "outputs"} <= tests.keys():
        inputs, outputs = _list(tests["inputs"], "inputs"), _list(tests["outputs"], "outputs")
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        pairs = zip(inputs, outputs, strict=True)
        fn_name = tests.get("fn_name")
        if fn_name is None:
            return [{"input": _text(i), "output": _text(o)} for i, o in pairs]
        return [
            {"fn_name": fn_name, "input": i, "output": o, "type": "function_call"} for i, o in pairs
        ]
    raise ValueError(f"an object of tests needs test_cases, or inputs and outputs: {tests!r:.80}")


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, not {type(value).__name__}")
    return value


def _text(value: Any) -> Any:
    """TACO keeps some stdin/stdout cases as lists of lines."""
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value)
    return value


def _parse_one(index: int, test: Any) -> Test:
    if isinstance(test, str):
        if not test.strip():
            raise ValueError(f"test {index} is empty (an empty test would always pass)")
        return parse_code(test)
    if isinstance(test, dict):
        try:
            return _parse_case(test)
        except (ValueError, TypeError) as e:
            raise type(e)(f"test case {index}: {e}") from None
    raise TypeError(f"test {index} is a {type(test).__name__}, not test code or a case dict")


def _parse_case(case: dict) -> IoCase | CallTest:
    missing = {"input", "output"} - case.keys()
    if missing:
        raise TypeError(f"missing {sorted(missing)} in {case!r:.80}")
    kind = case.get("type", case.get("testtype"))
    fn_name = case.get("fn_name")
    if kind in _STDIN_TYPES and (fn_name is None or kind is not None):
        if not isinstance(case["input"], str) or not isinstance(case["output"], str):
            raise TypeError("a stdin/stdout case's input and output must be strings")
        return IoCase(case["input"], case["output"])
    if kind is not None and kind not in _CALL_TYPES:
        raise ValueError(f"unknown case type {kind!r}")
    if not isinstance(fn_name, str) or not fn_name.isidentifier():
        raise ValueError(f"a function case needs fn_name, an identifier: {fn_name!r:.40}")
    args = _arguments(case["input"], one_per_line=kind == "functional")
    expected = case["output"]
    if isinstance(expected, str):
        expected = _json(expected, "output")
    options = (expected,)
    if kind == "function_call" and isinstance(expected, list) and len(expected) == 1:
        options = (expected, expected[0])
    return CallTest(calls=(("fn", fn_name, tuple(args)),), check=Leaf(0, Equal(options, True)))


def _arguments(value: Any, one_per_line: bool) -> list:
    if isinstance(value, str):
        if one_per_line:
            return [_json(line, "input") for line in value.split("\n") if line.strip()]
        value = _json(value, "input")
    if not isinstance(value, list):
        raise ValueError(f"input must be a list of arguments, not {value!r:.60}")
    return value


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"{name} is not JSON: {text!r:.60}") from None


# --- Test code ------------------------------------------------------------------------------


def parse_code(source: str) -> CallTest | CodeTest:
    """A call test if every statement is an import or a supported assert, else a CodeTest."""
    try:
        module = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"test code does not parse: {e.msg} (line {e.lineno})") from None
    imports = [s for s in module.body if isinstance(s, ast.Import | ast.ImportFrom)]
    asserts = [s for s in module.body if isinstance(s, ast.Assert)]
    imported = {(a.asname or a.name).split(".")[0] for s in imports for a in s.names}
    if not asserts or len(imports) + len(asserts) != len(module.body) or "*" in imported:
        return CodeTest(source)
    parser = _Parser(imported)
    checks = [parser.condition(s.test) for s in asserts]
    if any(c is None for c in checks):
        return CodeTest(source)
    check = checks[0] if len(checks) == 1 else All(tuple(checks))
    return CallTest(tuple(parser.calls), check)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


class _Parser:
    """Turns assert conditions into checks, collecting the calls the child must evaluate."""

    def __init__(self, imported: set[str]):
        self.imported = imported  # names the test's imports bind: library judges
        self.calls: list[Step] = []

    def call(self, node: ast.expr) -> int | None:
        """The index of a call expression for the child, or None where evaluating it there
        could judge (a comparison, truth test or library function applied to the program's
        objects) or it involves no program at all (a literal)."""
        if _literal(node) is not _NOT_LITERAL:
            return None
        if any(self._judges(inner) for inner in ast.walk(node)):
            return None
        self.calls.append(("expr", ast.unparse(node)))
        return len(self.calls) - 1

    def _judges(self, node: ast.AST) -> bool:
        match node:
            case ast.Compare() | ast.BoolOp() | ast.IfExp() | ast.NamedExpr():
                return True
            case ast.UnaryOp(op=ast.Not()) | ast.comprehension(ifs=[_, *_]):
                return True
            case ast.Attribute(attr=attr) if attr.startswith("__"):
                return True  # x.__eq__(5): a comparison by name
            case ast.Name(id=name):
                return name in self.imported
            case ast.Call(func=ast.Attribute(value=receiver)):
                # [5].count(x), {5: 1}.get(x) compare; str methods read the raw characters.
                value = _literal(receiver)
                return value is not _NOT_LITERAL and not isinstance(value, str | bytes)
        return False

    def leaf(self, node: ast.expr, predicate: Any) -> Leaf | None:
        index = self.call(node)
        return None if index is None else Leaf(index, predicate)

    def condition(self, node: ast.expr) -> Check | None:
        match node:
            case ast.BoolOp(op=op, values=values):
                parts = [self.condition(v) for v in values]
                if any(p is None for p in parts):
                    return None
                return All(tuple(parts)) if isinstance(op, ast.And) else Either(tuple(parts))
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                part = self.condition(operand)
                return None if part is None else Negation(part)
            case ast.Compare(left=left, ops=[op], comparators=[right]):
                return self.compare(left, op, right)
            case ast.Call(func=func) if _name(func) == "isclose":
                return self.isclose(node)
        return self.leaf(node, Truth())

    def compare(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> Check | None:
        if isinstance(op, ast.Lt | ast.LtE) and _is_abs_difference(left):
            return self.abs_close(left.args[0], right, strict=isinstance(op, ast.Lt))
        left_value, right_value = _literal(left), _literal(right)
        if (left_value is _NOT_LITERAL) == (right_value is _NOT_LITERAL):
            return None  # both literal (the program plays no part) or neither (no expected)
        literal_left = left_value is not _NOT_LITERAL
        call, expected = (right, left_value) if literal_left else (left, right_value)
        match op:
            case ast.Eq() | ast.NotEq():
                check = self.leaf(call, Equal((expected,)))
                return check if check is None or isinstance(op, ast.Eq) else Negation(check)
            case ast.Is() | ast.IsNot() if expected is None or type(expected) is bool:
                check = self.leaf(call, Identical(expected))
                return check if check is None or isinstance(op, ast.Is) else Negation(check)
            case ast.In() | ast.NotIn():
                if literal_left:
                    check = self.leaf(call, Contains(expected))
                elif isinstance(expected, list | tuple | set | frozenset):
                    check = self.leaf(call, Equal(tuple(expected)))
                else:
                    return None
                return check if check is None or isinstance(op, ast.In) else Negation(check)
        symbol = _ORDER_OPS.get(type(op))
        if symbol is None or not (_is_number(expected) or isinstance(expected, str)):
            return None
        return self.leaf(call, Order(_FLIPPED[symbol] if literal_left else symbol, expected))

    def abs_close(self, difference: ast.BinOp, bound: ast.expr, strict: bool) -> Check | None:
        tolerance = _literal(bound)
        a, b = _literal(difference.left), _literal(difference.right)
        call, expected = (difference.right, a) if b is _NOT_LITERAL else (difference.left, b)
        if not (_is_number(tolerance) and _is_number(expected)):
            return None
        return self.leaf(call, Close(expected, rel_tol=0.0, abs_tol=tolerance, strict=strict))

    def isclose(self, node: ast.Call) -> Check | None:
        if len(node.args) != 2:
            return None
        tolerances = {k.arg: _literal(k.value) for k in node.keywords}
        if not set(tolerances) <= {"rel_tol", "abs_tol"} or not all(
            _is_number(t) for t in tolerances.values()
        ):
            return None
        a, b = (_literal(arg) for arg in node.args)
        call, expected = (node.args[1], a) if b is _NOT_LITERAL else (node.args[0], b)
        if not _is_number(expected):
            return None
        return self.leaf(call, Close(expected, **tolerances))


def _name(func: ast.expr) -> str | None:
    """`isclose` for `isclose` and `math.isclose`; None for anything else."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.attr if func.value.id == "math" else None
    return None


def _is_abs_difference(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "abs"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.BinOp)
        and isinstance(node.args[0].op, ast.Sub)
    )
