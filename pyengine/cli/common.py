"""What every `pyengine` command shares: the exit codes, the one-line usage error, the stderr
console, MiB flags, byte counts in words, and the credential flags.

Kept apart from main.py so each command module can use them without importing the parser that
wires the commands together (main.py imports every command module).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from rich.console import Console

from pyengine.errors import (
    PyEngineError,
)
from pyengine.options import MiB

# The one table of exit codes, for copy, resume, verify, rekey and jobs alike (README "Exit
# codes" and `pyengine --help` print EXIT_CODES_HELP).
EXIT_OK = 0  # done: every file copied or up to date (verify: every blob matches)
EXIT_FAILED = 1  # some files failed (or mismatched): the rest is done; a re-run retries them
EXIT_USAGE = 2  # usage or configuration error, found before any request that changes anything
EXIT_DESTINATION = 3  # destination unreachable, or credentials missing or refused
EXIT_SIGINT = 130  # interrupted by SIGINT (Ctrl-C): stopped cleanly, resumable
EXIT_SIGTERM = 143  # interrupted by SIGTERM (systemd, Kubernetes, `timeout`): likewise

EXIT_CODES_HELP = """\
exit codes:
  0    done: every file copied or up to date (verify: every blob matches)
  1    some files failed; the others are done, and re-running the command retries them
  2    usage or configuration error, found before any request that changes anything
  3    destination unreachable, or credentials missing or refused
  130  interrupted by SIGINT (Ctrl-C); the job is marked interrupted and resumable
  143  interrupted by SIGTERM; likewise"""


def exit_code_of(error: PyEngineError) -> int:
    """The exit code of an error that ended a command (the table above): each error class
    carries its own (pyengine/errors.py), so the library and the CLI agree."""
    return error.exit_code


# soft_wrap: an error stays on one line whatever the terminal width (scripts grep for it)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; this keeps the message on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}\n")


def positive(text: str) -> float:
    """A finite number above zero (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError("must be a positive finite number")
    return value


def size_mib(text: str) -> int:
    return int(positive(text) * MiB)


def kek_of(args: argparse.Namespace) -> Any:
    """The key-encryption key of --kek-file, or None without the flag."""
    from pyengine.crypto import load_kek_file

    return load_kek_file(args.kek_file) if args.kek_file else None


def add_credential_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connection-string",
        default=None,
        help="storage connection string (default: $AZURE_STORAGE_CONNECTION_STRING; a SAS on "
        "DEST, $AZURE_STORAGE_KEY or azure-identity are tried otherwise)",
    )
    p.add_argument("--journal", default=None, help="job store (default: the user's state dir)")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{n} B"
