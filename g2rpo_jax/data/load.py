"""Reads a source and validates every row up front, so a bad file fails before training starts."""

import dataclasses

from absl import logging

from g2rpo_jax.data.config import DataConfig, FieldMap, SourceFormat
from g2rpo_jax.data.schema import AnswerCheck, DataError, Row, UntracedRow, to_row
from g2rpo_jax.data.sources import read_records, resolve_format

_LOGGED_BAD_ROWS = 10  # each skipped row is logged up to this many, then only the count


@dataclasses.dataclass(frozen=True)
class Loaded:
    rows: list[Row]
    bad_rows: int  # skipped under `skip_bad_rows`; 0 otherwise (the first one raises)
    untraced_rows: int = 0  # skipped always: no candidate trace may guide (UntracedRow)

    @property
    def rows_read(self) -> int:
        return len(self.rows) + self.bad_rows + self.untraced_rows


def load_rows(config: DataConfig, answer_check: AnswerCheck | None = None) -> Loaded:
    """All valid rows of `config.path`, in file order.

    Raises DataError at the first bad row, or with `skip_bad_rows` skips, logs and counts it.
    Rows without a trace to pick among their candidates are skipped and counted apart.
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
    rows, bad_rows, untraced_rows = [], 0, 0
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
        rows.append(row)
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
