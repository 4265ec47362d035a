"""The SQLite job store: state across reopen, resume semantics (identity, summaries), no secret
in it, schema versions, file ids, and paging with flat memory. Group commit: test_group_commit."""

from __future__ import annotations

import itertools
import re
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
from journal_helpers import DEST, MiB, ack, begin, rows_seen_by_other_connection

from pyengine.errors import JournalError
from pyengine.state.journal import (
    FILE_ID_RANGE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Journal,
    default_journal_path,
)


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
        assert re.fullmatch(r"[0-9a-f]{32}", new.upload_id)  # block IDs are built from it
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


def test_upload_ids_are_lowercase_hex_distinct_per_file_and_stable_across_reopen(
    db_path: Path,
) -> None:
    paths = [f"u/{i:02d}.dcm" for i in range(20)]
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        ids = {path: begin(j, job_id, path).upload_id for path in paths}
        j.flush()
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in ids.values()), ids
    assert len(set(ids.values())) == len(paths)  # a stale block of another file never matches
    with Journal.open(db_path) as j:
        for path in paths:
            again = j.file_record(job_id, path)
            assert again is not None and again.upload_id == ids[path]


def test_job_marked_interrupted_is_resumed_by_the_next_run_and_listed_so(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        j.finish_job(job_id, "interrupted")
    with Journal.open(db_path) as j:
        assert j.get_job(job_id).status == "interrupted"
        assert j.find_unfinished_job("/pacs", DEST) == job_id
        j.finish_job(job_id, "completed")
        assert j.find_unfinished_job("/pacs", DEST) is None


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
