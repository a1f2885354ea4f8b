"""Reads a source and validates every row up front, so a bad file fails before training starts."""

import dataclasses

from absl import logging

from g2rpo_jax.data.config import DataConfig, FieldMap, SourceFormat
from g2rpo_jax.data.schema import AnswerCheck, DataError, Row, to_row
from g2rpo_jax.data.sources import read_records, resolve_format

_LOGGED_BAD_ROWS = 10  # each skipped row is logged up to this many, then only the count


@dataclasses.dataclass(frozen=True)
class Loaded:
    rows: list[Row]
    bad_rows: int  # skipped under `skip_bad_rows`; 0 otherwise (the first one raises)

    @property
    def rows_read(self) -> int:
        return len(self.rows) + self.bad_rows


def load_rows(config: DataConfig, answer_check: AnswerCheck | None = None) -> Loaded:
    """All valid rows of `config.path`, in file order.

    Raises DataError at the first bad row, or with `skip_bad_rows` skips, logs and counts it.
    """
    fmt = resolve_format(config.path, config.format)
    if fmt == SourceFormat.TFDS and config.fields != FieldMap():
        raise ValueError(
            "TFDS data already holds our schema; the field mapping applies when writing"
        )
    rows, bad_rows = [], 0
    for record in read_records(config.path, fmt, config.split):
        try:
            if isinstance(record.value, DataError):
                raise record.value
            row = to_row(
                record.value,
                index=record.index,
                where=record.where,
                fields=config.fields,
                answer_check=answer_check,
            )
        except DataError as e:
            if not config.skip_bad_rows:
                raise
            bad_rows += 1
            if bad_rows <= _LOGGED_BAD_ROWS:
                logging.warning("skipping bad row: %s", e)
            continue
        rows.append(row)
    if bad_rows:
        logging.warning(
            "%s: skipped %d bad rows of %d", config.path, bad_rows, len(rows) + bad_rows
        )
    return Loaded(rows, bad_rows)
