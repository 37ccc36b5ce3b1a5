"""User errors as one line on stderr and exit status 2, tracebacks only when asked.

A ValueError raised by speechcnn (a bad setting, data folder, checkpoint or run folder) or a
failed download says what to fix, which a traceback only hides; it is found along the causes of
jsonargparse's wrapping errors. `--verbose` or SPEECHCNN_VERBOSE=1 shows the full traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

VERBOSE_ENV = "SPEECHCNN_VERBOSE"
VERBOSE_FLAG = "--verbose"
USAGE_EXIT = 2
PACKAGE_DIR = Path(__file__).resolve().parent

T = TypeVar("T")


def _raised_in_speechcnn(error: BaseException) -> bool:
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)]
    return bool(files) and Path(files[-1]).resolve().is_relative_to(PACKAGE_DIR)


def user_error(error: BaseException) -> BaseException | None:
    """The user error raised by speechcnn itself that `error` is or wraps, if any: the outermost
    along `__cause__` (else `__context__`), which carries the most context; jsonargparse's own
    errors around it, which name types rather than the wrong value, are passed over."""
    from speechcnn.data.download import DownloadError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ValueError | DownloadError) and _raised_in_speechcnn(current):
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
