"""Helpers shared by the journal's tests (test_journal, test_group_commit): a file begun and a
block acknowledged with fixed, plausible values, and a count read by an outside connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pyengine.state.journal import FileRecord, Journal

DEST = "https://acct.blob.core.windows.net/archive"
MiB = 1024 * 1024


def begin(
    j: Journal, job_id: str, rel_path: str, *, size_bytes: int = 100, mtime_ns: int = 1
) -> FileRecord:
    return j.begin_file(
        job_id,
        rel_path,
        size_bytes=size_bytes,
        mtime_ns=mtime_ns,
        inode=42,
        device=7,
        blob_name=f"pacs/{rel_path}",
        block_bytes=8 * MiB,
        encrypted=False,
    )


def ack(j: Journal, file_id: int, index: int) -> None:
    j.ack_block(
        file_id,
        index,
        length_bytes=8 * MiB,
        crc64=(1 << 64) - 1 - index,  # above 2**63: exercises the unsigned round trip
        xxh3_128=index.to_bytes(16, "big"),
    )


def rows_seen_by_other_connection(db_path: Path, sql: str) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()
