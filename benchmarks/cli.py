"""What the benchmark commands share on the command line: bad input ends in one line on
standard error naming the problem and exit status 2, never a traceback.

Example::

    >>> parser = ArgumentParser(prog="python -m benchmarks.run")
    >>> parser.add_argument("--limit", type=positive_int)  # doctest: +SKIP
    >>> raise SystemExit(run_command(main_body, argv))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

__all__ = ["ArgumentParser", "UsageError", "positive_int", "run_command", "check_model_path"]


class UsageError(ValueError):
    """Bad input named by the command itself."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line: ``<prog>: error: <what>``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_model_path(spec: str | None, option: str = "--model") -> None:
    """A ``--model`` that names a local path (it starts with ``/``, ``.`` or ``~``, ends with
    ``/`` or has more than one ``/``) must be a directory; ``org/name`` hub ids are left to
    ``from_pretrained``."""
    if spec is None:
        return
    looks_local = spec.startswith((".", "~", "/")) or spec.count("/") > 1 or spec.endswith("/")
    if looks_local and not Path(spec).expanduser().is_dir():
        raise UsageError(f"{option} {spec}: no such model directory")


def run_command(body: Callable[[], int], prog: str) -> int:
    """``body()``; a ``ValueError`` or ``OSError`` (bad files, columns, labels, models, ...)
    becomes one line on standard error and exit status 2."""
    try:
        return body()
    except (ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
