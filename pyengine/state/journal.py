"""Durable job store: one SQLite file (WAL) recording what each job planned, sent and committed.

A job runs for days and may be killed (kill -9, power loss) at any instant. On restart the uploader
asks the journal what is already done: which file versions are committed, which blocks of an
unfinished file the service already acknowledged, and which files were mid-commit.

Write path and durability
-------------------------
The uploader calls the journal from its one asyncio loop, so a write must cost microseconds, not an
fsync. Every write (:meth:`Journal.begin_file`, :meth:`Journal.ack_block`, the ``mark_*`` calls) is
appended to an in-memory batch; the batch is written in ONE transaction (group commit) when
:meth:`Journal.flush` is called, or automatically once it holds ``batch_max_ops`` operations or its
oldest operation is ``max_delay_s`` old. **A batch not yet flushed is lost on kill -9.** That is
allowed: the blocks it acknowledged are sent again on resume (their block IDs are the same, so the
service just replaces them), and a file whose state change was lost is redone from its last
flushed state. Of the file calls only :meth:`Journal.mark_committing` flushes before it returns
(by default), because the uploader must find "committing" on resume for every file whose Put Block
List may have reached the service: it then checks the blob's ``pyengine_upload_id`` metadata
instead of committing again. Job rows (create_job, finish_job) are written durably at once.
A flush that fails (disk full) raises JournalError and its batch is gone; the journal then refuses
every later write with the same error (a lost "committing" must never be followed by more state):
stop the job, and a re-run resumes from what was committed.

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

Threading: a Journal is called from one thread (the event loop). Commits can leave it: with
:meth:`Journal.start_writer` a dedicated writer thread does every group commit (a due batch wakes
it; :meth:`Journal.aflush` waits for it), so the loop never waits for an fsync. Reads use a second
connection, which in WAL mode never waits for the writer; a read of a key whose writes are still
pending waits for them (read-your-writes). Without a writer thread, a due batch is written by the
caller and :meth:`Journal.aflush` commits in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyengine.errors import JournalError

SCHEMA_VERSION = 2

STATES = ("planned", "uploading", "committing", "committed", "failed", "skipped")
#: states whose files still need work on resume
PENDING_STATES = ("planned", "uploading", "committing")
JOB_STATES = ("running", "completed", "failed", "cancelled")

#: file ids are handed out from ranges reserved in one durable transaction each, so begin_file can
#: join the batch (no INSERT round trip for the row id) while two processes sharing the journal
#: never collide. A killed process loses the rest of its range: only a gap in the ids.
FILE_ID_RANGE = 65_536
#: fetchmany-sized pages for iter_files: bounded memory however many files a job has
PAGE_ROWS = 1_000
#: error texts are one line; longer ones are cut (a stack of nested causes adds nothing here)
MAX_ERROR_CHARS = 1_000

_SECRET_MARKERS = ("sig=", "accountkey=", "sharedaccesssignature=")
# Values of SAS signatures and account keys, wherever they appear in a free text (an exception
# message may embed a full SAS URL or a connection string).
_SECRET_VALUE_RE = re.compile(r"(?i)\b(sig|accountkey|sharedaccesssignature)=[^&;\s\"']*")


def contains_secret(text: str) -> bool:
    """True if text looks like it carries a SAS signature or an account key."""
    lowered = text.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def scrub_secrets(text: str) -> str:
    """text with every SAS signature / account key value replaced by ``REDACTED``."""
    return _SECRET_VALUE_RE.sub(lambda m: f"{m.group(1)}=REDACTED", text)


def one_line(text: str) -> str:
    """A secret-free, single-line, bounded version of an error text, fit for the journal."""
    flat = " ".join(scrub_secrets(str(text)).split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 3] + "..."


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/pyengine`` or ``~/.local/state/pyengine``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return Path(base) / "pyengine"


def default_journal_path() -> Path:
    return default_state_dir() / "jobs.sqlite"


# CRC64 values are unsigned 64-bit; SQLite integers are signed 64-bit.
def _crc_to_db(crc64: int) -> int:
    return crc64 - (1 << 64) if crc64 >= (1 << 63) else crc64


def _crc_from_db(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


@dataclass(frozen=True)
class BlockAck:
    """A block the service acknowledged (Put Block answered 201)."""

    index: int
    length_bytes: int
    crc64: int
    xxh3_128: bytes


@dataclass
class FileRecord:
    file_id: int
    job_id: str
    rel_path: str
    size_bytes: int
    mtime_ns: int
    inode: int
    device: int
    blob_name: str
    #: 32 hex chars, random per file version; part of every block ID of this version
    upload_id: str
    block_bytes: int
    encrypted: bool
    state: str
    etag: str | None = None
    blake3_hex: str | None = None
    #: failure text (failed) or reason (skipped); one line, secrets scrubbed
    error: str | None = None
    #: blocks acknowledged by the service; None where not loaded (iter_files without with_blocks)
    acked_blocks: dict[int, BlockAck] | None = field(default_factory=dict)
    #: set by begin_file only: "changed" when an older version was replaced, else None
    previous_state: str | None = None
    updated_ns: int = 0
    #: the blob's `encryptiondata` (content key wrapped by the KEK: not a secret, the same value
    #: goes into the blob metadata); lets a resumed job re-create identical ciphertext blocks
    encryptiondata: str | None = None
    #: ctime of the version that was read. An in-place rewrite can restore mtime, never ctime, so
    #: a ctime change is a new version. None: journaled before schema 2 (never checked against a
    #: rewrite), which matches no scanned ctime and so counts as changed once.
    ctime_ns: int | None = None

    @property
    def identity(self) -> tuple[int, int, int | None, int, int]:
        return (self.size_bytes, self.mtime_ns, self.ctime_ns, self.inode, self.device)


@dataclass(frozen=True)
class JobSummary:
    """Per-path totals of a job (latest version of each path): copied + skipped + failed + pending
    is every path the job planned, each counted once."""

    files_copied: int = 0
    bytes_copied: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    files_failed: int = 0
    bytes_failed: int = 0
    files_pending: int = 0
    bytes_pending: int = 0

    @property
    def files_total(self) -> int:
        return self.files_copied + self.files_skipped + self.files_failed + self.files_pending

    @property
    def bytes_total(self) -> int:
        return self.bytes_copied + self.bytes_skipped + self.bytes_failed + self.bytes_pending


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    source: str
    #: redacted destination URL (never a SAS signature or key)
    dest: str
    options: dict[str, Any]
    status: str
    created_ns: int
    updated_ns: int
    #: files and bytes per file state (only states that occur)
    files_by_state: dict[str, int]
    bytes_by_state: dict[str, int]


# --- schema -----------------------------------------------------------------------------------

_SCHEMA_V1 = """
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


