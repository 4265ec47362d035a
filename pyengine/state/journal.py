"""Durable job store: one SQLite file (WAL) recording what each job planned, sent and committed.

A job runs for days and may be killed (kill -9, power loss) at any instant. On restart the uploader
asks the journal what is already done: which file versions are committed, which blocks of an
unfinished file the service already acknowledged, and which files were mid-commit.

This module is the uploader's side: opening the journal, job rows, and each file's way through
the states below. The rest lives beside it: :mod:`~pyengine.state.group_commit` (how writes are
batched and when they are durable: read it before relying on a write surviving kill -9),
:mod:`~pyengine.state.journal_queries` (listings, summaries, verify's reads),
:mod:`~pyengine.state.schema` (tables, migrations, SQL) and :mod:`~pyengine.state.records` (the
records handed out). Every name those modules export stays importable from here.

File states::

    planned -> uploading -> committing -> committed
                  |              |
                  +--------------+-----> failed | skipped

A file whose identity (size, mtime_ns, ctime_ns, inode, device) differs from its journaled
version when :meth:`Journal.begin_file` is called starts over: a new ``upload_id``, no acknowledged
blocks, state ``planned``, and the returned record's ``previous_state`` is ``"changed"``. ctime is
part of it because an in-place rewrite can restore mtime, never ctime. One row is kept
per (job, rel_path): the latest version, so summaries count each path once however often a job
was resumed.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from pyengine.errors import ConfigError, JournalError
from pyengine.state.begun import BegunPaths
from pyengine.state.group_commit import FILE_ID_RANGE
from pyengine.state.journal_queries import PAGE_ROWS, JournalQueries
from pyengine.state.records import (
    JOB_STATES,
    MAX_ERROR_CHARS,
    PENDING_STATES,
    STATES,
    BlockAck,
    FileRecord,
    JobInfo,
    JobSummary,
    UnbegunSkip,
    contains_secret,
    default_journal_path,
    default_state_dir,
    one_line,
    scrub_secrets,
)
from pyengine.state.schema import (
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_VERSION,
    SQL_ACK,
    SQL_COMMITTED,
    SQL_DELETE_FILE,
    SQL_ENCRYPTION,
    SQL_FILE_BY_PATH,
    SQL_INSERT_FILE,
    SQL_STATE,
    crc_to_db,
    file_record_from_row,
    init_schema,
)

# The names these had when they lived here; tests outside state/ still import them.
_SCHEMA_V1 = SCHEMA_V1
_SQL_ACK = SQL_ACK


#: where the state column sits among SQL_INSERT_FILE's parameters (etag, blake3_hex, error and
#: updated_ns follow it; test_journal_fresh checks this against the schema)
_INSERT_STATE = 11
#: the few reasons a file is skipped ("up to date ..."), made one-line once each, not per file
_skip_reason = functools.lru_cache(maxsize=256)(one_line)

#: upload ids drawn from the OS at once (16 bytes each)
UPLOAD_IDS_PER_DRAW = 4096


class Journal(JournalQueries):
    """The job store. Open with :meth:`Journal.open`; use as a context manager or call close()."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: jobs created by this journal object, still running: no earlier run of them can have
        #: journaled a file, so begin_file needs no SELECT for a path they have not begun
        self._begun: dict[str, BegunPaths] = {}
        self._random = b""
        self._random_at = 0

    def _new_upload_id(self) -> str:
        """32 random hex digits. os.urandom releases the GIL, and on a loaded loop taking it
        back cost 12 µs a file (the journal's writer thread holds it meanwhile): one call per
        UPLOAD_IDS_PER_DRAW files."""
        at = self._random_at
        if at >= len(self._random):
            self._random, at = os.urandom(16 * UPLOAD_IDS_PER_DRAW), 0
        self._random_at = at + 16
        return self._random[at : at + 16].hex()

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str] | None = None) -> Journal:
        """Open the journal at path (None = the default) for a command that reads jobs: a
        mistyped path is a one-line ConfigError, never a new empty journal."""
        db_path = Path(path) if path is not None else default_journal_path()
        if not db_path.is_file():
            raise ConfigError(str(db_path), "no journal here (--journal PATH)")
        return cls.open(db_path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        batch_max_ops: int = 10_000,
        max_delay_s: float = 2.0,
        busy_timeout_s: float = 30.0,
    ) -> Journal:
        """Open (creating if needed) the journal at path; None = :func:`default_journal_path`.

        Raises JournalError (one line, naming the path) when the file cannot be used.
        """
        db_path = Path(path) if path is not None else default_journal_path()
        shown = str(db_path)
        try:
            # The journal names every source file: medical archives put patient names in paths.
            db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not db_path.exists():
                os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            raise JournalError(shown, f"cannot create journal: {e.strerror or e}") from None
        conn = read_conn = None
        try:
            conn = sqlite3.connect(
                shown,
                timeout=busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT: we decide what one transaction is
                check_same_thread=False,  # aflush commits from a worker thread (under _db_lock)
            )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(
                    shown, f"WAL mode unavailable here (got {mode}); use a local disk"
                )
            # WAL + NORMAL survives a killed process but may lose the last commits on power loss
            # or an OS crash, and a lost "committing" could let a resumed job commit a blob twice.
            # FULL fsyncs the WAL at every commit; group commit makes that one fsync per batch
            # (about one per second), so the stronger level costs nothing measurable.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            read_conn = sqlite3.connect(
                shown, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            journal = cls(
                conn,
                shown,
                batch_max_ops=batch_max_ops,
                max_delay_s=max_delay_s,
                read_conn=read_conn,
            )
            init_schema(conn, shown)
        except sqlite3.Error as e:
            for c in (conn, read_conn):
                if c is not None:
                    c.close()
            raise JournalError(shown, f"cannot open journal: {e}") from None
        except JournalError:
            for c in (conn, read_conn):
                if c is not None:
                    c.close()
            raise
        return journal

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs -------------------------------------------------------------------------------

    def create_job(self, source: str, dest: str, options: dict[str, Any]) -> str:
        """Record a new running job; returns its id ("20261124-0807-3f2a": sorts by creation).

        dest must already be redacted: a SAS signature or account key in dest or options is
        refused with ValueError (the journal is a plain file that outlives the job).
        """
        if contains_secret(dest):
            raise ValueError("dest carries a credential (sig= / AccountKey=): pass a redacted URL")
        try:
            options_json = json.dumps(options, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"job options must be JSON-serialisable: {e}") from None
        if contains_secret(options_json):
            raise ValueError("job options carry a credential (sig= / AccountKey=)")
        now_ns = time.time_ns()
        stamp = time.strftime("%Y%m%d-%H%M", time.gmtime(now_ns / 1e9))
        for _ in range(16):
            job_id = f"{stamp}-{secrets.token_hex(2)}"
            try:
                self._write_now(
                    "INSERT INTO jobs VALUES (?, ?, ?, ?, 'running', ?, ?)",
                    (job_id, source, dest, options_json, now_ns, now_ns),
                )
            except JournalError as e:
                if "UNIQUE" in str(e):
                    continue  # 1 in 65,536 within the same minute: draw again
                raise
            self._begun[job_id] = BegunPaths()
            return job_id
        raise JournalError(self.path, "cannot allocate a job id")

    def finish_job(self, job_id: str, status: str) -> None:
        """Flush, then mark the job completed / failed / interrupted / cancelled (durably);
        an interrupted job is resumed by the next run of the same source and destination."""
        if status not in JOB_STATES:
            raise ValueError(f"job status must be one of {', '.join(JOB_STATES)}: {status!r}")
        self.flush()
        self._begun.pop(job_id, None)
        if not self._read("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)):
            raise JournalError(job_id, "no such job in the journal")
        self._write_now(
            "UPDATE jobs SET status = ?, updated_ns = ? WHERE job_id = ?",
            (status, time.time_ns(), job_id),
        )

    # --- files ------------------------------------------------------------------------------

    def file_record(self, job_id: str, rel_path: str) -> FileRecord | None:
        """The journaled (latest) version of rel_path in job_id, with its acknowledged blocks."""
        self._flush_if_touched(path=(job_id, rel_path))
        sql = SQL_FILE_BY_PATH
        rows = self._read(sql, (job_id, rel_path))
        if not rows:
            return None
        if self._pending(file_id=rows[0][0]):  # a state change or ack of it is still pending
            self._flush_if_touched(file_id=rows[0][0])
            rows = self._read(sql, (job_id, rel_path))
        record = file_record_from_row(rows[0])
        record.acked_blocks = self._load_blocks(record.file_id)
        return record

    def begin_file(
        self,
        job_id: str,
        rel_path: str,
        *,
        size_bytes: int,
        mtime_ns: int,
        inode: int,
        device: int,
        blob_name: str,
        block_bytes: int,
        encrypted: bool,
        ctime_ns: int | None = None,
        force_new: bool = False,
    ) -> FileRecord:
        """The record to upload rel_path with: the journaled one when its identity matches (with
        its upload_id, state and acknowledged blocks), else a new version (new upload_id, state
        planned, no blocks; ``previous_state == "changed"`` when an older version was dropped).

        A match with a different blob_name, block_bytes or encryption also starts over: its
        block IDs or payload would not fit the new plan. ``ctime_ns`` is part of the identity
        (None only where the caller has none: it then matches a version journaled without one).
        ``force_new`` starts a new version whatever the identity says (a file read again after a
        change: its earlier upload id and content key must not cover the new bytes).
        """
        begun = self._begun.get(job_id)
        if begun is not None and begun.add(rel_path) and not force_new:
            existing = None  # a job created by this run, a path it never began: no row to read
        else:
            existing = self.file_record(job_id, rel_path)
        if (
            not force_new
            and existing is not None
            and (
                existing.identity == (size_bytes, mtime_ns, ctime_ns, inode, device)
                and existing.blob_name == blob_name
                and existing.block_bytes == block_bytes
                and existing.encrypted == encrypted
            )
        ):
            return existing
        now_ns = time.time_ns()
        record = FileRecord(
            file_id=self._new_file_id(),
            job_id=job_id,
            rel_path=rel_path,
            size_bytes=size_bytes,
            mtime_ns=mtime_ns,
            inode=inode,
            device=device,
            blob_name=blob_name,
            upload_id=self._new_upload_id(),
            block_bytes=block_bytes,
            encrypted=encrypted,
            state="planned",
            acked_blocks={},
            previous_state="changed" if existing is not None else None,
            updated_ns=now_ns,
            ctime_ns=ctime_ns,
        )
        if existing is not None:
            # Cascades to its blocks; a late ack for it is then dropped by SQL_ACK's guard.
            self._append(SQL_DELETE_FILE, (existing.file_id,), existing.file_id)
        self._append(
            SQL_INSERT_FILE,
            (
                record.file_id,
                job_id,
                rel_path,
                size_bytes,
                mtime_ns,
                inode,
                device,
                blob_name,
                record.upload_id,
                block_bytes,
                int(encrypted),
                "planned",
                None,
                None,
                None,
                now_ns,
                None,
                ctime_ns,
            ),
            record.file_id,
            (job_id, rel_path),
            amendable=True,
        )
        return record

    def record_skipped(
        self, job_id: str, files: list[UnbegunSkip], reason: str, *, encrypted: bool
    ) -> list[bool]:
        """Journals, in one append, files found up to date before this job began them: the
        rows begin_file then mark_skipped would leave (engine/unchanged.py: the online delta's
        unchanged files, a scan batch at a time). Returns per file whether it was journaled;
        False for a path this job may have begun already (a Bloom "maybe", or a job this
        journal did not create): begin_file must decide that one."""
        begun = self._begun.get(job_id)
        if begun is None:
            return [False] * len(files)
        error, now_ns = _skip_reason(reason), time.time_ns()
        done, rows = [], []
        for f in files:
            new = begun.add(f.rel_path)
            done.append(new)
            if new:  # columns as schema.FILE_COLUMNS; no etag or digest, as mark_skipped
                file_id, upload_id = self._new_file_id(), self._new_upload_id()
                rows.append(
                    (file_id, job_id, f.rel_path, f.size_bytes, f.mtime_ns, f.inode, f.device,
                     f.blob_name, upload_id, f.block_bytes, int(encrypted), "skipped", None,
                     None, error, now_ns, None, f.ctime_ns)
                )  # fmt: skip
        self._append_rows(SQL_INSERT_FILE, rows, job_id)
        return done

    def ack_block(
        self, file_id: int, index: int, *, length_bytes: int, crc64: int, xxh3_128: bytes
    ) -> None:
        """Record that the service acknowledged block index of file_id (batched)."""
        self._append(
            SQL_ACK, (file_id, index, length_bytes, crc_to_db(crc64), bytes(xxh3_128)), file_id
        )

    def acked_blocks(self, file_id: int) -> dict[int, BlockAck]:
        self._flush_if_touched(file_id=file_id)
        return self._load_blocks(file_id)

    def _set_state(self, file_id: int, state: str, error: str | None = None) -> None:
        now_ns = time.time_ns()
        # the INSERT's state, error and updated_ns (schema.FILE_COLUMNS), as SQL_STATE sets
        at = _INSERT_STATE
        if not self._amend_pending(file_id, ((at, state), (at + 3, error), (at + 4, now_ns))):
            self._append(SQL_STATE, (state, error, now_ns, file_id), file_id)

    def set_encryption(self, file_id: int, encryptiondata: str) -> None:
        """Record the wrapped content key of an encrypted file version (before its first ack)."""
        # encryptiondata follows updated_ns among the INSERT's parameters
        if not self._amend_pending(file_id, ((_INSERT_STATE + 5, encryptiondata),)):
            self._append(SQL_ENCRYPTION, (encryptiondata, file_id), file_id)

    def mark_uploading(self, file_id: int) -> None:
        self._set_state(file_id, "uploading")

    def mark_committing(self, file_id: int, *, flush: bool = True) -> None:
        """Record that Put Block List (or Put Blob) is about to be sent.

        With flush (the default) the state is durable when this returns: call it BEFORE the
        commit request. flush=False lets the caller group several files' commit points into one
        ``await journal.aflush()``, which must then complete before their commit requests.
        """
        self._set_state(file_id, "committing")
        if flush:
            self.flush()

    def mark_committed(self, file_id: int, *, etag: str, blake3_hex: str) -> None:
        """Batched: if lost, the file is found "committing" and checked against the blob."""
        now_ns = time.time_ns()
        at = _INSERT_STATE  # state, etag, blake3_hex, error, updated_ns: as SQL_COMMITTED sets
        changes = ((at, "committed"), (at + 1, etag), (at + 2, blake3_hex), (at + 3, None))
        if not self._amend_pending(file_id, (*changes, (at + 4, now_ns))):
            self._append(SQL_COMMITTED, (etag, blake3_hex, now_ns, file_id), file_id)

    def mark_failed(self, file_id: int, error: str) -> None:
        self._set_state(file_id, "failed", one_line(error))

    def mark_skipped(self, file_id: int, reason: str) -> None:
        self._set_state(file_id, "skipped", _skip_reason(reason))


__all__ = [
    "FILE_ID_RANGE",
    "JOB_STATES",
    "MAX_ERROR_CHARS",
    "MIGRATIONS",
    "PAGE_ROWS",
    "PENDING_STATES",
    "SCHEMA_VERSION",
    "STATES",
    "BlockAck",
    "FileRecord",
    "JobInfo",
    "JobSummary",
    "Journal",
    "contains_secret",
    "default_journal_path",
    "default_state_dir",
    "one_line",
    "scrub_secrets",
]
