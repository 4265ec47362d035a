"""Group commit: what a batch loses on kill -9 and what is durable when, the writer thread, reads
beside a commit in flight, and a failed commit stopping the journal."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from journal_helpers import DEST, ack, begin, rows_seen_by_other_connection

from pyengine.errors import JournalError
from pyengine.state.journal import Journal

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_unflushed_acks_are_lost_on_crash_and_present_after_flush(db_path: Path) -> None:
    j = Journal.open(db_path)
    job_id = j.create_job("/pacs", DEST, {})
    rec = begin(j, job_id, "big.dcm")
    j.flush()
    for index in range(5):
        ack(j, rec.file_id, index)
    count_sql = f"SELECT count(*) FROM blocks WHERE file_id = {rec.file_id}"
    # a second connection sees what a process restarted now would see
    assert rows_seen_by_other_connection(db_path, count_sql) == 0
    assert j.pending_ops == 5
    j.flush()
    assert rows_seen_by_other_connection(db_path, count_sql) == 5
    j.close()


def test_mark_committing_is_durable_when_it_returns(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "x.dcm")
        j.mark_committing(rec.file_id)
        assert j.pending_ops == 0
        state_sql = f"SELECT state FROM files WHERE file_id = {rec.file_id}"
        assert rows_seen_by_other_connection(db_path, state_sql) == "committing"


def test_batch_is_written_automatically_at_max_ops(db_path: Path) -> None:
    with Journal.open(db_path, batch_max_ops=10) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "f.dcm")  # op 1
        for index in range(9):  # ops 2..10: the tenth op triggers the write
            ack(j, rec.file_id, index)
        assert j.pending_ops == 0
        count_sql = "SELECT count(*) FROM blocks"
        assert rows_seen_by_other_connection(db_path, count_sql) == 9


def test_batch_is_written_automatically_after_max_delay(db_path: Path) -> None:
    with Journal.open(db_path, max_delay_s=0.05) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "f.dcm")
        assert j.pending_ops == 1
        time.sleep(0.06)
        ack(j, rec.file_id, 0)  # the batch is now older than max_delay_s
        assert j.pending_ops == 0


def test_aflush_commits_from_a_worker_thread(db_path: Path) -> None:
    async def run() -> None:
        with Journal.open(db_path) as j:
            job_id = j.create_job("/pacs", DEST, {})
            rec = begin(j, job_id, "f.dcm")
            ack(j, rec.file_id, 0)
            await j.aflush()
            assert j.pending_ops == 0
            count_sql = "SELECT count(*) FROM blocks"
            assert rows_seen_by_other_connection(db_path, count_sql) == 1

    asyncio.run(run())


def _slow_writes(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[str]:
    """Every group commit takes delay_s more (a busy disk's fsync); returns the names of the
    threads that committed."""
    real_write = Journal._write
    threads: list[str] = []

    def slow(self: Journal, ops: list) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(delay_s)
        real_write(self, ops)

    monkeypatch.setattr(Journal, "_write", slow)
    return threads


def test_writer_thread_commits_a_due_batch_while_the_caller_goes_on(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(db_path, batch_max_ops=3) as j:
        job_id = j.create_job("/pacs", DEST, {})
        committed_by = _slow_writes(monkeypatch, 0.3)
        j.start_writer()
        started = time.monotonic()
        rec = begin(j, job_id, "f.dcm")
        ack(j, rec.file_id, 0)
        ack(j, rec.file_id, 1)  # the batch is due: the writer commits it, not this call
        assert time.monotonic() - started < 0.15
        asyncio.run(j.aflush())
        assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM blocks") == 2
        j.stop_writer()
    assert committed_by and set(committed_by) == {"pyengine-journal-writer"}
    assert not [t for t in threading.enumerate() if t.name == "pyengine-journal-writer"]


def test_a_read_never_waits_for_a_commit_in_flight(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(db_path, batch_max_ops=2) as j:
        job_id = j.create_job("/pacs", DEST, {})
        _slow_writes(monkeypatch, 0.5)
        j.start_writer()
        rec = begin(j, job_id, "a.dcm")
        ack(j, rec.file_id, 0)  # due: a 0.5 s commit starts in the writer
        time.sleep(0.05)
        started = time.monotonic()
        assert j.file_record(job_id, "other.dcm") is None  # the loop's lookup of a new file
        assert time.monotonic() - started < 0.2
        j.stop_writer()


def test_a_read_of_a_path_being_committed_waits_for_its_commit(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(db_path, batch_max_ops=2) as j:
        job_id = j.create_job("/pacs", DEST, {})
        _slow_writes(monkeypatch, 0.3)
        j.start_writer()
        rec = begin(j, job_id, "a.dcm")
        ack(j, rec.file_id, 0)  # due: the batch holding a.dcm's row is being written
        time.sleep(0.05)
        again = j.file_record(job_id, "a.dcm")
        assert again is not None and again.file_id == rec.file_id
        assert set(again.acked_blocks or {}) == {0}
        j.stop_writer()


def test_a_failed_commit_stops_every_later_write(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "f.dcm")
        real_write = Journal._write

        def disk_full(self: Journal, ops: list) -> None:
            raise JournalError(self.path, "cannot write journal: database or disk is full")

        monkeypatch.setattr(Journal, "_write", disk_full)
        with pytest.raises(JournalError, match="disk is full"):
            j.flush()
        monkeypatch.setattr(Journal, "_write", real_write)  # the disk has room again...
        # ...but the lost batch held f.dcm's row: nothing may be written after it
        with pytest.raises(JournalError, match="disk is full"):
            ack(j, rec.file_id, 0)
        with pytest.raises(JournalError, match="disk is full"):
            j.mark_committing(rec.file_id)
        with pytest.raises(JournalError, match="disk is full"):
            asyncio.run(j.aflush())
        assert j.file_record(job_id, "f.dcm") is None  # reads still answer
    with Journal.open(db_path) as j:  # reopened: usable, the job resumes from what was written
        assert j.find_unfinished_job("/pacs", DEST) == job_id


def test_a_commit_failing_in_the_writer_thread_reaches_aflush_and_stop_writer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "f.dcm")

        def io_error(self: Journal, ops: list) -> None:
            raise JournalError(self.path, "cannot write journal: disk I/O error")

        monkeypatch.setattr(Journal, "_write", io_error)
        j.start_writer()
        with pytest.raises(JournalError, match="disk I/O error"):
            asyncio.run(j.aflush())
        with pytest.raises(JournalError, match="disk I/O error"):
            ack(j, rec.file_id, 0)
        with pytest.raises(JournalError, match="disk I/O error"):
            j.stop_writer()


CRASH_CHILD = textwrap.dedent(
    """
    import sys
    from pyengine.state.journal import Journal

    j = Journal.open(sys.argv[1], batch_max_ops=10**9, max_delay_s=3600)
    job_id = j.create_job("/pacs", "https://acct.blob.core.windows.net/c", {})
    rec = j.begin_file(job_id, "huge.dcm", size_bytes=1 << 40, mtime_ns=1, inode=1, device=1,
                       blob_name="huge.dcm", block_bytes=1 << 22, encrypted=False)
    index = 0
    while True:
        for _ in range(97):
            j.ack_block(rec.file_id, index, length_bytes=1 << 22, crc64=index, xxh3_128=bytes(16))
            index += 1
        j.flush()
        print(rec.file_id, index, flush=True)  # every ack below index is durable now
    """
)


def test_sigkill_mid_stream_keeps_every_flushed_ack_and_a_sound_db(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(db_path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        for _ in range(30):
            line = child.stdout.readline()
            assert line, "the child died before it was killed"
            file_id, flushed_upto = map(int, line.split())
        # the child is still acking and flushing: killed mid-batch or mid-commit
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with Journal.open(db_path) as j:
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            conn.close()
        blocks = j.acked_blocks(file_id)
        assert set(range(flushed_upto)) <= set(blocks)
        # a batch is all or nothing: what is there is a whole number of flushed batches
        assert len(blocks) % 97 == 0
        assert sorted(blocks) == list(range(len(blocks)))