#: MIGRATIONS[v] upgrades a journal from schema v to v + 1, inside the opening transaction.
#: Add an entry (and bump SCHEMA_VERSION) for every schema change; never edit _SCHEMA_V1 in place
#: without one, or journals of running migrations could not be resumed by the new version.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_ctime_column}

_FILE_COLUMNS = (
    "file_id, job_id, rel_path, size_bytes, mtime_ns, inode, device, blob_name, upload_id,"
    " block_bytes, encrypted, state, etag, blake3_hex, error, updated_ns, encryptiondata,"
    " ctime_ns"
)

_SQL_INSERT_FILE = f"INSERT INTO files ({_FILE_COLUMNS}) VALUES ({', '.join('?' * 18)})"
_SQL_FILE_BY_PATH = f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = ? AND rel_path = ?"
_SQL_DELETE_FILE = "DELETE FROM files WHERE file_id = ?"
# A late acknowledgement for a version that begin_file has since replaced must not fail the whole
# batch on the foreign key: it is dropped instead.
_SQL_ACK = (
    "INSERT OR REPLACE INTO blocks (file_id, block_index, length_bytes, crc64, xxh3_128)"
    " SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM files WHERE file_id = ?1)"
)
_SQL_ENCRYPTION = "UPDATE files SET encryptiondata = ? WHERE file_id = ?"
_SQL_STATE = "UPDATE files SET state = ?, error = ?, updated_ns = ? WHERE file_id = ?"
_SQL_COMMITTED = (
    "UPDATE files SET state = 'committed', etag = ?, blake3_hex = ?, error = NULL, updated_ns = ?"
    " WHERE file_id = ?"
)


