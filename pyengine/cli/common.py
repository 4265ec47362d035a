"""What every `pyengine` command shares: exit codes, the one-line usage error, the stderr console,
MiB flags, byte counts in words, and the credential flags.

Kept apart from main.py so each command module can use them without importing the parser that
wires the commands together (main.py imports every command module).
"""

from __future__ import annotations

import argparse
import math

from rich.console import Console

from pyengine.options import MiB

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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
