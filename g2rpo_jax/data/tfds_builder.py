"""Validated rows stored as ArrayRecord through a TFDS builder, and read back with random access.

tensorflow itself is never imported: a `GeneratorBasedBuilder` writing `array_record` and read
with `as_data_source` needs only tensorflow-datasets and importlib_resources. The builder must
live in an importable module (defined in `__main__`, TFDS fails looking for its folder).

Stored fields are our schema after the field mapping, so reading needs no mapping. A prompt
(string or messages) and tests (list or string) are stored as JSON text; a missing difficulty
(and pass rate) as NaN, missing tests as "", and a row without a trace (`guidance_optional`
when written) as guidance "" — a stored trace is never empty, so "" reads back as "no trace".
`index` keeps the row's index in the original file. Data written before `pass_rate` existed
reads with none.
"""

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from g2rpo_jax.data.schema import Row
from g2rpo_jax.data.sources import Record


class G2rpoRows(tfds.core.GeneratorBasedBuilder):
    """Rows of the g2rpo schema; write with `write_array_record`, read with `read_records`."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, rows_by_split: Mapping[str, Sequence[Row]] | None = None, **kwargs):
        self._rows_by_split = rows_by_split or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Scalar(np.int64),
                    "prompt": text,
                    "answer": text,
                    "guidance": text,
                    "difficulty": tfds.features.Scalar(np.float64),
                    "tests": text,
                    "pass_rate": tfds.features.Scalar(np.float64),
                }
            ),
            disable_shuffling=True,  # keep file order: `none` curriculum and `index` rely on it
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(rows) for split, rows in self._rows_by_split.items()}

    def _generate_examples(self, rows: Sequence[Row]):
        for position, row in enumerate(rows):
            yield position, _encode(row)


def write_array_record(
    rows_by_split: Mapping[str, Sequence[Row]], data_dir: str, *, overwrite: bool = False
) -> str:
    """Writes each split's rows under `data_dir`; returns the dataset's version folder."""
    builder = G2rpoRows(rows_by_split=rows_by_split, data_dir=data_dir, file_format="array_record")
    check_writable(data_dir, overwrite=overwrite)
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return builder.data_dir


def check_writable(data_dir: str, *, overwrite: bool) -> None:
    """Raises FileExistsError when `data_dir` already holds a dataset and not `overwrite`."""
    version_dir = G2rpoRows(data_dir=data_dir).data_dir
    if os.path.exists(version_dir) and not overwrite:
        raise FileExistsError(f"{version_dir} exists; pass overwrite=True to replace it")


def read_records(data_dir: str, split: str) -> Iterator[Record]:
    source = G2rpoRows(data_dir=data_dir).as_data_source(split)
    for position in range(len(source)):
        example = source[position]
        yield Record(int(example["index"]), f"{data_dir}[{split}]:{position}", _decode(example))


def _encode(row: Row) -> dict:
    return {
        "index": row.index,
        "prompt": json.dumps(row.prompt, ensure_ascii=False),
        "answer": row.answer,
        "guidance": row.guidance,
        "difficulty": math.nan if row.difficulty is None else row.difficulty,
        "tests": "" if row.tests is None else json.dumps(row.tests, ensure_ascii=False),
        "pass_rate": math.nan if row.pass_rate is None else row.pass_rate,
    }


def _decode(example: Mapping) -> dict:
    """Back to the schema's field names and types (TFDS returns text as bytes)."""
    difficulty = float(example["difficulty"])
    stored = example.get("pass_rate")  # None in data written before the field existed
    pass_rate = math.nan if stored is None else float(stored)
    tests = example["tests"].decode()
    return {
        "prompt": json.loads(example["prompt"].decode()),
        "answer": example["answer"].decode(),
        "guidance": example["guidance"].decode() or None,
        "difficulty": None if math.isnan(difficulty) else difficulty,
        "tests": json.loads(tests) if tests else None,
        "pass_rate": None if math.isnan(pass_rate) else pass_rate,
    }
