"""The grader's verdict on call-based tests, reached in the trainer's process from data alone.

The sandboxed process reports each call's result as a tagged JSON line (harness.py). Here
those lines are decoded into plain Python values of exact builtin types, and a test's check
(the part of its assert the child never saw: the expected value, the comparison, the
tolerance) is evaluated on them. A line that is missing, malformed, oversized or not of our
encoding makes its call unavailable, and a test with an unavailable call fails. The program
can write lines of its own, but a line it forges carries only a value, so it passes a check
only where the value it names is right: forging gains nothing a solution would not.

Equality is Python's on plain data with two exceptions: `bool` is not a number (True ≠ 1),
and where the expected value came from JSON (a function case) a tuple equals the list it
would serialize to. Floats compare exactly unless the test states a tolerance.
"""

import dataclasses
import json
import math
import operator
from collections.abc import Callable
from typing import Any

_SEQUENCES: dict[str, type] = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_NUMBERS = (int, float, complex)
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Unavailable:
    """A call that gave no plain-data value: it raised, the run ended, or its line was bad."""


UNAVAILABLE = Unavailable()


def decode_value(tree: Any) -> Any:
    """The value a tagged JSON tree (harness._encode) stands for; ValueError if not one."""
    kind = type(tree)
    if tree is None or kind is bool or kind is int or kind is float or kind is str:
        return tree
    if kind is not dict or len(tree) != 1:
        raise ValueError(f"not a tagged value: {tree!r:.60}")
    ((tag, payload),) = tree.items()
    if tag in _SEQUENCES and type(payload) is list:
        # TypeError (an unhashable set element) is turned into ValueError by the caller.
        return _SEQUENCES[tag](decode_value(item) for item in payload)
    if tag == "dict" and type(payload) is list and all(_is_pair(p) for p in payload):
        return {decode_value(k): decode_value(v) for k, v in payload}
    if tag == "bytes" and type(payload) is str:
        return bytes.fromhex(payload)
    if tag == "complex" and _is_pair(payload) and all(type(p) is float for p in payload):
        return complex(*payload)
    raise ValueError(f"not a tagged value: {tree!r:.60}")


def _is_pair(value: Any) -> bool:
    return type(value) is list and len(value) == 2


def read_report(stdout: bytes, steps: int) -> list[dict]:
    """The first `steps` lines of the child's report, each parsed into its JSON object, or
    {} where the line is missing or not one."""
    lines = stdout.split(b"\n", steps)[:steps]  # maxsplit: 4 MiB of newlines stays cheap
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # malformed, or nested past the parser's depth
            value = None
        parsed.append(value if type(value) is dict else {})
    return parsed + [{}] * (steps - len(parsed))


def call_value(line: dict) -> Any:
    """The value a report line gives for a call, or UNAVAILABLE."""
    if set(line) != {"value"}:
        return UNAVAILABLE
    try:
        return decode_value(line["value"])
    except (ValueError, TypeError, RecursionError):
        return UNAVAILABLE


def same(value: Any, expected: Any, json_like: bool = False) -> bool:
    """Python's `value == expected` on plain data, with bool apart from numbers; `json_like`:
    tuples in `value` equal lists (JSON, where `expected` came from, has no tuple)."""
    if json_like and type(value) is tuple:
        value = list(value)
    if type(value) is bool or type(expected) is bool:
        return type(value) is type(expected) and value == expected
    if type(value) in _NUMBERS and type(expected) in _NUMBERS:
        return value == expected
    if {type(value), type(expected)} <= {set, frozenset}:
        return value == expected
    if type(value) is not type(expected):
        return False
    if type(value) in (list, tuple):
        return len(value) == len(expected) and all(
            same(v, e, json_like) for v, e in zip(value, expected, strict=True)
        )
    if type(value) is dict:
        return value.keys() == expected.keys() and all(
            same(value[k], expected[k], json_like) for k in expected
        )
    return value == expected


