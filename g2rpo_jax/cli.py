"""How scripts/*.py report the errors we raise on purpose: one line, exit code 2.

A `ConfigError`, a `DataError` (or a subclass of either), a missing / existing path the
user named, or a `TrainingAlarm` that stopped a run (train.stop_on_alarm) is a message for
the user, already naming the config key or `file:row` and field; a traceback under it only
hides it. Any other exception is a bug and keeps its traceback. `--traceback` or
`G2RPO_TRACEBACK=1` shows the traceback for ours too.

    if __name__ == "__main__":
        cli.run(main)
"""

import functools
import os
import sys
from collections.abc import Callable

from absl import app, flags

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


def guarded(main: Main) -> Main:
    """`main` with our own errors turned into one stderr line and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str]) -> object:
        try:
            return main(argv)
        except USER_ERRORS as e:
            if _show_traceback():
                raise
            sys.stdout.flush()
            print(one_line(e), file=sys.stderr, flush=True)
            # absl's app.run re-raises a SystemExit from main unchanged: the process exits 2.
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper


def run(main: Main) -> None:
    """`app.run(main)` with `guarded` error reporting."""
    app.run(guarded(main))
