"""Mirror deletion (``--delete-destination``): which blobs provably have no source file, and
whether this run may delete them.

The rules (DESIGN.md "Errors, safety"), stricter than rclone's "not deleting files as there were
IO errors":
- a blob is a candidate only when no file the scan saw claims its name under the one naming rule
  (:func:`pyengine.engine.plan.names_claimed`, which also covers the names the service would
  make of a rejected file name) and the filters would take it;
- nothing is deleted unless the scan of the whole tree met no error, no file failed, and every copy
  of the run was committed and journaled (the caller flushes the journal first);
- a limit refuses a run that would delete more than 10 % of the blobs under the prefix by default,
  or any blob when the source tree is empty, unless ``--max-delete`` says otherwise.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from pyengine.errors import ConfigError

#: default limit: at most this share of the blobs under the prefix in one run
DEFAULT_MAX_DELETE_PERCENT = 10.0

_LIMIT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


@dataclass(frozen=True)
class DeleteLimit:
    """At most ``count`` blobs, or at most ``percent`` % of the blobs under the prefix."""

    count: int | None = None
    percent: float | None = DEFAULT_MAX_DELETE_PERCENT
    #: given by the user: an empty source tree may then delete (the default never does)
    explicit: bool = False

    def allowed(self, blobs_under_prefix: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return int(blobs_under_prefix * self.percent / 100.0)

    def describe(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_max_delete(text: str) -> DeleteLimit:
    """``N`` (a count of blobs) or ``P%`` (a share of the blobs under the prefix)."""
    m = _LIMIT_RE.fullmatch(text)
    if m is None:
        raise ConfigError("--max-delete", f"expected N or P% (e.g. 100 or 5%), got {text!r}")
    value, pct = m.group(1), m.group(2)
    if pct:
        percent = float(value)
        if percent > 100:
            raise ConfigError("--max-delete", f"a share above 100% makes no sense: {text!r}")
        return DeleteLimit(count=None, percent=percent, explicit=True)
    if "." in value:
        raise ConfigError("--max-delete", f"a count of blobs is a whole number: {text!r}")
    return DeleteLimit(count=int(value), percent=None, explicit=True)


class ClaimedNames:
    """Every blob name claimed by a source file this run saw, for the deletion decision.

    Kept in a private temporary SQLite database on disk (``sqlite3.connect("")``), not in a
    Python set: a 10-million-file tree would hold a gigabyte of strings in RAM.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute("CREATE TABLE claimed (name TEXT PRIMARY KEY) WITHOUT ROWID")
        self.files = 0

    def add(self, names: Iterable[str], *, files: int) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO claimed (name) VALUES (?)", ((n,) for n in names)
        )
        self.files += files

    def __contains__(self, name: object) -> bool:
        row = self._db.execute("SELECT 1 FROM claimed WHERE name = ?", (name,)).fetchone()
        return row is not None

    def close(self) -> None:
        self._db.close()


def refusal(
    *,
    candidates: int,
    blobs_under_prefix: int,
    files_in_source: int,
    limit: DeleteLimit,
) -> str | None:
    """Why the limit refuses deleting ``candidates`` blobs, or None when it allows it."""
    if candidates == 0:
        return None
    if files_in_source == 0 and not limit.explicit:
        return (
            f"the source tree is empty: refusing to delete {candidates} blobs "
            "(a missing mount looks like this; pass --max-delete to allow it)"
        )
    allowed = limit.allowed(blobs_under_prefix)
    if candidates > allowed:
        return (
            f"{candidates} of {blobs_under_prefix} blobs under the prefix would be deleted, "
            f"more than the limit of {limit.describe()} ({allowed}); "
            "check the source, then pass --max-delete to allow it"
        )
    return None


__all__ = [
    "DEFAULT_MAX_DELETE_PERCENT",
    "ClaimedNames",
    "DeleteLimit",
    "parse_max_delete",
    "refusal",
]
