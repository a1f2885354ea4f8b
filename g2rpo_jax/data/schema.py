"""The row schema (DESIGN.md "Data rows") and its validation at load time.

A source record becomes a `Row` through the config's `FieldMap`; anything missing or
ill-typed raises a `DataError` whose message names `file:row` and the field, so a user can
find the bad row without reading our code.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from g2rpo_jax.data.config import FieldMap

Message = dict[str, str]  # {"role": ..., "content": ...}
Prompt = str | list[Message]
Tests = list | str
# Raises ValueError for a gold answer the accuracy reward cannot parse (SPEC §6).
AnswerCheck = Callable[[str], object]


class DataError(ValueError):
    """A bad row: the message names `file:row` and the field."""


class UntracedRow(DataError):
    """A row none of whose candidate traces may guide (`FieldMap.guidance_correctness`):
    skipped and counted, never a reason to stop."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One training problem. `index` is its position in the source (0-based)."""

    index: int
    prompt: Prompt
    answer: str
    guidance: str  # the reference reasoning trace (SPEC §1); "" where the row has none
    difficulty: float | None = None  # larger = harder
    tests: Tests | None = None  # code tasks only
    pass_rate: float | None = None  # the base model's, when difficulty = 1 − it (pass_rate.py)


@dataclasses.dataclass(frozen=True)
class _Record:
    """A source record and where it came from, for error messages."""

    values: Mapping[str, Any]
    where: str

    def error(self, field: str, column: str | None, problem: str) -> DataError:
        source = f" (column {column!r})" if column and column != field else ""
        return DataError(f"{self.where}: field {field!r}{source}: {problem}")

    def get(self, field: str, column: str | None, *, required: bool) -> Any:
        value = self.values.get(column) if column else None
        if value is None and required:
            raise self.error(field, column, "missing")
        return value