def _number(value: Any) -> float | int:
    """`value` if it is an int or a float; TypeError (the test fails) otherwise."""
    if type(value) is not int and type(value) is not float:
        raise TypeError(f"{type(value).__name__} is not a number")
    return value


# --- Predicates on one call's value -------------------------------------------------------
# Each raises TypeError (or ArithmeticError) where Python's own operation on these operands
# would raise: the test then fails even under a `not`.


@dataclasses.dataclass(frozen=True)
class Equal:
    """`value == expected` for one of `options` (`in` a literal collection gives several)."""

    options: tuple[Any, ...]
    json_like: bool = False

    def __call__(self, value: Any) -> bool:
        return any(same(value, option, self.json_like) for option in self.options)


@dataclasses.dataclass(frozen=True)
class Identical:
    """`value is expected` for None, True or False."""

    expected: None | bool

    def __call__(self, value: Any) -> bool:
        return type(value) is type(self.expected) and value == self.expected


@dataclasses.dataclass(frozen=True)
class Truth:
    """`assert value` (bool(plain data) cannot be overridden)."""

    def __call__(self, value: Any) -> bool:
        return bool(value)


@dataclasses.dataclass(frozen=True)
class Contains:
    """`item in value` for a container (or string) the call returned."""

    item: Any

    def __call__(self, value: Any) -> bool:
        if type(value) in (list, tuple):
            return any(same(v, self.item) for v in value)
        if type(value) is str and type(self.item) is not str:
            raise TypeError("'in <string>' requires a string")
        if type(value) in (str, bytes, set, frozenset, dict):
            return self.item in value
        raise TypeError(f"{type(value).__name__} is not a container")


@dataclasses.dataclass(frozen=True)
class Order:
    """`value <op> bound` for numbers (bool excluded) or strings."""

    op: str
    bound: Any

    def __call__(self, value: Any) -> bool:
        if type(value) is not str:
            _number(value)
        return _ORDER[self.op](value, self.bound)


@dataclasses.dataclass(frozen=True)
class Close:
    """The test's stated tolerance: `math.isclose(value, expected, ...)`, or with `strict`
    `abs(value − expected) < abs_tol` (its `<=` form is isclose with rel_tol 0)."""

    expected: int | float
    rel_tol: float = 1e-9
    abs_tol: float = 0.0
    strict: bool = False

    def __call__(self, value: Any) -> bool:
        value = _number(value)
        if self.strict:
            return abs(value - self.expected) < self.abs_tol
        return math.isclose(value, self.expected, rel_tol=self.rel_tol, abs_tol=self.abs_tol)


Predicate = Equal | Identical | Truth | Contains | Order | Close


# --- A test's check: predicates on its calls, combined as its assert combines them ----------


@dataclasses.dataclass(frozen=True)
class Leaf:
    call: int  # index into the test's calls
    predicate: Predicate

    def holds(self, values: list[Any]) -> bool:
        return self.predicate(values[self.call])


@dataclasses.dataclass(frozen=True)
class All:
    parts: tuple["Check", ...]

    def holds(self, values: list[Any]) -> bool:
        return all(part.holds(values) for part in self.parts)


@dataclasses.dataclass(frozen=True)
class Either:
    parts: tuple["Check", ...]

    def holds(self, values: list[Any]) -> bool:
        return any(part.holds(values) for part in self.parts)


@dataclasses.dataclass(frozen=True)
class Negation:
    part: "Check"

    def holds(self, values: list[Any]) -> bool:
        return not self.part.holds(values)


Check = Leaf | All | Either | Negation


def passes(check: Check, values: list[Any]) -> bool:
    """Whether a test passes: every call gave plain data and the check holds on it."""
    if any(v is UNAVAILABLE for v in values):
        return False
    try:
        return check.holds(values)
    except (TypeError, ArithmeticError, ValueError):
        return False
