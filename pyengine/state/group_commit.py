"""How journal writes reach the disk: batching, group commit, the writer thread, and what a
failed commit does. :class:`~pyengine.state.journal.Journal` is built on :class:`GroupCommit`.

The uploader calls the journal from its one asyncio loop, so a write must cost microseconds, not an
fsync. Every write (:meth:`Journal.begin_file`, :meth:`Journal.ack_block`, the ``mark_*`` calls) is
appended to an in-memory batch; the batch is written in ONE transaction (group commit) when
:meth:`GroupCommit.flush` is called, or automatically once it holds ``batch_max_ops`` operations or
its oldest operation is ``max_delay_s`` old. **A batch not yet flushed is lost on kill -9.** That
is allowed: the blocks it acknowledged are sent again on resume (their block IDs are the same, so
the service just replaces them), and a file whose state change was lost is redone from its last
flushed state. Of the file calls only :meth:`Journal.mark_committing` flushes before it returns
(by default), because the uploader must find "committing" on resume for every file whose Put Block
List may have reached the service: it then checks the blob's ``pyengineuploadid`` metadata
instead of committing again. Job rows (create_job, finish_job) are written durably at once.
A flush that fails (disk full) raises JournalError and its batch is gone; the journal then refuses
every later write with the same error (a lost "committing" must never be followed by more state):
stop the job, and a re-run resumes from what was committed.

Threading: a Journal is called from one thread (the event loop). Commits can leave it: with
:meth:`GroupCommit.start_writer` a dedicated writer thread does every group commit (a due batch
wakes it; :meth:`GroupCommit.aflush` waits for it), so the loop never waits for an fsync. Reads use
a second connection, which in WAL mode never waits for the writer; a read of a key whose writes are
still pending waits for them (read-your-writes). Without a writer thread, a due batch is written by
the caller and :meth:`GroupCommit.aflush` commits in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

from pyengine.errors import JournalError

#: file ids are handed out from ranges reserved in one durable transaction each, so begin_file can
#: join the batch (no INSERT round trip for the row id) while two processes sharing the journal
#: never collide. A killed process loses the rest of its range: only a gap in the ids.
FILE_ID_RANGE = 65_536


class _Batch:
    """Operations waiting for the next group commit, and the keys they touch (so that a read of
    one of those keys writes the batch out first)."""

    __slots__ = ("file_ids", "inserts", "ops", "paths", "started_s")

    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.file_ids: set[int] = set()
        self.paths: set[tuple[str, str]] = set()
        self.started_s = 0.0
        #: file id -> index in ops of the row it inserts (an _append with amendable=True)
        self.inserts: dict[int, int] = {}


class GroupCommit:
    """The journal's two connections and its write path: the batch, group commit, the writer
    thread, read-your-writes and file-id ranges. The statements it batches come from Journal,
    which adds what jobs and files are."""

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

    # --- group commit -----------------------------------------------------------------------

    def _append(
        self,
        sql: str,
        params: tuple[Any, ...],
        file_id: int,
        path: tuple[str, str] | None = None,
        *,
        amendable: bool = False,
    ) -> None:
        """Appends one operation; ``amendable``: it inserts file_id's row, which later state
        changes of the same batch amend (_amend_pending) instead of following it."""
        self._raise_if_failed()
        with self._batch_lock:
            batch = self._batch
            if not batch.ops:
                batch.started_s = time.monotonic()
            if amendable:
                batch.inserts[file_id] = len(batch.ops)
            batch.ops.append((sql, params))
            batch.file_ids.add(file_id)
            if path is not None:
                batch.paths.add(path)
            due = self._batch_due(batch)
        if due:
            self._commit_due()

    def _append_rows(self, sql: str, rows: list[tuple[Any, ...]], job_id: str) -> None:
        """_append of many file rows at once (``rows``: SQL_INSERT_FILE parameters, file id
        first, rel_path third): one lock and one due check for a scan batch of files."""
        if not rows:
            return
        self._raise_if_failed()
        with self._batch_lock:
            batch = self._batch
            if not batch.ops:
                batch.started_s = time.monotonic()
            batch.ops.extend([(sql, row) for row in rows])
            batch.file_ids.update([row[0] for row in rows])
            batch.paths.update([(job_id, row[2]) for row in rows])
            due = self._batch_due(batch)
        if due:
            self._commit_due()

    def _batch_due(self, batch: _Batch) -> bool:
        return (
            len(batch.ops) >= self.batch_max_ops
            or time.monotonic() - batch.started_s >= self.max_delay_s
        )

    def _commit_due(self) -> None:
        if self._writer_running:
            # The writer thread commits it: the caller (the event loop) never waits for an fsync.
            with self._wake:
                self._writer_due = True
                self._wake.notify()
        else:
            self.flush()

    def _amend_pending(self, file_id: int, changes: tuple[tuple[int, Any], ...]) -> bool:
        """When the batch still holds the row file_id inserts (anywhere in it, not only last),
        sets its parameters as ``changes`` says ((index, value) pairs) and returns True: one
        statement where a state change would add an UPDATE to the same transaction (a file
        begun, keyed, uploading and committed within one group commit is one INSERT). The
        result is the same: the row exists only from the INSERT on, an acknowledgement's guard
        asks only that it exists, and a DELETE of it later in the batch still removes it.
        False (the row is in a commit under way, or written already): append the UPDATE."""
        with self._batch_lock:
            batch = self._batch
            index = batch.inserts.get(file_id)
            if index is None:
                return False
            sql, params = batch.ops[index]
            amended = list(params)
            for at, value in changes:
                amended[at] = value
            batch.ops[index] = (sql, tuple(amended))
            return True

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

    # --- file ids ---------------------------------------------------------------------------

    def _new_file_id(self) -> int:
        """The next file id of this process's range, reserving a new range (one durable write
        on the write connection) when it is used up."""
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
