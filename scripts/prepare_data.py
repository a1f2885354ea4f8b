r"""Validates a JSONL / Parquet / saved-HF file, maps its fields and writes it as ArrayRecord.

    python scripts/prepare_data.py --input=openr1.parquet --fields=openr1_math \
        --output=/data/openr1 --difficulty=trace_length
    python scripts/prepare_data.py --input=train=train.jsonl --input=test=test.jsonl \
        --output=/data/mine --skip_bad_rows

    python scripts/prepare_data.py --input=assets/demo/train.jsonl --output=/data/demo_pr \
        --difficulty=pass_rate --config=configs/demo.py --model=assets/demo/model --samples=8

Then train with `--config.data.path=/data/openr1 --config.data.format=tfds`.

--difficulty: `keep` the file's own values (or none); `trace_length` sets every row's
difficulty to its reference trace's length in characters (SPEC §5's proxy); `pass_rate`, the
paper's, samples --samples unguided completions per row from --model (default: the config's
model.path) with the config's prompt template, decoding (--temperature, --max_new_tokens
override it) and accuracy reward, and writes difficulty = 1 − pass rate and the pass rate.
Rows are sampled --batch_size at a time over every device; each finished batch goes into
OUTPUT/pass_rate_journal.jsonl, so the same command after a kill skips the rows done and
writes the same numbers. Rows whose prompt exceeds data.max_prompt_length are dropped, as
training would drop them.
"""

import contextlib
import dataclasses
import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from g2rpo_jax import cli, pass_rate
from g2rpo_jax import config as config_lib
from g2rpo_jax.data import DataConfig, DataError, FieldMap, Row, SourceFormat, load_rows
from g2rpo_jax.data import difficulty as difficulty_lib
from g2rpo_jax.data.tfds_builder import check_writable, write_array_record
from g2rpo_jax.rewards.accuracy import parse_gold

_PRESETS = {"default": FieldMap(), "openr1_math": FieldMap.openr1_math()}
_ESTIMATORS: dict[str, difficulty_lib.Estimator | None] = {
    "keep": None,
    "trace_length": difficulty_lib.trace_length,
}

_INPUT = flags.DEFINE_multi_string(
    "input", None, "PATH, or SPLIT=PATH to name the split (default train).", required=True
)
_OUTPUT = flags.DEFINE_string("output", None, "TFDS data_dir to write.", required=True)
_FORMAT = flags.DEFINE_enum_class("format", SourceFormat.AUTO, SourceFormat, "Input format.")
_FIELDS = flags.DEFINE_enum("fields", "default", list(_PRESETS), "Field mapping preset.")
_FIELD = flags.DEFINE_multi_string(
    "field", [], "FIELD=COLUMN overriding the preset, e.g. prompt=question; FIELD= unsets it."
)
_DIFFICULTY = flags.DEFINE_enum(
    "difficulty", "keep", [*_ESTIMATORS, "pass_rate"], "Difficulty estimate."
)
_SKIP_BAD_ROWS = flags.DEFINE_bool("skip_bad_rows", False, "Skip and count bad rows.")
_CHECK_ANSWERS = flags.DEFINE_bool(
    "check_answers", True, "Gold answers of non-code rows must parse with math-verify."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
# --difficulty=pass_rate only.
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config whose prompt template, decoding and accuracy reward the pass rate "
    "uses (default: the default config).",
    lock_config=True,
)
_MODEL = flags.DEFINE_string(
    "model", None, "Hugging Face folder or hub id (default: the config's model.path)."
)
_SAMPLES = flags.DEFINE_integer("samples", 8, "n unguided completions per row.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Default: the config's sampling one.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", None, "Default: the config's data.max_completion_length."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Rows per sampler call (× --samples).")


def _field_map() -> FieldMap:
    overrides = dict(item.split("=", 1) for item in _FIELD.value)
    return dataclasses.replace(
        _PRESETS[_FIELDS.value], **{k: v or None for k, v in overrides.items()}
    )


def _splits() -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else ("train", item) for item in _INPUT.value)


def _pass_rate_estimator(first_input: str) -> pass_rate.Estimator:
    c = _CONFIG.value or config_lib.default_config()
    c.data.path = first_input  # each split's rows are given; build only needs one
    if _MODEL.value:
        c.model.path = _MODEL.value
    if not c.model.path:
        raise config_lib.ConfigError("--difficulty=pass_rate: pass --model=PATH_OR_HUB_ID")
    return pass_rate.Estimator.from_config(
        c,
        os.path.join(_OUTPUT.value, pass_rate.JOURNAL),
        samples=_SAMPLES.value,
        temperature=_TEMPERATURE.value,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        batch_size=_BATCH_SIZE.value,
    )


def _report(split: str, rows: list[Row], samples: int) -> None:
    rates = np.asarray([row.pass_rate for row in rows])
    print(
        f"{split}: pass rate over n={samples}: mean {rates.mean():.3f}, "
        f"{int((rates == 1).sum())} rows always solved (1), "
        f"{int((rates == 0).sum())} never solved (0), of {len(rows)}"
    )


def main(argv: list[str]) -> None:
    del argv
    check_writable(_OUTPUT.value, overwrite=_OVERWRITE.value)  # before any sampling
    estimator = _ESTIMATORS.get(_DIFFICULTY.value)
    splits = _splits()
    by_pass_rate = None
    if _DIFFICULTY.value == "pass_rate":
        by_pass_rate = _pass_rate_estimator(next(iter(splits.values())))
    with by_pass_rate or contextlib.nullcontext():
        rows_by_split = _prepare(splits, estimator, by_pass_rate)
    out = write_array_record(rows_by_split, _OUTPUT.value, overwrite=_OVERWRITE.value)
    print(f"wrote {out}")


def _prepare(splits: dict[str, str], estimator, by_pass_rate) -> dict[str, list[Row]]:
    rows_by_split = {}
    for split, path in splits.items():
        config = DataConfig(
            path=path,
            format=_FORMAT.value,
            split=split,
            fields=_field_map(),
            skip_bad_rows=_SKIP_BAD_ROWS.value,
        )
        loaded = load_rows(config, parse_gold if _CHECK_ANSWERS.value else None)
        rows = loaded.rows
        if estimator is not None:
            try:
                rows = difficulty_lib.with_difficulty(rows, estimator)
            except DataError as e:
                raise DataError(f"{path}: {e}") from e
        print(
            f"{split}: {path}: {len(rows)} rows kept, {loaded.bad_rows} bad rows skipped, "
            f"{loaded.untraced_rows} without a complete trace marked correct skipped"
        )
        if by_pass_rate is not None:
            rows, too_long = by_pass_rate(rows, split)
            if too_long:
                print(f"{split}: {too_long} rows dropped: prompt over data.max_prompt_length")
            _report(split, rows, _SAMPLES.value)
        rows_by_split[split] = rows
    return rows_by_split


if __name__ == "__main__":
    cli.run(main)
