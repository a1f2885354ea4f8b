"""How scripts/*.py report the errors we raise on purpose: one line, exit code 2.

A `ConfigError`, a `DataError` (or a subclass of either), a missing / existing path the
user named, or a `TrainingAlarm` that stopped a run (train.stop_on_alarm) is a message for
the user, already naming the config key or `file:row` and field; a traceback under it only
hides it. So is a mistake in the flags themselves (an unknown flag or config key, a bad
value, a missing config file or variant). Any other exception is a bug and keeps its
traceback. `--traceback` or `G2RPO_TRACEBACK=1` shows the traceback for ours too (only the
variable while flags are parsed: `--traceback` is not read yet then).

    if __name__ == "__main__":
        cli.run(main)
"""

import difflib
import functools
import os
import re
import runpy
import sys
from collections.abc import Callable
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from g2rpo_jax.alarms import TrainingAlarm
from g2rpo_jax.config import ConfigError
from g2rpo_jax.data.schema import DataError

USAGE_EXIT_CODE = 2
# FileNotFoundError / FileExistsError: the library raises them for paths the user gave
# (model folder, workdir, --output without --overwrite).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    FileNotFoundError,
    FileExistsError,
    TrainingAlarm,
)
TRACEBACK_ENV = "G2RPO_TRACEBACK"

_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, f"Show the traceback of expected errors too (or {TRACEBACK_ENV}=1)."
)

Main = Callable[[list[str]], object]


def one_line(error: BaseException) -> str:
    """`error: <message>` with the message's line breaks folded, so it stays one line."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"error: {message}"


def _show_traceback() -> bool:
    env = os.environ.get(TRACEBACK_ENV, "").strip().lower()
    # Flags are unparsed when `guarded` runs outside app.run (tests, library callers).
    return env not in ("", "0", "false", "no") or (flags.FLAGS.is_parsed() and _TRACEBACK.value)


def _exit_with_one_line(error: BaseException) -> NoReturn:
    sys.stdout.flush()
    print(one_line(error), file=sys.stderr, flush=True)
    # absl's app.run re-raises a SystemExit unchanged: the process exits 2.
    raise SystemExit(USAGE_EXIT_CODE) from None


def guarded(main: Main) -> Main:
    """`main` with our own errors turned into one stderr line and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str]) -> object:
        try:
            return main(argv)
        except USER_ERRORS as e:
            if _show_traceback():
                raise
            _exit_with_one_line(e)

    return wrapper


def _flag_argument(argv: list[str], name: str) -> str | None:
    """The value argv gives flag `name`, read by absl's own rules (`--x=v`, `--x v`, last wins)."""
    only = flags.FlagValues()
    flags.DEFINE_string(name, None, "", flag_values=only)
    only(argv, known_only=True)
    return only[name].value


def _override_keys(argv: list[str], name: str) -> list[str]:
    """KEY of each `--NAME.KEY[=value]` / `--noNAME.KEY`, matched as ml_collections does."""
    pattern = re.compile(rf"-{{1,2}}(no)?{re.escape(name)}\.")
    return [arg.split("=", 1)[0].split(".", 1)[1] for arg in argv if pattern.match(arg)]


def _load_config(name: str, argument: str) -> ml_collections.ConfigDict:
    """`get_config(variant)` of the file in `--NAME=PATH[:variant]`, as ml_collections runs it."""
    path, *variant = argument.split(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"--{name}: {path}: no such file")
    try:
        return runpy.run_path(path)["get_config"](*variant)
    except USER_ERRORS as e:
        raise ConfigError(f"--{name}: {argument}: {e}") from e


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every group and field as a dotted path: `sampling`, `sampling.top_p`, ..."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


def _did_you_mean(key: str, keys: list[str]) -> str:
    """`; did you mean K?` with K the existing key nearest `key`, from its deepest group."""
    group = key.rpartition(".")[0]
    while group and group not in keys:
        group = group.rpartition(".")[0]
    candidates = [k for k in keys if k.startswith(f"{group}.")] or keys
    closest = difflib.get_close_matches(key, candidates, n=1, cutoff=0)
    return f"; did you mean {closest[0]}?" if closest else ""


def _check_config_flags(argv: list[str]) -> None:
    """Loads each config file argv names and checks its `--config.KEY` overrides exist.

    ml_collections reports a bad variant or key while flags are parsed, as a traceback, and
    a missing file not until the config is first read (never, if a script does not read it).
    """
    argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
    for name in list(flags.FLAGS):
        if not isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser):
            continue
        argument = _flag_argument(argv, name)
        if argument is None:
            continue  # absl reports overrides without a config file as unknown flags
        config = _load_config(name, argument)
        keys = _keys(config)
        for key in _override_keys(argv, name):
            # `a.b[0]`: the index is ml_collections' to check.
            if key.split("[", 1)[0] not in keys:
                raise ConfigError(
                    f"--{name}.{key}: no such key in {argument}{_did_you_mean(key, keys)}"
                )


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, its errors and config mistakes as one line and exit code 2."""
    try:
        _check_config_flags(argv)
        return flags.FLAGS(argv)
    except (flags.Error, *USER_ERRORS) as e:
        if _show_traceback():
            raise
        _exit_with_one_line(e)


def run(main: Main) -> None:
    """`app.run(main)` with `guarded` error reporting, from flag parsing on.

    Reads sys.argv (ml_collections finds `--config.KEY` overrides there itself).
    """
    app.run(guarded(main), flags_parser=_parse_flags)
