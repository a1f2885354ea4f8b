"""Row validation and sources: every bad row is named by file:row and field; mappings load."""

import dataclasses
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g2rpo_jax.data import DataConfig, DataError, FieldMap, Row, load_rows
from g2rpo_jax.rewards.accuracy import parse_gold

GOOD = {"prompt": "What is 1+1?", "answer": "2", "guidance": "1+1=2", "difficulty": 1}


def write_jsonl(path, records) -> str:
    """Records are dicts, or raw strings written as the line itself."""
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


BAD_ROWS = {
    "missing field": ({"prompt": "q", "guidance": "t"}, "'answer'", "missing"),
    "wrong type": ({**GOOD, "answer": 2}, "'answer'", "expected a string"),
    "prompt type": ({**GOOD, "prompt": 5}, "'prompt'", "expected a string"),
    "bad message": ({**GOOD, "prompt": [{"role": "user"}]}, "'prompt'", "message 0"),
    "empty trace": ({**GOOD, "guidance": " \n"}, "'guidance'", "empty trace"),
    "trace type": ({**GOOD, "guidance": ["a"]}, "'guidance'", "expected a string"),
    "difficulty type": ({**GOOD, "difficulty": "hard"}, "'difficulty'", "finite number"),
    "tests type": ({**GOOD, "tests": 3}, "'tests'", "list or a string"),
    "bad JSON line": ('{"prompt": "q", "answer": ', "row", "bad JSON"),
    "not an object": ("[1, 2]", "row is a list", "not an object"),
    "unparseable gold": ({**GOOD, "answer": ""}, "'answer'", "unparseable gold"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_error_names_file_row_and_field(tmp_path, case):
    bad, field, problem = BAD_ROWS[case]
    # A blank line first: rows count records, the message also gives the editor's line.
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(DataError) as error:
        load_rows(DataConfig(path=path), answer_check=parse_gold)
    message = str(error.value)
    assert f"{path}:2 (line 4)" in message
    assert field in message and problem in message


def test_unparseable_gold_is_checked_only_when_asked_and_not_for_code_rows(tmp_path):
    with pytest.raises(ValueError):
        parse_gold("")  # the "unparseable gold" case above relies on it
    code_row = {**GOOD, "answer": "", "tests": ["assert f(1) == 2"]}
    path = write_jsonl(tmp_path / "rows.jsonl", [{**GOOD, "answer": ""}, code_row])
    assert len(load_rows(DataConfig(path=path)).rows) == 2
    with pytest.raises(DataError, match=r":0 \(line 1\)"):
        load_rows(DataConfig(path=path), answer_check=parse_gold)


def test_skip_bad_rows_skips_counts_and_logs(tmp_path, caplog):
    records = [GOOD] + [bad for bad, _, _ in BAD_ROWS.values()] + [GOOD]
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    with caplog.at_level(logging.WARNING):
        loaded = load_rows(DataConfig(path=path, skip_bad_rows=True), answer_check=parse_gold)
    assert loaded.bad_rows == len(BAD_ROWS)
    assert loaded.rows_read == len(records)
    assert [row.index for row in loaded.rows] == [0, len(records) - 1]
    assert f"skipped {len(BAD_ROWS)} bad rows" in caplog.text


def test_rows_keep_optional_fields_and_messages(tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    records = [
        {**GOOD, "prompt": messages, "difficulty": None, "extra": "ignored"},
        {**GOOD, "difficulty": 2.5, "tests": [{"input": "1", "output": "2"}]},
    ]
    rows = load_rows(DataConfig(path=write_jsonl(tmp_path / "rows.jsonl", records))).rows
    assert rows == [
        Row(0, messages, "2", "1+1=2", None, None),
        Row(1, "What is 1+1?", "2", "1+1=2", 2.5, [{"input": "1", "output": "2"}]),
    ]


def test_parquet_gives_the_same_rows_as_jsonl(tmp_path):
    records = [{**GOOD, "answer": str(i), "difficulty": float(i)} for i in range(5)]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", records)
    parquet = str(tmp_path / "rows.parquet")
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=2)
    assert load_rows(DataConfig(path=parquet)).rows == load_rows(DataConfig(path=jsonl)).rows


def test_parquet_null_is_a_missing_field(tmp_path):
    records = [GOOD, {**GOOD, "answer": None}]
    path = str(tmp_path / "rows.parquet")
    pq.write_table(pa.Table.from_pylist(records), path)
    with pytest.raises(DataError, match=rf"{path}:1: field 'answer': missing"):
        load_rows(DataConfig(path=path))


OPENR1 = [
    {
        "problem": "2+2?",
        "answer": "4",
        "generations": ["<think>2+2=5</think>", "<think>2+2=4</think> So \\boxed{4}."],
        "correctness_math_verify": [False, True],
        "correctness_llama": None,  # no verdict: math-verify's is enough
        "is_reasoning_complete": [True, True],
    },
    {  # no trace marked correct by either judge: skipped and counted
        "problem": "3+3?",
        "answer": "6",
        "generations": ["<think>7</think> \\boxed{7}"],
        "correctness_math_verify": [False],
        "correctness_llama": [False],
        "is_reasoning_complete": [True],
    },
    {  # the only trace math-verify marked correct is incomplete: the second judge's
        "problem": "1+1?",
        "answer": "2",
        "generations": ["<think>1+1=2", "<think>one plus one</think>\n\n\\boxed{2}"],
        "correctness_math_verify": [True, False],
        "correctness_llama": [True, True],
        "is_reasoning_complete": [False, True],
    },
    {  # marked correct by the second judge only
        "problem": "5+5?",
        "answer": "10",
        "generations": ["<think>5+5=10</think> \\boxed{10}", "<think>11</think> \\boxed{11}"],
        "correctness_math_verify": [False, False],
        "correctness_llama": [True, False],
        "is_reasoning_complete": [True, True],
    },
]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_openr1_mapping_prefers_math_verify_then_the_second_judge_and_skips_the_rest(
    tmp_path, suffix
):
    path = str(tmp_path / f"openr1.{suffix}")
    if suffix == "jsonl":
        write_jsonl(path, OPENR1)
    else:
        pq.write_table(pa.Table.from_pylist(OPENR1), path)
    # Not a bad row: the run goes on without skip_bad_rows, and the count says what was left.
    loaded = load_rows(DataConfig(path=path, fields=FieldMap.openr1_math()), parse_gold)
    assert (loaded.bad_rows, loaded.untraced_rows, loaded.rows_read) == (0, 1, 4)
    assert loaded.rows == [
        Row(0, "2+2?", "4", "<think>2+2=4</think>\n<answer>\nSo \\boxed{4}.\n</answer>"),
        Row(2, "1+1?", "2", "<think>one plus one</think>\n<answer>\n\\boxed{2}\n</answer>"),
        Row(3, "5+5?", "10", "<think>5+5=10</think>\n<answer>\n\\boxed{10}\n</answer>"),
    ]
    # With guidance_optional the untraced row trains unguided instead.
    optional = dataclasses.replace(FieldMap.openr1_math(), guidance_optional=True)
    rows = load_rows(DataConfig(path=path, fields=optional), parse_gold).rows
    untraced = Row(1, "3+3?", "6", "")
    assert rows == [loaded.rows[0], untraced, *loaded.rows[1:]]


def test_openr1_mapping_rejects_mismatched_correctness(tmp_path):
    record = {**OPENR1[0], "correctness_math_verify": [True]}
    path = write_jsonl(tmp_path / "openr1.jsonl", [record])
    with pytest.raises(DataError, match="2 traces but 1 correctness flags"):
        load_rows(DataConfig(path=path, fields=FieldMap.openr1_math()))


def test_hf_saved_dataset_gives_the_same_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = [{**GOOD, "answer": str(i)} for i in range(4)]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", records)
    folder = str(tmp_path / "hf")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(folder)
    hf_rows = load_rows(DataConfig(path=folder, format="hf_disk", split="train")).rows
    assert hf_rows == load_rows(DataConfig(path=jsonl)).rows


def test_format_must_be_named_when_the_suffix_does_not_tell(tmp_path):
    with pytest.raises(ValueError, match="set format"):
        load_rows(DataConfig(path=str(tmp_path / "rows.txt")))
