"""The journal's SQLite layout: the tables, the schema version and its migrations, the SQL of
every batched write, and how a row becomes a FileRecord.

A journal outlives the pyengine that wrote it (a job killed before an upgrade is resumed after
it), so the layout only ever moves forward, one migration per version, inside the transaction
that opens the journal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from pyengine.errors import JournalError
from pyengine.state.records import FileRecord

SCHEMA_VERSION = 3

SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX jobs_by_endpoints ON jobs (source, dest, status);
CREATE TABLE files (
    file_id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    rel_path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    blob_name TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    block_bytes INTEGER NOT NULL,
    encrypted INTEGER NOT NULL,
    state TEXT NOT NULL,
    etag TEXT,
    blake3_hex TEXT,
    error TEXT,
    updated_ns INTEGER NOT NULL,
    encryptiondata TEXT
);
-- one row per path and job: the latest version (lookup on resume, keyset paging, summaries)
CREATE UNIQUE INDEX files_by_path ON files (job_id, rel_path);
CREATE TABLE blocks (
    file_id INTEGER NOT NULL REFERENCES files (file_id) ON DELETE CASCADE,
    block_index INTEGER NOT NULL,
    length_bytes INTEGER NOT NULL,
    crc64 INTEGER NOT NULL,
    xxh3_128 BLOB NOT NULL,
    PRIMARY KEY (file_id, block_index)
) WITHOUT ROWID;
"""


def _add_ctime_column(conn: sqlite3.Connection) -> None:
    """1 -> 2: the ctime of each file version (NULL for versions journaled before: FileRecord)."""
    conn.execute("ALTER TABLE files ADD COLUMN ctime_ns INTEGER")


#: where a job's files live besides the job's own destination: `pyengine finalize JOB --dest URL`
#: found them at ``dest`` (a redacted blob URL, no credential) after a Data Box import, the job's
#: prefix ``job_prefix`` replaced by the prefix of ``dest``; `pyengine verify URL` reads them there
SQL_CREATE_JOB_LOCATIONS = """CREATE TABLE IF NOT EXISTS job_locations (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    dest TEXT NOT NULL,
    job_prefix TEXT NOT NULL,
    recorded_ns INTEGER NOT NULL,
    -- one place per job: a later finalize (the right --dest after a wrong one) replaces it
    PRIMARY KEY (job_id)
) WITHOUT ROWID"""
# A finalize of the job at the place already recorded keeps the first time: that is the age verify
# gives the job's blobs (journal_queries.iter_committed_by_blob), and a later `finalize --deep`
# must not make them newer than the deltas that replaced some since. Another place replaces it.
SQL_RECORD_LOCATION = (
    "INSERT INTO job_locations (job_id, dest, job_prefix, recorded_ns) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (job_id) DO UPDATE SET dest = excluded.dest, job_prefix = excluded.job_prefix,"
    " recorded_ns = excluded.recorded_ns"
    " WHERE dest != excluded.dest OR job_prefix != excluded.job_prefix"
)


def _add_job_locations(conn: sqlite3.Connection) -> None:
    """2 -> 3: the job_locations table (empty: no job of an older journal was relocated)."""
    conn.execute(SQL_CREATE_JOB_LOCATIONS)


#: MIGRATIONS[v] upgrades a journal from schema v to v + 1, inside the opening transaction.
#: Add an entry (and bump SCHEMA_VERSION) for every schema change; never edit SCHEMA_V1 in place
#: without one, or journals of running migrations could not be resumed by the new version.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_ctime_column,
    2: _add_job_locations,
}


def init_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new journal, or migrate an older one up to SCHEMA_VERSION, in one
    IMMEDIATE transaction (two processes opening one new file cannot both create it). Raises
    JournalError naming path for a journal written by a newer pyengine."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not has_table:
            for statement in SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (1,))
            conn.execute("INSERT INTO meta VALUES ('next_file_id', 1)")
        (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                path,
                f"written by a newer pyengine (schema {version} > {SCHEMA_VERSION})",
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


FILE_COLUMNS = (
    "file_id, job_id, rel_path, size_bytes, mtime_ns, inode, device, blob_name, upload_id,"
    " block_bytes, encrypted, state, etag, blake3_hex, error, updated_ns, encryptiondata,"
    " ctime_ns"
)

SQL_INSERT_FILE = f"INSERT INTO files ({FILE_COLUMNS}) VALUES ({', '.join('?' * 18)})"
SQL_FILE_BY_PATH = f"SELECT {FILE_COLUMNS} FROM files WHERE job_id = ? AND rel_path = ?"
SQL_DELETE_FILE = "DELETE FROM files WHERE file_id = ?"
# A late acknowledgement for a version that begin_file has since replaced must not fail the whole
# batch on the foreign key: it is dropped instead.
SQL_ACK = (
    "INSERT OR REPLACE INTO blocks (file_id, block_index, length_bytes, crc64, xxh3_128)"
    " SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM files WHERE file_id = ?1)"
)
SQL_ENCRYPTION = "UPDATE files SET encryptiondata = ? WHERE file_id = ?"
SQL_STATE = "UPDATE files SET state = ?, error = ?, updated_ns = ? WHERE file_id = ?"
SQL_COMMITTED = (
    "UPDATE files SET state = 'committed', etag = ?, blake3_hex = ?, error = NULL, updated_ns = ?"
    " WHERE file_id = ?"
)


# CRC64 values are unsigned 64-bit; SQLite integers are signed 64-bit.
def crc_to_db(crc64: int) -> int:
    return crc64 - (1 << 64) if crc64 >= (1 << 63) else crc64


def crc_from_db(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def file_record_from_row(row: tuple[Any, ...]) -> FileRecord:
    """The FileRecord of one ``SELECT FILE_COLUMNS`` row (acked_blocks left empty)."""
    (
        file_id,
        job_id,
        rel_path,
        size_bytes,
        mtime_ns,
        inode,
        device,
        blob_name,
        upload_id,
        block_bytes,
        encrypted,
        state,
        etag,
        blake3_hex,
        error,
        updated_ns,
        encryptiondata,
        ctime_ns,
    ) = row
    return FileRecord(
        file_id=file_id,
        job_id=job_id,
        rel_path=rel_path,
        size_bytes=size_bytes,
        mtime_ns=mtime_ns,
        inode=inode,
        device=device,
        blob_name=blob_name,
        upload_id=upload_id,
        block_bytes=block_bytes,
        encrypted=bool(encrypted),
        state=state,
        etag=etag,
        blake3_hex=blake3_hex,
        error=error,
        updated_ns=updated_ns,
        encryptiondata=encryptiondata,
        ctime_ns=ctime_ns,
    )
