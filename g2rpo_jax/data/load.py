"""Reads a source and validates every row up front, so a bad file fails before training starts."""

import dataclasses
from collections.abc import Callable

from absl import logging

from g2rpo_jax.data.config import DataConfig, FieldMap, SourceFormat
from g2rpo_jax.data.schema import AnswerCheck, DataError, Row, Tests, UntracedRow, to_row
from g2rpo_jax.data.sources import read_records, resolve_format

_LOGGED_BAD_ROWS = 10  # each skipped row is logged up to this many, then only the count
# Raises ValueError/TypeError for malformed tests; returns a warning for tests that will score
# 0 however good the program (rewards.code.check_tests).
TestsCheck = Callable[[Tests], str | None]


@dataclasses.dataclass(frozen=True)
class Loaded:
    rows: list[Row]
    bad_rows: int  # skipped under `skip_bad_rows`; 0 otherwise (the first one raises)
    untraced_rows: int = 0  # skipped always: no candidate trace may guide (UntracedRow)

    @property
    def rows_read(self) -> int:
        return len(self.rows) + self.bad_rows + self.untraced_rows


def load_rows(
    config: DataConfig,
    answer_check: AnswerCheck | None = None,
    tests_check: TestsCheck | None = None,
) -> Loaded:
    """All valid rows of `config.path`, in file order.

    Raises DataError at the first bad row, or with `skip_bad_rows` skips, logs and counts it.
    Rows without a trace to pick among their candidates are skipped and counted apart.
    `tests_check` runs on each row with tests: an error makes it a bad row, a warning is
    logged with the row's location.
    """
    fmt = resolve_format(config.path, config.format)
    fields = config.fields
    if fmt == SourceFormat.TFDS:
        if dataclasses.replace(fields, guidance_optional=False) != FieldMap():
            raise ValueError(
                "TFDS data already holds our schema; the field mapping applies when writing"
            )
        # Its rows were validated when written: one stored without a trace was allowed then.
        fields = FieldMap(guidance_optional=True)
    rows, bad_rows, untraced_rows, warned = [], 0, 0, 0
    for record in read_records(config.path, fmt, config.split):
        try:
            if isinstance(record.value, DataError):
                raise record.value
            row = to_row(
                record.value,
                index=record.index,
                where=record.where,
                fields=fields,
                answer_check=answer_check,
            )
            warning = check_row_tests(row, record.where, fields.tests, tests_check)
        except UntracedRow as e:
            untraced_rows += 1
            if untraced_rows <= _LOGGED_BAD_ROWS:
                logging.info("skipping a row without a usable trace: %s", e)
            continue
        except DataError as e:
            if not config.skip_bad_rows:
                raise
            bad_rows += 1
            if bad_rows <= _LOGGED_BAD_ROWS:
                logging.warning("skipping bad row: %s", e)
            continue
        if warning is not None:
            warned += 1
            if warned <= _LOGGED_BAD_ROWS:
                logging.warning("%s: field 'tests': %s", record.where, warning)
        rows.append(row)
    if warned:
        logging.warning(
            "%s: %d rows hold tests that score 0 (the first %d are named above)",
            config.path,
            warned,
            min(warned, _LOGGED_BAD_ROWS),
        )
    loaded = Loaded(rows, bad_rows, untraced_rows)
    if bad_rows:
        logging.warning("%s: skipped %d bad rows of %d", config.path, bad_rows, loaded.rows_read)
    if untraced_rows:
        logging.warning(
            "%s: skipped %d of %d rows: no complete trace marked correct",
            config.path,
            untraced_rows,
            loaded.rows_read,
        )
    return loaded


def check_row_tests(
    row: Row, where: str, column: str | None, check: TestsCheck | None
) -> str | None:
    """`check` on the row's tests (if both exist), its error as a DataError naming the row."""
    if check is None or row.tests is None:
        return None
    try:
        return check(row.tests)
    except (ValueError, TypeError) as e:
        source = f" (column {column!r})" if column and column != "tests" else ""
        raise DataError(f"{where}: field 'tests'{source}: {e}") from e
