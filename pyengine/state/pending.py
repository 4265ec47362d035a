"""Blob properties a destination could not store, kept for ``pyengine finalize``.

A Data Box's Blob storage speaks REST 2019-02-02 at most: no index tags, no immutability or
legal hold, no blob-level tier (pyengine.targets.profile). A file copied there is committed
without them and each left-out property is journaled here, so that once the device's data is in
Azure a later ``pyengine finalize`` can stamp them on the blobs (Set Blob Tags, Set Blob Tier,
Set Immutability Policy / Legal Hold).

One row per (job, blob, kind); the value is JSON (pyengine.targets.profile.pending_json). Rows
are written through the journal's batch (pyengine.state.group_commit): durable with the group
commit that also records the file committed, never by a write of their own on the event loop.
A row may outlive its file's commit when the commit then failed: the reader joins on files in
state ``committed`` (see :func:`pending_properties`). The table lives beside the schema's (it is
created with ``CREATE TABLE IF NOT EXISTS``), so the schema's version and migrations do not
change for it.

Once ``pyengine finalize`` has stamped a blob in the account, a row in ``finalized_blobs`` says
so (:func:`mark_finalized`): a re-run of finalize checks that blob again but stamps nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pyengine.errors import JournalError

#: kinds of pending property
KINDS = ("tags", "tier", "immutability", "metadata")

SQL_CREATE = """CREATE TABLE IF NOT EXISTS pending_properties (
    job_id TEXT NOT NULL,
    blob   TEXT NOT NULL,
    what   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, blob, what)
)"""
SQL_UPSERT = (
    "INSERT OR REPLACE INTO pending_properties (job_id, blob, what, value) VALUES (?, ?, ?, ?)"
)
#: pending rows of a job's committed files (a file that failed after the row was written is not
#: on the destination: nothing to stamp)
SQL_OF_JOB = """SELECT p.blob, p.what, p.value FROM pending_properties p
    WHERE p.job_id = ? AND EXISTS (
        SELECT 1 FROM files f WHERE f.job_id = p.job_id AND f.blob_name = p.blob
        AND f.state = 'committed')
    ORDER BY p.blob, p.what"""


SQL_CREATE_FINALIZED = """CREATE TABLE IF NOT EXISTS finalized_blobs (
    job_id       TEXT NOT NULL,
    blob         TEXT NOT NULL,
    finalized_ns INTEGER NOT NULL,
    PRIMARY KEY (job_id, blob)
)"""
SQL_MARK_FINALIZED = (
    "INSERT OR REPLACE INTO finalized_blobs (job_id, blob, finalized_ns) VALUES (?, ?, ?)"
)


@dataclass(frozen=True)
class PendingProperty:
    blob: str
    what: str  # one of KINDS
    value: Any  # decoded JSON


def ensure_table(journal: Any) -> None:
    """Create the table if this journal has none yet (one durable statement)."""
    with journal._db_lock:
        try:
            journal._conn.execute(SQL_CREATE)
            journal._conn.execute(SQL_CREATE_FINALIZED)
        except sqlite3.Error as e:
            raise JournalError(journal.path, f"cannot write journal: {e}") from None


def record_pending(journal: Any, job_id: str, record: Any, pending: dict[str, Any]) -> None:
    """Journal the properties the blob of ``record`` (a FileRecord) could not get, by kind
    (joins the next group commit, like the file's own state)."""
    for what, value in pending.items():
        if what not in KINDS:
            raise ValueError(f"unknown pending kind {what!r}")
        params = (job_id, record.blob_name, what, pending_json(value))
        journal._append(SQL_UPSERT, params, record.file_id)


def pending_json(value: Any) -> str:
    """The journal's text form of one value (sorted keys: the same value, the same row)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pending_properties(journal: Any, job_id: str) -> list[PendingProperty]:
    """The properties still to stamp on the committed blobs of ``job_id`` (for finalize)."""
    journal.flush()
    ensure_table(journal)
    rows = journal._read(SQL_OF_JOB, (job_id,))
    return [PendingProperty(blob, what, json.loads(value)) for blob, what, value in rows]


def pending_by_blob(journal: Any, job_id: str) -> dict[str, dict[str, Any]]:
    """The pending properties of ``job_id``'s committed blobs, as blob -> {kind: value}."""
    out: dict[str, dict[str, Any]] = {}
    for p in pending_properties(journal, job_id):
        out.setdefault(p.blob, {})[p.what] = p.value
    return out


def is_finalized(journal: Any, job_id: str, blob: str) -> bool:
    """Whether finalize stamped ``blob`` of ``job_id`` already (ensure_table first)."""
    rows = journal._read(
        "SELECT 1 FROM finalized_blobs WHERE job_id = ? AND blob = ?", (job_id, blob)
    )
    return bool(rows)


def mark_finalized(journal: Any, job_id: str, blobs: list[str]) -> None:
    """Record ``blobs`` of ``job_id`` as stamped, in one durable transaction."""
    if not blobs:
        return
    now = time.time_ns()
    with journal._db_lock:
        journal._write([(SQL_MARK_FINALIZED, (job_id, blob, now)) for blob in blobs])


def files_pending(journal: Any, job_id: str) -> int:
    """How many committed blobs of ``job_id`` have a property pending."""
    return len({p.blob for p in pending_properties(journal, job_id)})
