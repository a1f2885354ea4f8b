"""Readers that yield a file's records in order, each with its index and `file:row` location.

Records are raw (source column names); `schema.to_row` maps and validates them. A line that is
not JSON is yielded as a `DataError` rather than raised, so the loader can skip it and go on.
"""

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from g2rpo_jax.data.config import SourceFormat, hub_id
from g2rpo_jax.data.schema import DataError

_PARQUET_BATCH_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class Record:
    index: int  # 0-based row index in the source; becomes `index` in batches
    where: str  # `file:row` for error messages
    value: Any  # the decoded record, or the DataError that stopped its decoding


def resolve_format(path: str, fmt: SourceFormat) -> SourceFormat:
    if fmt != SourceFormat.AUTO:
        return fmt
    if hub_id(path) is not None:
        return SourceFormat.HF_HUB
    if path.endswith(".jsonl"):
        return SourceFormat.JSONL
    if path.endswith(".parquet"):
        return SourceFormat.PARQUET
    raise ValueError(f"cannot tell the format of {path!r} from its name; set format explicitly")


def read_records(path: str, fmt: SourceFormat, split: str) -> Iterator[Record]:
    match resolve_format(path, fmt):
        case SourceFormat.JSONL:
            return _jsonl(path)
        case SourceFormat.PARQUET:
            return _parquet(path)
        case SourceFormat.HF_DISK:
            return _hf_disk(path, split)
        case SourceFormat.HF_HUB:
            return _hf_hub(path, split)
        case SourceFormat.TFDS:
            # Imported here: tensorflow_datasets is only needed by users of this format.
            from g2rpo_jax.data import tfds_builder

            return tfds_builder.read_records(path, split)
    raise AssertionError(fmt)


def _jsonl(path: str) -> Iterator[Record]:
    """Blank lines are not rows; `where` also gives the 1-based line for editors."""
    index = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{index} (line {line_no})"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                value = DataError(f"{where}: row: bad JSON line: {e}")
            yield Record(index, where, value)
            index += 1


def _parquet(path: str) -> Iterator[Record]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for value in batch.to_pylist():
            yield Record(index, f"{path}:{index}", value)
            index += 1


def _hf_disk(path: str, split: str) -> Iterator[Record]:
    import datasets  # imported on use: it takes a second and most runs read other formats

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split]
        path = os.path.join(path, split)
    return _rows(dataset, path)


def _hf_hub(path: str, split: str) -> Iterator[Record]:
    """Downloaded once into the `datasets` cache (with its progress bars), then read from it."""
    return _rows(load_hub_dataset(path, split), f"{path}[{split}]")


def load_hub_dataset(path: str, split: str):
    """The `split` of an `hf:` path's dataset: a hub id, or a local copy of a hub repo."""
    source = hub_id(path)
    if source is None:
        raise ValueError(f"{path!r} is not an hf: path")
    import datasets

    return datasets.load_dataset(source, split=split)


def _rows(dataset, where: str) -> Iterator[Record]:
    for index, value in enumerate(dataset):
        yield Record(index, f"{where}:{index}", value)
