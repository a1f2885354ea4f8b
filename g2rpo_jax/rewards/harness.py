"""The grader's part inside the sandbox: runs the program, then the calls of its tests.

Never imported by the trainer to run: code.py appends `main(PROGRAM, STEPS)` to this file's
text and runs the whole as the sandbox's main.py (stdlib only; it must run on whichever
interpreter `SandboxConfig.python` names). The program runs first, as `__main__` with empty
stdin and its stdout sent to /dev/null; then each step, in order, writes one JSON line on a
private copy of stdout:

- ("expr", expression): a test's call expression, evaluated in the program's namespace →
  {"value": tagged value} or {"error": exception name};
- ("fn", name, args): `name(*args)`, or `Solution().name(*args)` for a LeetCode-style class
  → the same;
- ("code", source): trusted test code run in the namespace → {"passed": true} or an error.

The steps never hold an expected value. The program can reach everything here (this module,
the report descriptor, the steps): what it can send is values, judged in the trainer
(verdict.py). A value is reported only if it is plain data of exact builtin types.
"""

import builtins
import os

# Not json: importing it (and re) would add 15–35 ms to every sandbox run. repr() of the
# function arguments, infinite and NaN floats included, reads back through these names.
inf, nan = float("inf"), float("nan")
_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})
_FLOATS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}  # as Python's json reads them


def _string(text):
    return '"' + text.translate(_ESCAPES) + '"'


def _encode(value):
    """The JSON text of the tagged tree of a plain-data value (verdict.decode_value)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        text = float.__repr__(value)
        return _FLOATS.get(text, text)
    if kind is str:
        return _string(value)
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return '{"' + kind.__name__ + '": [' + ", ".join(_encode(v) for v in value) + "]}"
    if kind is dict:
        pairs = ("[" + _encode(k) + ", " + _encode(v) + "]" for k, v in value.items())
        return '{"dict": [' + ", ".join(pairs) + "]}"
    if kind is bytes:
        return '{"bytes": "' + value.hex() + '"}'
    if kind is complex:
        return '{"complex": [' + _encode(value.real) + ", " + _encode(value.imag) + "]}"
    raise TypeError(kind.__name__ + " is not plain data")


def _function(namespace, name):
    target = namespace.get(name)
    solution = namespace.get("Solution")
    if target is None and isinstance(solution, type):  # LeetCode / LiveCodeBench style
        target = getattr(solution(), name)
    return target


def _run(namespace, step):
    kind = step[0]
    if kind == "expr":
        return '{"value": ' + _encode(eval(step[1], namespace)) + "}"
    if kind == "fn":
        return '{"value": ' + _encode(_function(namespace, step[1])(*step[2])) + "}"
    exec(compile(step[1], "test.py", "exec"), namespace)
    return '{"passed": true}'


def main(program, steps):
    report = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(program, "solution.py", "exec"), namespace)
    except BaseException:  # a program that raises or exits passes no test
        return
    for step in steps:
        try:
            line = _run(namespace, step)
        except BaseException as e:  # SystemExit from a call, too: that call failed
            line = '{"error": ' + _string(type(e).__name__) + "}"
        # backslashreplace: a lone surrogate becomes a \uXXXX escape, which JSON reads back.
        os.write(report, (line + "\n").encode("utf-8", "backslashreplace"))
