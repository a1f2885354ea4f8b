"""The paper's code data by default (issue 31): Blancy/verifiable-coding-problems-CoT.

Offline the code config must stop in one line naming what it could not fetch; with a local
copy laid out as the hub repo is (read by the same `datasets.load_dataset` call) it trains.
Its tests live in `verification_info`, a JSON string or a dict.
"""

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g2rpo_jax import config as config_lib
from g2rpo_jax.data import DataConfig, DataError, FieldMap, source_fields
from g2rpo_jax.data.load import load_rows
from g2rpo_jax.data.schema import to_row
from g2rpo_jax.rewards import SandboxConfig, code, format_reward
from tests import runnable_sandbox
from tests.test_cli_errors import run_script
from tests.test_trainer import ROW_WISE_FLAGS

_CODE = "configs/qwen3_0p6b_code.py"
_FIELDS = FieldMap.verifiable_coding_cot()


def _info(cases: list[dict], language: str = "python") -> str:
    return json.dumps({"language": language, "test_cases": cases})


def _stdin(out: str) -> dict:
    return {"input": "", "output": out, "type": "stdin_stdout", "fn_name": None}


def _call(x: int) -> dict:
    return {"input": f"[{x}]", "output": f"[{x}]", "type": "function_call", "fn_name": "f"}


# Short enough for the smoke config's byte tokenizer (96-token prompts, ℓ = 24 tokens): each
# trace is a whole program, so guided candidates carry a solution the grader runs.
_ROWS = [
    ("Print 3.", "```python\nprint(3)\n```", _info([_stdin("3")])),
    ("Write f(x) = x.", "```py\nf=lambda x:x\n```", _info([_call(1), _call(-2)])),
    ("Print 7.", "```python\nprint(7)\n```", _info([_stdin("7\n")])),
    ("Print 3 in C++.", "```python\nprint(3)\n```", _info([_stdin("3")], language="cpp")),
    ("Write f(x) = x.", "```py\nf=lambda x:x\n```", _info([_call(5)])),
    ("Print 3 again.", "```python\nprint(3)\n```", _info([_stdin("3"), _stdin("3\n")])),
    ("Write f.", "```py\nf=lambda x:x\n```", _info([_call(0), _call(9)])),
    ("Print 7 again.", "```python\nprint(7)\n```", _info([_stdin("7")])),
    ("Say 3.", "```python\nprint(3)\n```", _info([_stdin("3")])),
]


def code_copy(directory: pathlib.Path) -> str:
    """A local copy of the hub repo: data/train-*.parquet with its columns (no answer)."""
    rows = [
        {"source": "fixture", "problem_id": f"p{i}", "problem_statement": p, "generations": g,
         "verification_info": v, "gold_standard_solution": g}
        for i, (p, g, v) in enumerate(_ROWS)
    ]  # fmt: skip
    folder = directory / "verifiable-coding-problems-CoT"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    return str(folder)


def test_the_hub_set_brings_its_columns() -> None:
    assert source_fields(config_lib.CODE_COT, FieldMap()) == _FIELDS
    assert source_fields("hf:/copies/verifiable-coding-problems-CoT/", FieldMap()) == _FIELDS


@pytest.mark.parametrize("as_json", [True, False])
def test_verification_info_becomes_the_tests(as_json: bool) -> None:
    cases = [_stdin("3"), _call(1)]
    info = {"language": "python", "test_cases": cases}
    record = {"problem_statement": "p", "generations": "trace",
              "verification_info": json.dumps(info) if as_json else info}  # fmt: skip
    row = to_row(record, index=0, where="f:0", fields=_FIELDS)
    assert (row.prompt, row.guidance, row.answer, row.tests) == ("p", "trace", "", cases)


def test_a_trace_takes_the_rewarded_format() -> None:
    program = "```python\nprint(1)\n```"
    record = {"problem_statement": "Print 1.", "generations": f"<think>easy</think>\n{program}",
              "verification_info": _info([_stdin("1")])}  # fmt: skip
    row = to_row(record, index=0, where="f:0", fields=_FIELDS)
    assert row.guidance == f"<think>easy</think>\n<answer>\n{program}\n</answer>"
    assert format_reward([""], [row.guidance]) == [1.0]
    sandbox = runnable_sandbox.runnable(SandboxConfig(timeout_s=3.0))
    assert code.code_reward([""], [row.guidance], [row.tests], sandbox=sandbox) == [1.0]


def test_tests_in_another_language_make_a_bad_row() -> None:
    record = {"problem_statement": "p", "generations": "t", "verification_info": _info([], "cpp")}
    with pytest.raises(
        DataError, match=r"f:3: field 'tests' \(column 'verification_info'\).*'cpp'"
    ):
        to_row(record, index=3, where="f:3", fields=_FIELDS)


def test_a_local_copy_loads_through_datasets(tmp_path: pathlib.Path) -> None:
    path = "hf:" + code_copy(tmp_path)
    config = DataConfig(path=path, fields=source_fields(path, FieldMap()), skip_bad_rows=True)
    loaded = load_rows(config, tests_check=code.check_tests)
    assert (len(loaded.rows), loaded.bad_rows) == (8, 1)  # the C++ row, counted
    assert loaded.rows[1].tests == [_call(1), _call(-2)]
    sandbox = runnable_sandbox.runnable(SandboxConfig(timeout_s=3.0))
    traces = [f"{row.guidance}\ntrailing text" for row in loaded.rows]
    scores = code.code_reward([""] * 8, traces, [r.tests for r in loaded.rows], sandbox=sandbox)
    assert scores == [1.0] * 8


def test_offline_the_code_command_names_the_model_and_data_it_needs(tmp_path) -> None:
    result = run_script("train.py", f"--config={_CODE}", f"--workdir={tmp_path / 'work'}",
                        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr and "Compiling" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    for needed in ("model Qwen/Qwen3-0.6B-Base", f"data {config_lib.CODE_COT}",
                   "--config.data.path"):  # fmt: skip
        assert needed in lines[-1]


def test_the_code_command_trains_on_a_local_copy(tmp_path) -> None:
    python = runnable_sandbox.runnable(SandboxConfig()).python
    work = tmp_path / "work"
    result = run_script(
        "train.py", f"--config={_CODE}:smoke", f"--workdir={work}",
        f"--config.data.path=hf:{code_copy(tmp_path)}", "--config.train.num_steps=2",
        f"--config.rewards.sandbox.python={python}", "--config.train.progress_bar=False",
        *ROW_WISE_FLAGS, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "done at step 2/2" in result.stdout
    steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    # Every candidate is guided (α = 5/6 of G = 4) by a whole solution: the grader ran it.
    assert all(r["reward/code"] == 1.0 for r in steps)
