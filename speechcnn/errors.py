"""User errors as one line on stderr and exit status 2, tracebacks only when asked.

A wrong value (a ValueError raised by speechcnn: a bad setting, a missing data folder, an
unusable checkpoint or run folder) or a failed download is the user's to fix, and the message
says what to fix; a traceback around it only hides it. jsonargparse wraps an error raised while
it builds the data module or the model in errors of its own (union subtypes, NoneType): the
message shown is speechcnn's, found along the exception's causes. `--verbose` on the command
line or SPEECHCNN_VERBOSE=1 in the environment shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

VERBOSE_ENV = "SPEECHCNN_VERBOSE"
VERBOSE_FLAG = "--verbose"
USAGE_EXIT = 2
PACKAGE_DIR = Path(__file__).resolve().parent

T = TypeVar("T")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from speechcnn.data.download import DownloadError

    return (ValueError, DownloadError)


def _raised_in_speechcnn(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def user_error(error: BaseException) -> BaseException | None:
    """The error raised by speechcnn itself that `error` is or wraps, if it is a user error.

    The outermost such error along `__cause__` (else `__context__`) wins: it carries the most
    context (a run folder around a checkpoint's error), and jsonargparse's own errors around
    it, which name types rather than the value that was wrong, are passed over.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    types = _user_error_types()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types) and _raised_in_speechcnn(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (several lines joined)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def verbose_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether tracebacks were asked for, and `argv` without the `--verbose` flag."""
    rest = [a for a in argv if a != VERBOSE_FLAG]
    env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or len(rest) != len(argv), rest


@contextmanager
def reported_errors(verbose: bool = False, prog: str = "speechcnn") -> Iterator[None]:
    """Turn a user error into `prog: error: MESSAGE` on stderr and exit status 2."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (only user errors are reported; others re-raised)
        found = None if verbose else user_error(error)
        if found is None:
            raise
        print(f"{prog}: error: {one_line(found)}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT) from None


def run_reporting_errors(function: Callable[[list[str]], T], argv: list[str], prog: str) -> T:
    """`function(argv)` with `--verbose` taken out of argv and user errors reported."""
    verbose, argv = verbose_requested(argv)
    with reported_errors(verbose, prog):
        return function(argv)
