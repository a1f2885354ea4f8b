"""Errors we raise on purpose, and mistakes in the flags, reach the command line as one
`error:` line and exit code 2 (issues 16, 29): each bad-file kind through prepare_data.py and
train.py before any compile, and each command-line mistake through every script.

Most cases run a script's `cli.run(main)` in this process (an interpreter start with JAX
costs seconds); one real process per script proves the exit code and the absence of a
traceback end to end."""

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import pytest
from absl import app, flags
from jax import monitoring

from g2rpo_jax import cli
from g2rpo_jax.alarms import TrainingAlarm
from g2rpo_jax.config import ConfigError
from g2rpo_jax.data import DataError

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ("train.py", "evaluate.py", "export_hf.py", "prepare_data.py")
_GOOD = {"prompt": "What is 1+2?", "answer": "3", "guidance": "<answer>3</answer>"}
# kind → (the bad line, what the message must name besides file:row)
_BAD = {
    "bad_json": ('{"prompt": "x", ', "bad JSON line"),
    "empty_trace": (json.dumps({**_GOOD, "guidance": ""}), "'guidance'"),
    "missing_field": (json.dumps({k: v for k, v in _GOOD.items() if k != "answer"}), "'answer'"),
    "wrong_type": (json.dumps({**_GOOD, "answer": 3}), "'answer'"),
}
# Emitted by jax for each XLA compile (jit or eager op) that misses the in-memory cache.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def bad_file(directory: pathlib.Path, kind: str) -> str:
    """Rows 0, 1 and 3 are good; row 2 is the bad one."""
    lines = [json.dumps(_GOOD)] * 2 + [_BAD[kind][0], json.dumps(_GOOD)]
    path = directory / f"{kind}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def required_flags(script: str, directory: pathlib.Path) -> list[str]:
    """Values for the script's required flags; nothing reads them before the mistake."""
    return {
        "train.py": [f"--workdir={directory / 'work'}"],
        "evaluate.py": [f"--model={directory / 'model'}", f"--data={directory / 'x.jsonl'}"],
        "export_hf.py": [f"--checkpoint={directory / 'work'}", f"--out={directory / 'hf'}"],
        "prepare_data.py": [
            f"--input={directory / 'x.jsonl'}",
            f"--output={directory / 'out'}",
            "--difficulty=pass_rate",
        ],
    }[script]


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[float]]:
    """The durations of the XLA compiles (jit or eager op) made inside the block."""
    compiles = []

    def on_event(event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            compiles.append(duration)

    monitoring.register_event_duration_secs_listener(on_event)
    try:
        yield compiles
    finally:
        monitoring.unregister_event_duration_listener(on_event)


def test_the_compile_counter_sees_a_compile():
    with counting_compiles() as compiles:
        jax.jit(lambda x: x + 1)(jnp.zeros(3))
    assert compiles


@dataclasses.dataclass(frozen=True)
class Result:
    code: object  # SystemExit's code
    stdout: str
    stderr: str
    compiles: int

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def forget_flags(keep: set[str]) -> None:
    """Removes the flags not in `keep` and unparses the rest."""
    for name in set(flags.FLAGS) - keep:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


@pytest.fixture
def run_here(monkeypatch, capsys):
    """`run_here(script, *args)`: runs scripts/SCRIPT as `__main__` in this process.

    Each call first removes the flags the previous one defined (the config overrides that
    parsing defines too): the scripts define flags of the same names in absl's one registry.
    """
    app.define_help_flags()  # app.run defines them once per process; keep them across calls
    ours = set(flags.FLAGS)
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

    def run(script: str, *args: str) -> Result:
        forget_flags(ours)
        path = str(REPO / "scripts" / script)
        # ml_collections reads the overrides from sys.argv itself.
        monkeypatch.setattr(sys, "argv", [path, *args])
        capsys.readouterr()
        with counting_compiles() as compiles, pytest.raises(SystemExit) as exit_info:
            runpy.run_path(path, run_name="__main__")
        out, err = capsys.readouterr()
        return Result(exit_info.value.code, out, err, len(compiles))

    yield run
    forget_flags(ours)


def assert_one_error_line(result: Result, expected: str) -> None:
    assert result.code == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    lines = result.lines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    assert lines[-1].startswith(expected), lines[-1]


@pytest.mark.parametrize("script", ["prepare_data.py", "train.py"])
@pytest.mark.parametrize("kind", list(_BAD))
def test_a_bad_file_is_one_error_line_and_exit_2(tmp_path, kind, script, run_here):
    path = bad_file(tmp_path, kind)
    if script == "train.py":
        args = ["--config=configs/qwen3_0p6b.py:smoke", f"--config.data.path={path}"]
        result = run_here(script, *args, f"--workdir={tmp_path / 'work'}")
    else:
        result = run_here(script, f"--input={path}", f"--output={tmp_path / 'out'}")
    assert_one_error_line(result, f"error: {path}:2 ")
    assert _BAD[kind][1] in result.lines()[-1]
    assert result.compiles == 0  # nothing is compiled before the data is validated


# (args, the line through train.py and prepare_data.py); scripts without --config reject it.
_MISTAKES = {
    "typo_key": (
        ["--config=configs/demo.py", "--config.sampling.share_prefx=true"],
        "error: --config.sampling.share_prefx: no such key in configs/demo.py; did you mean "
        "sampling.",
    ),
    "no_file": (["--config=configs/nope.py"], "error: --config: configs/nope.py: no such file"),
    "no_variant": (
        ["--config=configs/demo.py:nosuchvariant"],
        "error: --config: configs/demo.py:nosuchvariant: unknown config variant 'nosuchvariant'",
    ),
    "bad_value": (
        ["--config=configs/demo.py", "--config.guidance.ratio=abc"],
        "error: flag --config.guidance.ratio=abc: could not convert string to float: 'abc'",
    ),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("mistake", list(_MISTAKES))
def test_a_command_line_mistake_is_one_error_line_and_exit_2(tmp_path, mistake, script, run_here):
    args, expected = _MISTAKES[mistake]
    result = run_here(script, *required_flags(script, tmp_path), *args)
    if script in ("train.py", "prepare_data.py"):
        assert_one_error_line(result, expected)
    else:
        assert_one_error_line(result, "error: Unknown command line flag 'config'")
    assert not os.listdir(tmp_path)  # nothing was written: no workdir, no output


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unknown_flag_is_one_error_line_and_exit_2(tmp_path, script, run_here):
    result = run_here(script, *required_flags(script, tmp_path), "--nosuchflag")
    assert_one_error_line(result, "error: Unknown command line flag 'nosuchflag'")


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("grpo.grop_size", "grpo.group_size"),
        ("samplng.temperature", "sampling.temperature"),
        ("sampling.share_prefx", "sampling."),  # a key of the group, whichever exist then
    ],
)
def test_an_unknown_config_key_is_named_with_the_closest_existing_one(
    tmp_path, override, suggestion, run_here
):
    args = [f"--workdir={tmp_path}", "--config=configs/demo.py", f"--config.{override}=3"]
    result = run_here("train.py", *args)
    assert result.code == 2
    match = re.fullmatch(
        rf"error: --config\.{re.escape(override)}: no such key in configs/demo\.py; "
        r"did you mean ((\w+)\.(\w+))\?",
        result.lines()[-1],
    )
    assert match, result.lines()
    assert match[1].startswith(suggestion)
    config = runpy.run_path("configs/demo.py")["get_config"]()
    assert match[3] in config[match[2]]


