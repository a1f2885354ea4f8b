"""Difficulty estimators (larger = harder) for rows that carry no `difficulty` (SPEC §5).

Built in: the trace length in characters — a longer reference solution usually means a harder
problem, and it costs nothing. The paper-style estimate, 1 − pass rate of the base model over
n samples, needs the sampler: `from_pass_rate` turns any pass-rate function (e.g. one built on
`g2rpo_jax.sampling` plus the accuracy reward) into an estimator, so scripts/prepare_data.py
can plug it in without this package depending on the model code.
"""

import dataclasses
from collections.abc import Callable, Sequence

from g2rpo_jax.data.schema import Row

# Rows → one difficulty per row.
Estimator = Callable[[Sequence[Row]], Sequence[float]]


def trace_length(rows: Sequence[Row]) -> list[float]:
    """The proxy: length of the reference trace in characters (no tokenizer needed)."""
    return [float(len(row.guidance)) for row in rows]


def from_pass_rate(pass_rate: Callable[[Sequence[Row]], Sequence[float]]) -> Estimator:
    """Difficulty = 1 − pass rate, the pass rate being a fraction in [0, 1] per row."""

    def estimate(rows: Sequence[Row]) -> list[float]:
        rates = pass_rate(rows)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError("pass rates must lie in [0, 1]")
        return [1.0 - float(r) for r in rates]

    return estimate


def with_difficulty(rows: Sequence[Row], estimator: Estimator) -> list[Row]:
    """The rows with `difficulty` replaced by the estimator's values."""
    values = estimator(rows)
    if len(values) != len(rows):
        raise ValueError(f"the estimator gave {len(values)} values for {len(rows)} rows")
    return [
        dataclasses.replace(row, difficulty=float(v)) for row, v in zip(rows, values, strict=True)
    ]
