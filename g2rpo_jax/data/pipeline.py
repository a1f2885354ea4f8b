"""The Grain pipeline: source → validate/tokenize → order → shard by process → batches → epochs.

Every host loads and orders all rows the same way, then reads every k-th row of the ordered
sequence (k = process count), so global step s is exactly rows [s·B·k, (s+1)·B·k) of the
curriculum, spread over the hosts: the order holds globally, shards are disjoint, and each
host has the same number of batches. Each epoch drops its last `rows mod (B·k)` rows so no
batch is partial (under `sorted`, that is the hardest few).

Batch (per host), all numpy with static shapes:
  prompt_ids      int32 [B, max_prompt_length]      right-padded with the pad id
  prompt_length   int32 [B]
  guidance_ids    int32 [B, max_completion_length]  the trace, right-padded
  guidance_length int32 [B]
  difficulty      float32 [B]  the row's difficulty; its trace length in characters when no
                               row has one (DataStats.difficulty_source); NaN where a row
                               has neither (allowed under random/none)
  index           int64 [B]    the row's index in the source file
and host-only object arrays [B]: answer, prompt_text (the templated prompt), and tests (None
for rows without) when any row has tests.
"""

import dataclasses
from collections.abc import Sequence

import grain
import jax
import numpy as np
from absl import logging

from g2rpo_jax.data.config import DataConfig, Order
from g2rpo_jax.data.curriculum import (
    DifficultySource,
    check_sortable,
    difficulty_keys,
    epoch_order,
)
from g2rpo_jax.data.load import TestsCheck, load_rows
from g2rpo_jax.data.schema import AnswerCheck
from g2rpo_jax.data.tokenization import Example, Tokenizer, TraceEncoder, encode_prompts, pad_id

# Fields to leave on the host (strings, lists); the others can go to devices.
HOST_FIELDS = ("answer", "prompt_text", "tests")
# Batches are tokenized in reader threads; a small buffer bounds memory at long traces.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


@dataclasses.dataclass(frozen=True)
class DataStats:
    rows_read: int
    bad_rows: int  # skipped under skip_bad_rows
    untraced_rows: int  # skipped: no complete candidate trace marked correct (FieldMap)
    prompt_too_long: int  # dropped: prompt ids longer than max_prompt_length
    rows: int  # kept
    rows_per_epoch: int  # read per epoch by all hosts together (a multiple of B × processes)
    batches_per_epoch: int  # per host
    num_batches: int  # per host, all epochs
    difficulty_source: DifficultySource


@dataclasses.dataclass(frozen=True)
class TrainData:
    """`iter(batches)` is a Grain DatasetIterator: `get_state()` / `set_state()` resume it."""

    batches: grain.IterDataset
    stats: DataStats
    pad_id: int


def make_dataset(
    config: DataConfig,
    tokenizer: Tokenizer,
    *,
    answer_check: AnswerCheck | None = None,
    tests_check: TestsCheck | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions = _READ_OPTIONS,
) -> TrainData:
    """This host's batches; process index/count default to JAX's."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")

    loaded = load_rows(config, answer_check, tests_check)
    examples, too_long = encode_prompts(loaded.rows, tokenizer, config)
    if too_long:
        logging.warning(
            "%s: dropped %d of %d rows whose prompt exceeds max_prompt_length=%d tokens",
            config.path,
            too_long,
            len(loaded.rows),
            config.max_prompt_length,
        )
    keys, source = difficulty_keys([e.row for e in examples])
    if config.order == Order.SORTED:
        check_sortable(keys, source, config.path)

    global_batch = config.batch_size * process_count
    rows_per_epoch = len(examples) - len(examples) % global_batch
    if rows_per_epoch == 0:
        raise ValueError(
            f"{config.path}: {len(examples)} usable rows, fewer than one global batch of "
            f"{config.batch_size} × {process_count} processes"
        )
    positions = _host_positions(keys, config, rows_per_epoch, process_index, process_count)
    encode_traces = TraceEncoder(tokenizer, config.max_completion_length)
    collate = _Collate(examples, keys, encode_traces, config, pad_id(tokenizer))
    batches = (
        grain.MapDataset.source(positions)
        .batch(config.batch_size, drop_remainder=True)
        .map(collate)
    )
    batches_per_epoch = rows_per_epoch // global_batch
    stats = DataStats(
        rows_read=loaded.rows_read,
        bad_rows=loaded.bad_rows,
        untraced_rows=loaded.untraced_rows,
        prompt_too_long=too_long,
        rows=len(examples),
        rows_per_epoch=rows_per_epoch,
        batches_per_epoch=batches_per_epoch,
        num_batches=batches_per_epoch * config.num_epochs,
        difficulty_source=source,
    )
    logging.info("data %s: %s", config.path, stats)
    return TrainData(batches.to_iter_dataset(read_options), stats, collate.pad_id)


def _host_positions(
    keys: np.ndarray,
    config: DataConfig,
    rows_per_epoch: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
    """int64: this host's row positions over all epochs, every k-th row of each epoch's order."""
    per_epoch = []
    for epoch in range(config.num_epochs):
        order = epoch_order(keys, config.order, seed=config.seed, epoch=epoch)
        per_epoch.append(order[:rows_per_epoch][process_index::process_count])
    return np.concatenate(per_epoch)


class _Collate:
    """Row positions [B] → one batch dict; traces are tokenized here, once per read."""

    def __init__(
        self,
        examples: Sequence[Example],
        keys: np.ndarray,
        encode_traces: TraceEncoder,
        config: DataConfig,
        pad: int,
    ):
        self._examples = examples
        self._keys = keys.astype(np.float32)
        self._encode_traces = encode_traces
        self._prompt_width = config.max_prompt_length
        self._guidance_width = config.max_completion_length
        self._has_tests = any(e.row.tests is not None for e in examples)
        self.pad_id = pad

    def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        examples = [self._examples[p] for p in positions]
        prompt_ids, prompt_length = self._pad([e.prompt_ids for e in examples], self._prompt_width)
        guidance_ids, guidance_length = self._pad(
            self._encode_traces([e.row.guidance for e in examples]), self._guidance_width
        )
        batch = {
            "prompt_ids": prompt_ids,
            "prompt_length": prompt_length,
            "guidance_ids": guidance_ids,
            "guidance_length": guidance_length,
            "difficulty": self._keys[positions],
            "index": np.asarray([e.row.index for e in examples], np.int64),
            "answer": _objects([e.row.answer for e in examples]),
            "prompt_text": _objects([e.prompt_text for e in examples]),
        }
        if self._has_tests:
            batch["tests"] = _objects([e.row.tests for e in examples])
        return batch

    def _pad(self, ids: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(ids), width), self.pad_id, np.int32)
        for i, row_ids in enumerate(ids):
            out[i, : len(row_ids)] = row_ids
        return out, np.asarray([len(row_ids) for row_ids in ids], np.int32)


def _objects(values: list) -> np.ndarray:
    """A 1-D object array, even when the values are equal-length lists (numpy would stack)."""
    out = np.empty(len(values), object)
    for i, value in enumerate(values):
        out[i] = value
    return out