def to_row(
    record: Any,
    *,
    index: int,
    where: str,
    fields: FieldMap,
    answer_check: AnswerCheck | None = None,
) -> Row:
    """Maps and validates one source record; `where` is its `file:row` for error messages.

    `answer_check` runs on rows without `tests`: code rows are scored by their tests, and
    their `answer` may be empty.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: the row is a {type(record).__name__}, not an object")
    rec = _Record(record, where)
    prompt = _prompt(rec, fields.prompt)
    tests = _tests(rec, fields.tests)
    # A code row is scored by its tests; hub code sets have no answer column.
    answer = rec.get("answer", fields.answer, required=tests is None)
    answer = "" if answer is None else answer
    if not isinstance(answer, str):
        raise rec.error("answer", fields.answer, f"expected a string, got {type(answer).__name__}")
    guidance = _guidance(rec, fields)
    difficulty = _difficulty(rec, fields.difficulty)
    pass_rate = _pass_rate(rec)
    if answer_check is not None and tests is None:
        try:
            answer_check(answer)
        except ValueError as e:
            raise rec.error("answer", fields.answer, f"unparseable gold answer: {e}") from e
    return Row(index, prompt, answer, guidance, difficulty, tests, pass_rate)


def _prompt(rec: _Record, column: str) -> Prompt:
    value = rec.get("prompt", column, required=True)
    if isinstance(value, str):
        if not value.strip():
            raise rec.error("prompt", column, "empty")
        return value
    if not isinstance(value, list) or not value:
        raise rec.error(
            "prompt", column, f"expected a string or a non-empty list of messages: {value!r:.80}"
        )
    for i, message in enumerate(value):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise rec.error(
                "prompt", column, f"message {i} is not {{role: str, content: str}}: {message!r:.80}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _guidance(rec: _Record, fields: FieldMap) -> str:
    """The trace: the column itself, or the candidate trace `_pick_trace` picks; "" for a
    row without one where `fields.guidance_optional`."""
    column = fields.guidance
    trace = rec.get("guidance", column, required=not fields.guidance_optional)
    if trace is None:
        return ""
    if fields.guidance_correctness is not None:
        trace = _pick_trace(rec, fields, trace)
        if trace is None and fields.guidance_optional:
            return ""
        if trace is None:
            error = rec.error("guidance", column, "no complete trace is marked correct")
            raise UntracedRow(str(error))
    if not isinstance(trace, str):
        raise rec.error("guidance", column, f"expected a string, got {type(trace).__name__}")
    if not trace.strip():
        raise rec.error("guidance", column, "empty trace")
    return _with_answer_tags(trace) if fields.guidance_answer_tags else trace


def _pick_trace(rec: _Record, fields: FieldMap, traces: Any) -> Any:
    """The first complete trace the first judge marked correct, else the first complete one
    the fallback judge did; None when there is none. Flags of None mean "no verdict"."""
    column = fields.guidance
    if not isinstance(traces, list):
        raise rec.error("guidance", column, "expected a list of traces and of correctness")

    def flags(flag_column: str | None, what: str, *, required: bool) -> list | None:
        value = rec.get("guidance", flag_column, required=required) if flag_column else None
        if value is None:
            return None
        if not isinstance(value, list):
            raise rec.error("guidance", flag_column, f"expected a list of {what} flags")
        if len(value) != len(traces):
            raise rec.error(
                "guidance", column, f"{len(traces)} traces but {len(value)} {what} flags"
            )
        return value

    judges = (
        flags(fields.guidance_correctness, "correctness", required=True),
        flags(fields.guidance_correctness_fallback, "correctness", required=False),
    )
    complete = flags(fields.guidance_complete, "completeness", required=False)
    for judge in judges:
        for i, ok in enumerate(judge or ()):
            if ok is True and (complete is None or complete[i] is not False):
                return traces[i]
    return None


def _with_answer_tags(trace: str) -> str:
    """`<think>…</think> solution` → `<think>…</think>\n<answer>\nsolution\n</answer>`; a
    trace without a closed thought, with an answer block already, or with nothing after the
    thought is kept as it is."""
    thought, closed, solution = trace.rpartition("</think>")
    if not closed or "<answer>" in solution or not solution.strip():
        return trace
    return f"{thought}</think>\n<answer>\n{solution.strip()}\n</answer>"


def _difficulty(rec: _Record, column: str | None) -> float | None:
    value = rec.get("difficulty", column, required=False)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise rec.error("difficulty", column, f"expected a finite number, got {value!r:.80}")
    return float(value)


def _pass_rate(rec: _Record) -> float | None:
    """Read under its own name: only scripts/prepare_data.py writes it, never a source."""
    value = rec.get("pass_rate", "pass_rate", required=False)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise rec.error("pass_rate", None, f"expected a number in [0, 1], got {value!r:.80}")
    return float(value)


def _tests(rec: _Record, column: str | None) -> Tests | None:
    value = rec.get("tests", column, required=False)
    if value is None:
        return None
    if _is_verification_info(value):
        value = _verification_info_cases(rec, column, value)
    if not isinstance(value, list | str):
        raise rec.error("tests", column, f"expected a list or a string, got {type(value).__name__}")
    if not value:
        raise rec.error("tests", column, "empty")
    return value


# --- verification_info: the tests of the hub code sets (issue 31) ---------------------------
# open-r1/verifiable-coding-problems-python and Blancy/verifiable-coding-problems-CoT keep a
# row's tests as {"language": ..., "test_cases": [{"input", "output", "type", "fn_name"}]},
# a dict or its JSON string. The cases become the row's tests; a row in another language is
# a bad row (the sandbox runs Python only).


def _is_verification_info(value: Any) -> bool:
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return False
    return isinstance(value, Mapping) and "test_cases" in value


def _verification_info_cases(rec: _Record, column: str | None, value: Any) -> list:
    info = json.loads(value) if isinstance(value, str) else value
    language = info.get("language", "python")
    if not isinstance(language, str) or language.lower() not in ("python", "python3"):
        raise rec.error("tests", column, f"tests in {language!r}; only Python runs in the sandbox")
    cases = info["test_cases"]
    if not isinstance(cases, list):
        raise rec.error("tests", column, f"test_cases is a {type(cases).__name__}, not a list")
    return cases
