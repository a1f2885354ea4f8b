"""Difficulty estimators (larger = harder) for rows that carry no `difficulty` (SPEC §5).

Built in: the trace length in characters — a longer reference solution usually means a harder
problem, and it costs nothing. The paper-style estimate, 1 − pass rate of the base model over
n samples, needs the sampler and the rewards: g2rpo_jax/pass_rate.py counts the passes and
`with_pass_rates` writes them in, so this package does not depend on the model code.
"""

import dataclasses
from collections.abc import Callable, Sequence

from g2rpo_jax.data.schema import DataError, Row

# Rows → one difficulty per row.
Estimator = Callable[[Sequence[Row]], Sequence[float]]


def trace_length(rows: Sequence[Row]) -> list[float]:
    """The proxy: length of the reference trace in characters (no tokenizer needed).

    A row without a trace (`guidance_optional`) has no such length: ranking it 0 would make
    it the easiest problem, so a file with trace-less rows needs another estimate.
    """
    untraced = sum(not row.guidance for row in rows)
    if untraced:
        raise DataError(
            f"{untraced} of {len(rows)} rows have no reference trace, so trace length cannot "
            "rank them: give the rows a difficulty (--difficulty=pass_rate estimates one)"
        )
    return [float(len(row.guidance)) for row in rows]


def with_pass_rates(rows: Sequence[Row], pass_rates: Sequence[float]) -> list[Row]:
    """The rows with their pass rate (a fraction in [0, 1]) and difficulty = 1 − it."""
    if len(pass_rates) != len(rows):
        raise ValueError(f"{len(pass_rates)} pass rates for {len(rows)} rows")
    if any(not 0.0 <= r <= 1.0 for r in pass_rates):
        raise ValueError("pass rates must lie in [0, 1]")
    return [
        dataclasses.replace(row, difficulty=1.0 - float(r), pass_rate=float(r))
        for row, r in zip(rows, pass_rates, strict=True)
    ]


def with_difficulty(rows: Sequence[Row], estimator: Estimator) -> list[Row]:
    """The rows with `difficulty` replaced by the estimator's values."""
    values = estimator(rows)
    if len(values) != len(rows):
        raise ValueError(f"the estimator gave {len(values)} values for {len(rows)} rows")
    return [
        dataclasses.replace(row, difficulty=float(v)) for row, v in zip(rows, values, strict=True)
    ]
