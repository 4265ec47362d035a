"""Resume state of one file being restored: which ranges are written and checked, with the BLAKE3
chaining value of each, kept beside the temporary file (``.<name>.pyengine-part.state``).

JSON lines: a header naming the blob version and the range layout, then one line per range as it
is checked (``{"i": 3, "cv": "<64 hex>"}``). A range is recorded only after the native writer
checked it (GCM tags, service CRC64) and pwrote it, so after a kill -9 (the page cache survives
the process) a resumed run fetches only the ranges not listed. A header that does not match the
blob now (another ETag, size or layout) starts the file over. A line torn by the kill is ignored.

The last range is never recorded: its BLAKE3 state is not a complete subtree, so it is always
fetched again (one range at most). State lines are not fsync'd one by one: a power loss may lose
some, which only means fetching those ranges again; the whole-file digest is checked either way.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, TextIO


class PartState:
    """The checked ranges of one temporary file, appended to as ranges complete."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        #: range index -> BLAKE3 chaining value (32 bytes) of a checked range
        self.done: dict[int, bytes] = {}
        self._file: TextIO | None = None

    @classmethod
    def open(
        cls, path: Path, header: dict[str, Any], *, part_exists: bool, persist: bool = True
    ) -> PartState:
        """The recorded state when it belongs to this blob version and its temporary file still
        exists; otherwise a fresh state (the old file, if any, is replaced). Without ``persist``
        (a one-range file: its one range is the last, always fetched again) nothing is written."""
        state = cls(path, header)
        if not persist:
            return state
        if os.path.islink(path):
            os.unlink(path)  # never append to, or truncate, whatever a planted link points at
        if part_exists:
            state.done = _read(path, header)
        mode = "a" if state.done else "w"
        state._file = open(path, mode, encoding="ascii")  # noqa: SIM115 (closed by close())
        if mode == "w":
            state._file.write(json.dumps(header, sort_keys=True) + "\n")
            state._file.flush()
        return state

    def record(self, index: int, cv: bytes) -> None:
        self.done[index] = cv
        if self._file is None:
            return
        self._file.write(json.dumps({"i": index, "cv": cv.hex()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        if self._file is None:
            return  # never persisted (or already removed)
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read(path: Path, header: dict[str, Any]) -> dict[int, bytes]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    if not lines:
        return {}
    try:
        if json.loads(lines[0]) != header:
            return {}
    except ValueError:
        return {}
    done: dict[int, bytes] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            cv = bytes.fromhex(entry["cv"])
            index = int(entry["i"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
        if len(cv) == 32 and 0 <= index < int(header.get("ranges", 0)) - 1:
            done[index] = cv
    return done
