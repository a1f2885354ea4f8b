"""Curriculum order (SPEC §5): which row is read at which position of an epoch."""

import enum
from collections.abc import Sequence

import numpy as np

from g2rpo_jax.data import difficulty
from g2rpo_jax.data.config import Order
from g2rpo_jax.data.schema import Row


class DifficultySource(enum.StrEnum):
    FIELD = "field"  # the rows' own `difficulty`
    TRACE_LENGTH = "trace_length"  # no row has one: trace length in characters as the proxy


def difficulty_keys(rows: Sequence[Row]) -> tuple[np.ndarray, DifficultySource]:
    """float64 [N]: each row's difficulty, NaN where only some rows lack one.

    When no row has a difficulty, the trace length stands in for all of them. A mix of given
    and missing values has no meaningful proxy (their scales differ): NaN, which `sorted`
    refuses and `random`/`none` carry through to the batches.
    """
    if all(row.difficulty is None for row in rows):
        return np.asarray(difficulty.trace_length(rows), np.float64), DifficultySource.TRACE_LENGTH
    values = [np.nan if row.difficulty is None else row.difficulty for row in rows]
    return np.asarray(values, np.float64), DifficultySource.FIELD


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
            missing = int(np.isnan(keys).sum())
            if missing:
                raise ValueError(
                    f"{missing} of {len(keys)} rows have no difficulty: fill it in "
                    "(scripts/prepare_data.py --difficulty=trace_length) or use order=random/none"
                )
            shuffled = rng.permutation(len(keys))
            return shuffled[np.argsort(keys[shuffled], kind="stable")]
    raise AssertionError(order)
