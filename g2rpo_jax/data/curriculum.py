"""Curriculum order (SPEC §5): which row is read at which position of an epoch."""

import enum
from collections.abc import Sequence

import numpy as np

from g2rpo_jax.data.config import Order
from g2rpo_jax.data.schema import DataError, Row


class DifficultySource(enum.StrEnum):
    FIELD = "field"  # the rows' own `difficulty`
    TRACE_LENGTH = "trace_length"  # no row has one: trace length in characters as the proxy


def difficulty_keys(rows: Sequence[Row]) -> tuple[np.ndarray, DifficultySource]:
    """float64 [N]: each row's difficulty, NaN where it has none.

    When no row has a difficulty, the trace length stands in for all of them, except rows
    without a trace (`guidance_optional`): length 0 would rank them easiest, so they get NaN.
    A mix of given and missing values has no meaningful proxy (their scales differ): NaN
    too. `sorted` refuses NaN (`check_sortable`); `random`/`none` carry it to the batches.
    """
    if all(row.difficulty is None for row in rows):
        keys = [float(len(row.guidance)) if row.guidance else np.nan for row in rows]
        return np.asarray(keys, np.float64), DifficultySource.TRACE_LENGTH
    values = [np.nan if row.difficulty is None else row.difficulty for row in rows]
    return np.asarray(values, np.float64), DifficultySource.FIELD


def check_sortable(keys: np.ndarray, source: DifficultySource, where: str) -> None:
    """Raises a DataError naming `where` when some rows have no difficulty to sort by."""
    missing = int(np.isnan(keys).sum())
    if not missing:
        return
    if source == DifficultySource.TRACE_LENGTH:
        problem = (
            f"{missing} of {len(keys)} rows have no reference trace and the file has no "
            "difficulty column, so trace length cannot rank them: add difficulties "
            "(scripts/prepare_data.py --difficulty=pass_rate)"
        )
    else:
        problem = (
            f"{missing} of {len(keys)} rows have no difficulty: fill it in "
            "(scripts/prepare_data.py --difficulty=trace_length or pass_rate)"
        )
    raise DataError(f"{where}: data.order=sorted: {problem}, or use data.order=random/none")


def epoch_order(keys: np.ndarray, order: Order, *, seed: int, epoch: int) -> np.ndarray:
    """int64 [N]: positions of the rows in the order they are read in this epoch.

    `sorted` is easy to hard with ties in a seeded shuffle; `random` a seeded permutation;
    both draw a new shuffle each epoch. `none` is file order.
    """
    rng = np.random.default_rng((seed, epoch))
    match order:
        case Order.NONE:
            return np.arange(len(keys), dtype=np.int64)
        case Order.RANDOM:
            return rng.permutation(len(keys))
        case Order.SORTED:
            if np.isnan(keys).any():
                raise ValueError("sorted order needs every key; see check_sortable")
            shuffled = rng.permutation(len(keys))
            return shuffled[np.argsort(keys[shuffled], kind="stable")]
    raise AssertionError(order)
