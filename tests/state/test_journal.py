"""The SQLite job store: durability across reopen and kill -9, group commit, resume semantics."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from pyengine.errors import JournalError
from pyengine.state.journal import (
    FILE_ID_RANGE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Journal,
    default_journal_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEST = "https://acct.blob.core.windows.net/archive"
MiB = 1024 * 1024


def begin(j: Journal, job_id: str, rel_path: str, *, size_bytes: int = 100, mtime_ns: int = 1):
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


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite"


def rows_seen_by_other_connection(db_path: Path, sql: str) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_flushed_state_survives_close_and_reopen(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {"threads": 8})
        rec = begin(j, job_id, "a/1.dcm")
        ack(j, rec.file_id, 0)
        ack(j, rec.file_id, 1)
        j.mark_uploading(rec.file_id)
        j.flush()
    # source paths of medical archives can name patients: the store is private to its user
    assert db_path.stat().st_mode & 0o777 == 0o600
    assert db_path.parent.stat().st_mode & 0o777 == 0o700
    # not finished: the job is still unfinished on reopen, with its file and blocks
    with Journal.open(db_path) as j:
        assert j.find_unfinished_job("/pacs", DEST) == job_id
        again = j.file_record(job_id, "a/1.dcm")
        assert again is not None
        assert again.upload_id == rec.upload_id
        assert again.state == "uploading"
        assert sorted(again.acked_blocks) == [0, 1]
        assert again.acked_blocks[0].crc64 == (1 << 64) - 1
        assert again.acked_blocks[1].xxh3_128 == (1).to_bytes(16, "big")
        assert j.get_job(job_id).options == {"threads": 8}


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


def test_identity_change_starts_over_with_new_upload_id_and_no_blocks(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        old = begin(j, job_id, "a.dcm", mtime_ns=1)
        ack(j, old.file_id, 0)
        j.mark_uploading(old.file_id)
        j.flush()
        same = begin(j, job_id, "a.dcm", mtime_ns=1)
        assert same.upload_id == old.upload_id
        assert same.previous_state is None
        assert list(same.acked_blocks) == [0]

        new = begin(j, job_id, "a.dcm", mtime_ns=2)  # touched at the source since
        assert new.upload_id != old.upload_id
        assert len(new.upload_id) == 32
        assert int(new.upload_id, 16) >= 0
        assert new.state == "planned"
        assert new.previous_state == "changed"
        assert new.acked_blocks == {}
        assert j.acked_blocks(new.file_id) == {}
        # the old version's blocks are gone from the store, and a late ack for it is dropped
        ack(j, old.file_id, 1)
        j.flush()
        assert j.acked_blocks(old.file_id) == {}
        stored = j.file_record(job_id, "a.dcm")
        assert stored is not None
        assert (stored.upload_id, stored.mtime_ns) == (new.upload_id, 2)
    assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM blocks") == 0


def test_summary_adds_up_across_two_resumes(db_path: Path) -> None:
    sizes = {f"s/{i:03d}.dcm": 1000 + i for i in range(30)}
    source_files, source_bytes = len(sizes), sum(sizes.values())

    def run(commit_upto: int, mtime_ns: int = 1) -> str:
        """One run: resumes the unfinished job, commits the first commit_upto paths."""
        with Journal.open(db_path) as j:
            job_id = j.find_unfinished_job("/pacs", DEST) or j.create_job("/pacs", DEST, {})
            for n, (rel_path, size_bytes) in enumerate(sizes.items()):
                rec = begin(j, job_id, rel_path, size_bytes=size_bytes, mtime_ns=mtime_ns)
                if rec.state in ("committed", "failed", "skipped"):
                    continue
                if n >= commit_upto:
                    break  # "killed" here
                if n % 10 == 3:
                    j.mark_failed(rec.file_id, "read error")
                elif n % 10 == 5:
                    j.mark_skipped(rec.file_id, "up to date at destination")
                else:
                    j.mark_committed(rec.file_id, etag="0x1", blake3_hex="ab" * 32)
            return job_id

    job_id = run(commit_upto=10)
    assert run(commit_upto=20) == job_id
    # third run: one committed file changed at the source in between; it is counted once
    sizes["s/000.dcm"] += 1
    source_bytes += 1
    with Journal.open(db_path) as j:
        rec = begin(j, job_id, "s/000.dcm", size_bytes=sizes["s/000.dcm"], mtime_ns=1)
        assert rec.previous_state == "changed"
    assert run(commit_upto=len(sizes)) == job_id

    with Journal.open(db_path) as j:
        s = j.summary(job_id)
        assert (s.files_total, s.bytes_total) == (source_files, source_bytes)
        assert s.files_failed == 3
        assert s.files_skipped == 3
        assert s.files_pending == 0
        assert s.files_copied == source_files - 6
        info = j.get_job(job_id)
        assert sum(info.files_by_state.values()) == source_files
        assert sum(info.bytes_by_state.values()) == source_bytes
        j.finish_job(job_id, "completed")
        assert j.find_unfinished_job("/pacs", DEST) is None
        assert [info.status for info in j.list_jobs()] == ["completed"]


@pytest.mark.parametrize(
    "dest",
    [
        DEST + "?sv=2023-01-03&sp=rw&sig=abc%2Fdef",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;",
        "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2023&sig=x",
    ],
)
def test_create_job_refuses_a_dest_carrying_credentials(db_path: Path, dest: str) -> None:
    with Journal.open(db_path) as j:
        with pytest.raises(ValueError, match="credential"):
            j.create_job("/pacs", dest, {})
        assert j.list_jobs() == []


def test_failure_text_is_one_line_without_secrets(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "a.dcm")
        j.mark_failed(rec.file_id, f"403 on PUT {DEST}/a.dcm?sv=1&sig=TOPSECRET\ntraceback")
        j.flush()
        stored = j.file_record(job_id, "a.dcm")
        assert stored is not None
        assert stored.state == "failed"
        assert "TOPSECRET" not in (stored.error or "")
        assert "\n" not in (stored.error or "")
        assert "sig=REDACTED" in (stored.error or "")
    assert b"TOPSECRET" not in db_path.read_bytes()


def test_job_ids_are_short_and_sort_by_creation(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        ids = [j.create_job(f"/pacs/{n}", DEST, {}) for n in range(3)]
        assert all(len(job_id) == len("20261124-0807-3f2a") for job_id in ids)
        assert [info.job_id for info in j.list_jobs()] == ids
        assert sorted(i[:13] for i in ids) == [i[:13] for i in ids]


def test_default_path_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_journal_path() == tmp_path / "xdg" / "pyengine" / "jobs.sqlite"
    with Journal.open(None) as j:
        assert j.path == str(tmp_path / "xdg" / "pyengine" / "jobs.sqlite")
    assert (tmp_path / "xdg" / "pyengine" / "jobs.sqlite").is_file()
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_journal_path() == tmp_path / "home" / ".local/state/pyengine/jobs.sqlite"


def test_unusable_path_raises_one_line_journal_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "jobs.sqlite"
    not_a_db.write_bytes(b"this is not an SQLite database, just text " * 100)
    with pytest.raises(JournalError) as info:
        Journal.open(not_a_db)
    assert info.value.subject == str(not_a_db)
    assert "\n" not in info.value.one_line()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot create journal"):
        Journal.open(blocker / "sub" / "jobs.sqlite")


def test_newer_schema_is_refused(db_path: Path) -> None:
    Journal.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="newer pyengine"):
        Journal.open(db_path)


def test_migration_hook_upgrades_an_older_schema(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Journal.open(db_path).close()
    calls: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(SCHEMA_VERSION)
        conn.execute("ALTER TABLE jobs ADD COLUMN note TEXT")

    monkeypatch.setattr("pyengine.state.schema.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(MIGRATIONS, SCHEMA_VERSION, add_column)
    Journal.open(db_path).close()
    Journal.open(db_path).close()  # already upgraded: the hook runs once
    assert calls == [SCHEMA_VERSION]
    version_sql = "SELECT version FROM schema_version"
    assert rows_seen_by_other_connection(db_path, version_sql) == SCHEMA_VERSION + 1


def test_two_journals_on_one_file_never_share_file_ids(db_path: Path) -> None:
    with Journal.open(db_path) as a, Journal.open(db_path) as b:
        job_a = a.create_job("/a", DEST, {})
        job_b = b.create_job("/b", DEST, {})
        id_a = begin(a, job_a, "x").file_id
        id_b = begin(b, job_b, "x").file_id
        assert abs(id_a - id_b) >= FILE_ID_RANGE


def test_iter_files_filters_by_state_across_pages(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pyengine.state.journal_queries.PAGE_ROWS", 4)
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        for n in range(23):
            rec = begin(j, job_id, f"f{n:02d}")
            if n % 2:
                j.mark_failed(rec.file_id, "unreadable")
        failed = [rec.rel_path for rec in j.iter_files(job_id, states=["failed"])]
        assert failed == [f"f{n:02d}" for n in range(1, 23, 2)]
        every = list(j.iter_files(job_id, with_blocks=True))
        assert len(every) == 23
        assert all(rec.acked_blocks == {} for rec in every)
        assert all(rec.acked_blocks is None for rec in j.iter_files(job_id))
        with pytest.raises(ValueError, match="unknown file states"):
            list(j.iter_files(job_id, states=["done"]))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_200k_files_keep_memory_flat_and_iter_files_streams(db_path: Path) -> None:
    total_files = 200_000
    with Journal.open(db_path, batch_max_ops=20_000) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rss_after_warmup = 0
        for n in range(total_files):
            rec = begin(j, job_id, f"study/{n:07d}.dcm", size_bytes=n)
            if n % 100 == 0:
                j.mark_committed(rec.file_id, etag="0x1", blake3_hex="ab" * 32)
            if n == 20_000:
                rss_after_warmup = _rss_bytes()
        j.flush()
        # what is kept per file lives in SQLite's page cache (bounded), not in Python
        assert _rss_bytes() - rss_after_warmup < 16 * MiB

        records = j.iter_files(job_id)
        tracemalloc.start()
        try:
            # A list of all 200,000 records would be built at the first next(): ~100 MB. A
            # streamed iterator holds one page (PAGE_ROWS rows) at a time.
            first = [rec.rel_path for rec in itertools.islice(records, 5_000)]
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak_bytes < 2 * MiB
        assert first[0] == "study/0000000.dcm"
        count, bytes_seen = len(first), sum(int(p[6:13]) for p in first)
        for rec in records:
            count += 1
            bytes_seen += rec.size_bytes
        assert count == total_files
        assert bytes_seen == sum(range(total_files))
        assert j.summary(job_id).files_copied == total_files // 100
    size_bytes = db_path.stat().st_size
    assert size_bytes < total_files * 300  # linear and small: ~200 bytes a file


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