class _Batch:
    """Operations waiting for the next group commit, and the keys they touch (so that a read of
    one of those keys writes the batch out first)."""

    __slots__ = ("file_ids", "ops", "paths", "started_s")

    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.file_ids: set[int] = set()
        self.paths: set[tuple[str, str]] = set()
        self.started_s = 0.0


class Journal:
    """The job store. Open with :meth:`Journal.open`; use as a context manager or call close()."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        *,
        batch_max_ops: int,
        max_delay_s: float,
        read_conn: sqlite3.Connection | None = None,
    ) -> None:
        self._conn = conn
        # Reads go through their own connection: in WAL mode a reader never waits for a writer,
        # so a lookup on the event loop does not wait for a group commit's fsync on _conn.
        self._rconn = read_conn if read_conn is not None else conn
        self.path = path
        self.batch_max_ops = batch_max_ops
        self.max_delay_s = max_delay_s
        self._batch = _Batch()
        #: the batch being written by a flush (swapped out of _batch, not yet committed)
        self._inflight: _Batch | None = None
        # _batch_lock: swaps and appends of the batch (a flush swaps it from another thread).
        # _db_lock: the write connection, held across a commit and its fsync.
        # _read_lock: the read connection (sqlite3 connections are not for concurrent use).
        self._batch_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._read_lock = threading.Lock() if read_conn is not None else self._db_lock
        #: the first failed group commit: its batch is lost, so every later write raises
        self._failure: JournalError | None = None
        # The writer thread (start_writer): woken by _wake when a batch is due or a flush is
        # requested; _requests are the aflush calls waiting for the next commit.
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._writer_running = False
        self._writer_stopping = False
        self._writer_due = False
        self._requests: list[concurrent.futures.Future[None]] = []
        self._next_file_id = 0
        self._file_id_end = 0
        self._closed = False

    # --- opening and closing ----------------------------------------------------------------

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
            journal._init_schema()
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

    def _init_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if not has_table:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?)", (1,))
                conn.execute("INSERT INTO meta VALUES ('next_file_id', 1)")
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
            if version > SCHEMA_VERSION:
                raise JournalError(
                    self.path,
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

    def close(self) -> None:
        """Stop the writer thread, flush the pending batch durably and close. Idempotent.

        Raises the journal's failure if a group commit failed while a writer thread ran (nobody
        may have been told yet); after a failure reported to a caller, closes without writing.
        """
        if self._closed:
            return
        try:
            self.stop_writer()
            if self._failure is None:
                self.flush()
        finally:
            self._closed = True
            self._conn.close()
            if self._rconn is not self._conn:
                self._rconn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- group commit -----------------------------------------------------------------------

    def _append(
        self,
        sql: str,
        params: tuple[Any, ...],
        file_id: int,
        path: tuple[str, str] | None = None,
    ) -> None:
        self._raise_if_failed()
        with self._batch_lock:
            batch = self._batch
            if not batch.ops:
                batch.started_s = time.monotonic()
            batch.ops.append((sql, params))
            batch.file_ids.add(file_id)
            if path is not None:
                batch.paths.add(path)
            due = (
                len(batch.ops) >= self.batch_max_ops
                or time.monotonic() - batch.started_s >= self.max_delay_s
            )
        if due:
            if self._writer_running:
                # The writer thread commits it: the caller (the event loop) never waits for
                # an fsync.
                with self._wake:
                    self._writer_due = True
                    self._wake.notify()
            else:
                self.flush()

    @property
    def pending_ops(self) -> int:
        """Operations waiting for the next flush (lost if the process is killed now)."""
        return len(self._batch.ops)

    @property
    def failure(self) -> JournalError | None:
        """The failed group commit that stopped this journal's writes, if any."""
        return self._failure

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            # a fresh exception each time: one object raised from many places piles up
            # tracebacks
            raise JournalError(failure.subject, failure.reason)

    def flush(self) -> None:
        """Write the pending batch in one durable transaction (fsync'd before returning).

        A failed write loses its batch and stops the journal: this and every later write or
        flush raise JournalError (the job must stop; a re-run resumes from what was committed).
        """
        with self._db_lock:
            self._raise_if_failed()
            with self._batch_lock:
                batch, self._batch = self._batch, _Batch()
                if not batch.ops:
                    return
                self._inflight = batch
            try:
                self._write(batch.ops)
            except JournalError as e:
                self._failure = e
                raise
            except Exception as e:  # not sqlite3.Error: still a lost batch, still loud
                self._failure = JournalError(self.path, f"cannot write journal: {e}")
                raise self._failure from e
            finally:
                with self._batch_lock:
                    self._inflight = None

    async def aflush(self) -> None:
        """flush() off the event loop: by the writer thread when one runs (start_writer), else
        in a worker thread. Returns once everything appended before the call is durable."""
        self._raise_if_failed()
        with self._wake:
            running = self._writer_running
            if running:
                request: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._requests.append(request)
                self._wake.notify()
        if running:
            await asyncio.wrap_future(request)
        elif self._batch.ops or self._inflight is not None:
            await asyncio.to_thread(self.flush)

    def _write(self, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Consecutive operations of one kind (the common case: runs of block acks) go in
                # one executemany; the order of the batch is kept, so a file row is written before
                # its blocks and a replaced version is deleted before its successor is inserted.
                for sql, run in itertools.groupby(ops, key=lambda op: op[0]):
                    conn.executemany(sql, [params for _, params in run])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot write journal: {e}") from None

    # --- the writer thread ------------------------------------------------------------------

    def start_writer(self) -> None:
        """From now on, group commits run in one dedicated thread: a due batch wakes it (the
        caller of ack_block / mark_* never commits), a batch is written at the latest
        max_delay_s after its first operation, and aflush() waits for the thread. One writer at
        a time: commits never overlap and keep the batches' order. Stop with stop_writer()
        (close() does)."""
        with self._wake:
            if self._writer is not None:
                return
            self._raise_if_failed()
            if self._next_file_id >= self._file_id_end:
                # Reserve the first file-id range now: a reservation is a write on the writer's
                # connection, and begin_file (on the loop) would otherwise wait for a commit.
                # The next one comes after FILE_ID_RANGE files.
                self._next_file_id = self._new_file_id()
            self._writer_stopping = False
            self._writer_running = True
            self._writer = threading.Thread(
                target=self._writer_main, name="pyengine-journal-writer", daemon=True
            )
            self._writer.start()

    def stop_writer(self) -> None:
        """Commit what is pending, stop the writer thread and wait for it. Raises JournalError
        if a commit failed. No-op without a writer."""
        with self._wake:
            writer = self._writer
            if writer is None:
                return
            self._writer_stopping = True
            self._wake.notify()
        writer.join()
        with self._wake:
            self._writer = None
        self._raise_if_failed()

    def _writer_main(self) -> None:
        while True:
            with self._wake:
                if not (self._writer_due or self._requests or self._writer_stopping):
                    self._wake.wait(self.max_delay_s)
                requests, self._requests = self._requests, []
                self._writer_due = False
                stopping = self._writer_stopping
            # a request whose awaiting task was cancelled is dropped, the others are answered
            live = [r for r in requests if r.set_running_or_notify_cancel()]
            error: BaseException | None = None
            try:
                self.flush()
            except BaseException as e:  # sticky in self._failure; answered to every waiter
                error = e
            for r in live:
                if error is None:
                    r.set_result(None)
                else:
                    r.set_exception(JournalError(self.path, str(getattr(error, "reason", error))))
            if error is not None or stopping:
                with self._wake:
                    if error is None and self._requests:
                        continue  # asked for in the meantime: one more round
                    self._writer_running = False
                    late, self._requests = self._requests, []
                for r in late:
                    if r.set_running_or_notify_cancel():
                        r.set_exception(
                            JournalError(self.path, "cannot write journal: the writer stopped")
                            if error is not None
                            else JournalError(self.path, "the journal writer was stopped")
                        )
                return

    # --- reads ------------------------------------------------------------------------------

    def _pending(self, *, file_id: int | None = None, path: tuple[str, str] | None = None) -> str:
        """Where writes touching file_id / path wait: "batch", "inflight" or "" (none)."""
        with self._batch_lock:
            for name, batch in (("batch", self._batch), ("inflight", self._inflight)):
                if batch is None:
                    continue
                if (file_id is not None and file_id in batch.file_ids) or (
                    path is not None and path in batch.paths
                ):
                    return name
        return ""

    def _flush_if_touched(
        self, *, file_id: int | None = None, path: tuple[str, str] | None = None
    ) -> None:
        """Read-your-writes: a read of a key with writes still pending waits for them (rare:
        the uploader reads a path before it writes it)."""
        where = self._pending(file_id=file_id, path=path)
        if where == "batch":
            self.flush()
        elif where == "inflight":
            with self._db_lock:  # held by the flush writing it: wait for its commit
                pass
            self._raise_if_failed()

    def _flush_if_any(self) -> None:
        if self._batch.ops or self._inflight is not None:
            self.flush()

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._read_lock:
            try:
                return self._rconn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as e:
                raise JournalError(self.path, f"cannot read journal: {e}") from None

    def _write_now(self, sql: str, params: tuple[Any, ...]) -> None:
        """One durable statement outside the batch (job rows: rare and wanted at once)."""
        with self._db_lock:
            self._write([(sql, params)])

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
            return job_id
        raise JournalError(self.path, "cannot allocate a job id")

    def find_unfinished_job(self, source: str, dest: str) -> str | None:
        """The most recent job still 'running' for this source and (redacted) dest, if any."""
        rows = self._read(
            "SELECT job_id FROM jobs WHERE source = ? AND dest = ? AND status = 'running'"
            " ORDER BY created_ns DESC, job_id DESC LIMIT 1",
            (source, dest),
        )
        return rows[0][0] if rows else None

    def finish_job(self, job_id: str, status: str) -> None:
        """Flush, then mark the job completed / failed / cancelled (durably)."""
        if status not in JOB_STATES:
            raise ValueError(f"job status must be one of {', '.join(JOB_STATES)}: {status!r}")
        self.flush()
        if not self._read("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)):
            raise JournalError(job_id, "no such job in the journal")
        self._write_now(
            "UPDATE jobs SET status = ?, updated_ns = ? WHERE job_id = ?",
            (status, time.time_ns(), job_id),
        )

    def get_job(self, job_id: str) -> JobInfo:
        self._flush_if_any()
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JournalError(job_id, "no such job in the journal")
        counts = self._read(
            "SELECT state, count(*), sum(size_bytes) FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        )
        return self._job_info(rows[0], counts)

    def list_jobs(self) -> list[JobInfo]:
        """Every job, oldest first, with per-state totals (one pass over the files table)."""
        self._flush_if_any()
        counts: dict[str, list[tuple[str, int, int]]] = {}
        for job_id, state, files, size in self._read(
            "SELECT job_id, state, count(*), sum(size_bytes) FROM files GROUP BY job_id, state"
        ):
            counts.setdefault(job_id, []).append((state, files, size))
        jobs = self._read("SELECT * FROM jobs ORDER BY created_ns, job_id")
        return [self._job_info(row, counts.get(row[0], [])) for row in jobs]

    @staticmethod
    def _job_info(row: tuple[Any, ...], counts: Iterable[tuple[str, int, int]]) -> JobInfo:
        job_id, source, dest, options_json, status, created_ns, updated_ns = row
        counts = list(counts)
        return JobInfo(
            job_id=job_id,
            source=source,
            dest=dest,
            options=json.loads(options_json),
            status=status,
            created_ns=created_ns,
            updated_ns=updated_ns,
            files_by_state={state: files for state, files, _ in counts},
            bytes_by_state={state: size for state, _, size in counts},
        )

    # --- files ------------------------------------------------------------------------------

    def _new_file_id(self) -> int:
        if self._next_file_id >= self._file_id_end:
            with self._db_lock:
                conn = self._conn
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    (start,) = conn.execute(
                        "SELECT value FROM meta WHERE key = 'next_file_id'"
                    ).fetchone()
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'next_file_id'",
                        (start + FILE_ID_RANGE,),
                    )
                    conn.execute("COMMIT")
                except sqlite3.Error as e:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise JournalError(self.path, f"cannot reserve file ids: {e}") from None
            self._next_file_id, self._file_id_end = start, start + FILE_ID_RANGE
        file_id = self._next_file_id
        self._next_file_id += 1
        return file_id

    @staticmethod
    def _record(row: tuple[Any, ...]) -> FileRecord:
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

    def file_record(self, job_id: str, rel_path: str) -> FileRecord | None:
        """The journaled (latest) version of rel_path in job_id, with its acknowledged blocks."""
        self._flush_if_touched(path=(job_id, rel_path))
        sql = _SQL_FILE_BY_PATH
        rows = self._read(sql, (job_id, rel_path))
        if not rows:
            return None
        if self._pending(file_id=rows[0][0]):  # a state change or ack of it is still pending
            self._flush_if_touched(file_id=rows[0][0])
            rows = self._read(sql, (job_id, rel_path))
        record = self._record(rows[0])
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
            upload_id=os.urandom(16).hex(),
            block_bytes=block_bytes,
            encrypted=encrypted,
            state="planned",
            acked_blocks={},
            previous_state="changed" if existing is not None else None,
            updated_ns=now_ns,
            ctime_ns=ctime_ns,
        )
        if existing is not None:
            # Cascades to its blocks; a late ack for it is then dropped by _SQL_ACK's guard.
            self._append(_SQL_DELETE_FILE, (existing.file_id,), existing.file_id)
        self._append(
            _SQL_INSERT_FILE,
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
        )
        return record

    def ack_block(
        self, file_id: int, index: int, *, length_bytes: int, crc64: int, xxh3_128: bytes
    ) -> None:
        """Record that the service acknowledged block index of file_id (batched)."""
        self._append(
            _SQL_ACK, (file_id, index, length_bytes, _crc_to_db(crc64), bytes(xxh3_128)), file_id
        )

    def acked_blocks(self, file_id: int) -> dict[int, BlockAck]:
        self._flush_if_touched(file_id=file_id)
        return self._load_blocks(file_id)

    def _load_blocks(self, file_id: int) -> dict[int, BlockAck]:
        rows = self._read(
            "SELECT block_index, length_bytes, crc64, xxh3_128 FROM blocks WHERE file_id = ?"
            " ORDER BY block_index",
            (file_id,),
        )
        return {
            index: BlockAck(index, length, _crc_from_db(crc), bytes(digest))
            for index, length, crc, digest in rows
        }

    def _set_state(self, file_id: int, state: str, error: str | None = None) -> None:
        self._append(_SQL_STATE, (state, error, time.time_ns(), file_id), file_id)

    def set_encryption(self, file_id: int, encryptiondata: str) -> None:
        """Record the wrapped content key of an encrypted file version (before its first ack)."""
        self._append(_SQL_ENCRYPTION, (encryptiondata, file_id), file_id)

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
        self._append(_SQL_COMMITTED, (etag, blake3_hex, time.time_ns(), file_id), file_id)

    def mark_failed(self, file_id: int, error: str) -> None:
        self._set_state(file_id, "failed", one_line(error))

    def mark_skipped(self, file_id: int, reason: str) -> None:
        self._set_state(file_id, "skipped", one_line(reason))

    def iter_files(
        self, job_id: str, states: Iterable[str] | None = None, *, with_blocks: bool = False
    ) -> Iterator[FileRecord]:
        """Stream the job's files in rel_path order, PAGE_ROWS rows per query (memory stays
        bounded however many files). Without with_blocks, records carry acked_blocks=None."""
        wanted = tuple(states) if states is not None else None
        if wanted is not None:
            unknown = set(wanted) - set(STATES)
            if unknown:
                raise ValueError(f"unknown file states: {', '.join(sorted(unknown))}")
        self._flush_if_any()
        state_clause = ""
        if wanted is not None:
            state_clause = f" AND state IN ({', '.join('?' * len(wanted))})"
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = ? AND rel_path > ?{state_clause}"
            f" ORDER BY rel_path LIMIT {PAGE_ROWS}"
        )
        # Keyset paging rather than one long-lived cursor: no statement stays open across the
        # caller's writes and commits, and each page is an index range scan.
        after = ""
        while True:
            rows = self._read(sql, (job_id, after, *(wanted or ())))
            for row in rows:
                record = self._record(row)
                record.acked_blocks = self._load_blocks(record.file_id) if with_blocks else None
                yield record
            if len(rows) < PAGE_ROWS:
                return
            after = rows[-1][2]

    def summary(self, job_id: str) -> JobSummary:
        """Totals over the latest version of every path of the job (flushes the batch first)."""
        self._flush_if_any()
        files: dict[str, int] = {}
        size: dict[str, int] = {}
        for state, count, total in self._read(
            "SELECT state, count(*), sum(size_bytes) FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        ):
            group = {"committed": "copied", "skipped": "skipped", "failed": "failed"}.get(
                state, "pending"
            )
            files[group] = files.get(group, 0) + count
            size[group] = size.get(group, 0) + total
        return JobSummary(
            **{f"files_{g}": n for g, n in files.items()},
            **{f"bytes_{g}": n for g, n in size.items()},
        )

    # --- read-only queries for verify -------------------------------------------------------

    def iter_committed_by_blob(
        self, job_ids: Iterable[str], *, name_prefix: str = ""
    ) -> Iterator[FileRecord]:
        """The latest committed version of every blob name among ``job_ids`` (the newest job
        wins) that starts with ``name_prefix``, in blob-name order: SQLite's BINARY collation on
        UTF-8, i.e. code-point order, the order of Python's str comparison.

        One read cursor, paged with fetchmany: nothing per blob stays in memory here (SQLite's
        sorter spills to a temp file for a large journal). Records carry acked_blocks=None.
        """
        ids = tuple(job_ids)
        if not ids:
            return
        self._flush_if_any()
        columns = ", ".join(f"f.{c.strip()}" for c in _FILE_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM files f JOIN jobs j ON j.job_id = f.job_id"
            f" WHERE f.state = 'committed' AND f.job_id IN ({', '.join('?' * len(ids))})"
            " AND substr(f.blob_name, 1, ?) = ?"
            " ORDER BY f.blob_name, j.created_ns DESC, j.job_id DESC"
        )
        last_name = None
        try:
            with self._db_lock:
                cursor = self._conn.execute(sql, (*ids, len(name_prefix), name_prefix))
            try:
                while True:
                    with self._db_lock:
                        rows = cursor.fetchmany(PAGE_ROWS)
                    if not rows:
                        return
                    for row in rows:
                        if row[7] == last_name:  # an older job's version of the same blob
                            continue
                        last_name = row[7]
                        record = self._record(row)
                        record.acked_blocks = None
                        yield record
            finally:
                cursor.close()
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read journal: {e}") from None

    def job_has_blob(self, job_id: str, blob_name: str) -> bool:
        """Whether job_id has a record (any state) of blob_name. Scans that job's rows only (the
        (job_id, rel_path) index); meant for the rare blob verify finds missing."""
        self._flush_if_any()
        rows = self._read(
            "SELECT 1 FROM files WHERE job_id = ? AND blob_name = ? LIMIT 1", (job_id, blob_name)
        )
        return bool(rows)