def test_a_good_command_line_still_reaches_main_with_its_overrides(tmp_path, run_here):
    """`--config.data.path` is applied: train reads (and rejects) exactly that file."""
    path = bad_file(tmp_path, "missing_field")
    args = [
        "--config=configs/demo.py:smoke",
        f"--config.data.path={path}",
        "--noconfig.train.plots",
    ]
    result = run_here("train.py", f"--workdir={tmp_path}", *args)
    assert_one_error_line(result, f"error: {path}:2 ")


def test_help_still_prints_the_flags(run_here):
    result = run_here("prepare_data.py", "--help")
    assert result.code == 1  # absl's
    assert result.stdout.startswith("Validates a JSONL / Parquet / saved-HF file")
    assert "--difficulty: <keep|trace_length|pass_rate>" in result.stdout


def test_the_traceback_env_var_shows_the_traceback_of_our_errors(tmp_path, monkeypatch, run_here):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    path = bad_file(tmp_path, "missing_field")
    with pytest.raises(DataError):
        run_here("prepare_data.py", f"--input={path}", f"--output={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match="no such file"):
        run_here("train.py", f"--workdir={tmp_path}", "--config=configs/nope.py")


# One real process per script: the exit code and stderr as a user sees them.


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    # JAX_LOG_COMPILES: every jit compile logs "Compiling ..."; none may happen before the
    # data is validated.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_LOG_COMPILES="1", **env)
    env.pop(cli.TRACEBACK_ENV, None)
    command = [sys.executable, str(REPO / "scripts" / name), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_real_process_prints_one_line_and_exits_2(tmp_path, script):
    path = bad_file(tmp_path, "missing_field")
    # One of each kind: our error in main, a config mistake, flag mistakes.
    args, expected = {
        "train.py": (
            ["--config=configs/qwen3_0p6b.py:smoke", f"--config.data.path={path}"],
            f"error: {path}:2 ",
        ),
        "prepare_data.py": _MISTAKES["typo_key"],
        "evaluate.py": (_MISTAKES["no_file"][0], "error: Unknown command line flag 'config'"),
        "export_hf.py": (["--nosuchflag"], "error: Unknown command line flag 'nosuchflag'"),
    }[script]
    result = run_script(script, *required_flags(script, tmp_path), *args)
    assert "Compiling" not in result.stderr
    assert_one_error_line(Result(result.returncode, result.stdout, result.stderr, 0), expected)


# The wrapper alone.


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
