r"""Validates a JSONL / Parquet / saved-HF file, maps its fields and writes it as ArrayRecord.

    python scripts/prepare_data.py --input=openr1.parquet --fields=openr1_math \
        --output=/data/openr1 --difficulty=trace_length
    python scripts/prepare_data.py --input=train=train.jsonl --input=test=test.jsonl \
        --output=/data/mine --skip_bad_rows

Then train with `--config.data.path=/data/openr1 --config.data.format=tfds`.

--difficulty: `keep` the file's own values (or none); `trace_length` sets every row's
difficulty to its reference trace's length in characters (SPEC §5's proxy). The paper-style
estimate, 1 − pass rate of the base model over n samples, goes into `_ESTIMATORS` as
`difficulty.from_pass_rate(...)` over g2rpo_jax.sampling once the sampler exists.
"""

import dataclasses

from absl import flags

from g2rpo_jax import cli
from g2rpo_jax.data import DataConfig, FieldMap, SourceFormat, load_rows
from g2rpo_jax.data import difficulty as difficulty_lib
from g2rpo_jax.data.tfds_builder import write_array_record
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
_DIFFICULTY = flags.DEFINE_enum("difficulty", "keep", list(_ESTIMATORS), "Difficulty estimate.")
_SKIP_BAD_ROWS = flags.DEFINE_bool("skip_bad_rows", False, "Skip and count bad rows.")
_CHECK_ANSWERS = flags.DEFINE_bool(
    "check_answers", True, "Gold answers of non-code rows must parse with math-verify."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def _field_map() -> FieldMap:
    overrides = dict(item.split("=", 1) for item in _FIELD.value)
    return dataclasses.replace(
        _PRESETS[_FIELDS.value], **{k: v or None for k, v in overrides.items()}
    )


def _splits() -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else ("train", item) for item in _INPUT.value)


def main(argv: list[str]) -> None:
    del argv
    estimator = _ESTIMATORS[_DIFFICULTY.value]
    rows_by_split = {}
    for split, path in _splits().items():
        config = DataConfig(
            path=path,
            format=_FORMAT.value,
            split=split,
            fields=_field_map(),
            skip_bad_rows=_SKIP_BAD_ROWS.value,
        )
        loaded = load_rows(config, parse_gold if _CHECK_ANSWERS.value else None)
        rows = (
            loaded.rows
            if estimator is None
            else difficulty_lib.with_difficulty(loaded.rows, estimator)
        )
        rows_by_split[split] = rows
        print(f"{split}: {path}: {len(rows)} rows kept, {loaded.bad_rows} bad rows skipped")
    out = write_array_record(rows_by_split, _OUTPUT.value, overwrite=_OVERWRITE.value)
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
