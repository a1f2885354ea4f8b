"""Errors we raise on purpose reach the command line as one `error:` line and exit code 2
(issue 16): each bad-file kind through prepare_data.py and train.py, before any compile."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from g2rpo_jax import cli
from g2rpo_jax.alarms import TrainingAlarm
from g2rpo_jax.config import ConfigError
from g2rpo_jax.data import DataError

REPO = pathlib.Path(__file__).resolve().parent.parent
_GOOD = {"prompt": "What is 1+2?", "answer": "3", "guidance": "<answer>3</answer>"}
# kind → (the bad line, what the message must name besides file:row)
_BAD = {
    "bad_json": ('{"prompt": "x", ', "bad JSON line"),
    "empty_trace": (json.dumps({**_GOOD, "guidance": ""}), "'guidance'"),
    "missing_field": (json.dumps({k: v for k, v in _GOOD.items() if k != "answer"}), "'answer'"),
    "wrong_type": (json.dumps({**_GOOD, "answer": 3}), "'answer'"),
}


def bad_file(directory: pathlib.Path, kind: str) -> str:
    """Rows 0, 1 and 3 are good; row 2 is the bad one."""
    lines = [json.dumps(_GOOD)] * 2 + [_BAD[kind][0], json.dumps(_GOOD)]
    path = directory / f"{kind}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    # JAX_LOG_COMPILES: every jit compile logs "Compiling ..."; none may happen before the
    # data is validated.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_LOG_COMPILES="1", **env)
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def prepare_data(path: str, out: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    return run_script("prepare_data.py", f"--input={path}", f"--output={out}", **env)


def train(path: str, workdir: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    return run_script("train.py", "--config=configs/qwen3_0p6b.py:smoke",
                      f"--workdir={workdir}", f"--config.data.path={path}", **env)  # fmt: skip


@pytest.mark.parametrize("script", [prepare_data, train], ids=["prepare_data", "train"])
@pytest.mark.parametrize("kind", list(_BAD))
def test_a_bad_file_is_one_error_line_and_exit_2(tmp_path, kind, script):
    path = bad_file(tmp_path, kind)
    result = script(path, tmp_path / "out")
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert "Compiling" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert lines[-1].startswith(f"error: {path}:2 ")
    assert _BAD[kind][1] in lines[-1]


def test_the_traceback_env_var_shows_the_traceback_of_our_errors(tmp_path):
    result = prepare_data(bad_file(tmp_path, "missing_field"), tmp_path / "out",
                          **{cli.TRACEBACK_ENV: "1"})  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "DataError: " in result.stderr


# In-process: the wrapper alone, no interpreter start.


class _HubUnreachable(ConfigError):
    """Stands for a subclass another module adds (issue 16's offline error)."""


@pytest.mark.parametrize(
    "error",
    [ConfigError("config.data.path: set it"), DataError("f.jsonl:3: field 'answer': missing"),
     _HubUnreachable("no network"), FileNotFoundError("/x: not a model directory"),
     TrainingAlarm("alarm at step 20: …; raise config.data.max_completion_length (now 24)")],
    ids=["config", "data", "subclass", "path", "alarm"],
)  # fmt: skip
def test_our_errors_exit_2_with_one_line(error, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        cli.guarded(main)(["prog"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_a_message_over_several_lines_is_folded_into_one():
    assert (
        cli.one_line(DataError("a.jsonl:1:\n  field 'x': bad"))
        == "error: a.jsonl:1: field 'x': bad"
    )


def test_a_bug_keeps_its_exception():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.guarded(main)(["prog"])
