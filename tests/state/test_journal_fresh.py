"""begin_file in a job created by this run: no SELECT for a path it has not begun (the per-file
cost of a new job and of the online delta), and still one row per path when one is begun again."""

from __future__ import annotations

from pathlib import Path

import pytest
from journal_helpers import DEST, ack, begin, rows_seen_by_other_connection

from pyengine.state import journal as journal_mod
from pyengine.state.journal import Journal


def _reads(j: Journal) -> list[str]:
    seen: list[str] = []
    j._rconn.set_trace_callback(seen.append)
    return seen


def test_begin_file_of_a_new_job_reads_nothing_from_the_journal(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        reads = _reads(j)
        for i in range(200):
            rec = begin(j, job_id, f"s/{i}.dcm")
            assert rec.previous_state is None and rec.state == "planned"
        assert reads == []
        j.flush()
    assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM files") == 200


def test_a_path_begun_again_in_a_new_job_replaces_its_older_version(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        old = begin(j, job_id, "a.dcm", mtime_ns=1)
        ack(j, old.file_id, 0)
        same = begin(j, job_id, "a.dcm", mtime_ns=1)
        assert same.upload_id == old.upload_id and list(same.acked_blocks) == [0]
        new = begin(j, job_id, "a.dcm", mtime_ns=2)
        assert new.previous_state == "changed" and new.acked_blocks == {}
        forced = j.begin_file(
            job_id, "a.dcm", size_bytes=100, mtime_ns=2, inode=42, device=7,
            blob_name="pacs/a.dcm", block_bytes=8 << 20, encrypted=False, force_new=True,
        )  # fmt: skip
        assert forced.upload_id != new.upload_id and forced.previous_state == "changed"
        j.flush()
    assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM files") == 1
    assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM blocks") == 0


def test_false_positives_of_the_begun_filter_fall_back_to_the_select(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 bits for 300 paths: nearly every "new" path looks begun, so each takes the SELECT path
    monkeypatch.setattr(journal_mod.BegunPaths, "BITS", 64)
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        firsts = [begin(j, job_id, f"p/{i}", mtime_ns=1) for i in range(300)]
        assert all(r.previous_state is None for r in firsts)
        seconds = [begin(j, job_id, f"p/{i}", mtime_ns=2) for i in range(300)]
        assert all(r.previous_state == "changed" for r in seconds)
        j.flush()
    assert rows_seen_by_other_connection(db_path, "SELECT count(*) FROM files") == 300


def test_a_resumed_job_still_finds_what_its_earlier_run_journaled(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        first = begin(j, job_id, "a.dcm")
        ack(j, first.file_id, 0)
        j.finish_job(job_id, "interrupted")
    with Journal.open(db_path) as j:
        again = begin(j, job_id, "a.dcm")
        assert again.upload_id == first.upload_id and list(again.acked_blocks) == [0]


def test_upload_ids_stay_distinct_hex_across_draws_of_randomness(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "UPLOAD_IDS_PER_DRAW", 2)
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        ids = [begin(j, job_id, f"u/{i}").upload_id for i in range(7)]
    assert len(set(ids)) == 7
    assert all(len(u) == 32 and int(u, 16) >= 0 and u == u.lower() for u in ids)


def test_a_state_change_while_the_insert_is_unwritten_amends_it_wherever_it_sits(
    db_path: Path,
) -> None:
    from pyengine.state.schema import FILE_COLUMNS

    columns = [c.strip() for c in FILE_COLUMNS.split(",")]
    assert columns[journal_mod._INSERT_STATE : journal_mod._INSERT_STATE + 6] == [
        "state", "etag", "blake3_hex", "error", "updated_ns", "encryptiondata",
    ]  # fmt: skip
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "a.dcm")
        j.mark_skipped(rec.file_id, "up to date\n(listed)")
        other = begin(j, job_id, "b.dcm")
        third = begin(j, job_id, "c.dcm")
        j.mark_failed(other.file_id, "late: not the last operation")
        assert j.pending_ops == 3  # three inserts: the failure amended the second
        j.mark_skipped(third.file_id, "up to date")
        assert j.pending_ops == 3
        j.flush()
        fourth = begin(j, job_id, "d.dcm")
        j.mark_skipped(third.file_id, "up to date")  # its insert is written: an UPDATE
        j.mark_skipped(fourth.file_id, "up to date")
        assert j.pending_ops == 2
        j.flush()
        got = {r: j.file_record(job_id, r) for r in ("a.dcm", "b.dcm", "c.dcm", "d.dcm")}
    assert {r: (g.state, g.error, g.upload_id) for r, g in got.items() if g} == {
        "a.dcm": ("skipped", "up to date (listed)", rec.upload_id),
        "b.dcm": ("failed", "late: not the last operation", other.upload_id),
        "c.dcm": ("skipped", "up to date", third.upload_id),
        "d.dcm": ("skipped", "up to date", fourth.upload_id),
    }


def test_a_new_version_given_its_key_and_state_at_once_is_one_insert(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "a.dcm")
        j.set_encryption(rec.file_id, '{"wrapped": 1}')
        j.mark_uploading(rec.file_id)
        assert j.pending_ops == 1
        other = begin(j, job_id, "b.dcm")
        j.set_encryption(rec.file_id, '{"wrapped": 2}')  # not the last op: still amended
        assert j.pending_ops == 2
        j.flush()
        got = j.file_record(job_id, "a.dcm")
        assert got is not None and (got.state, got.encryptiondata) == (
            "uploading",
            '{"wrapped": 2}',
        )
        assert j.file_record(job_id, "b.dcm").encryptiondata is None  # type: ignore[union-attr]
    assert other.state == "planned"


def test_a_file_committed_before_its_insert_is_written_is_one_insert(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "a.dcm")
        j.set_encryption(rec.file_id, '{"wrapped": 1}')
        j.mark_uploading(rec.file_id)
        other = begin(j, job_id, "b.dcm")
        ack(j, rec.file_id, 0)
        j.mark_committing(rec.file_id, flush=False)
        j.mark_committed(rec.file_id, etag='"0x1"', blake3_hex="ab" * 32)
        assert j.pending_ops == 3  # two inserts and the ack
        j.flush()
        j.mark_failed(other.file_id, "written: an UPDATE")
        j.mark_committed(other.file_id, etag='"0x2"', blake3_hex="cd" * 32)
        assert j.pending_ops == 2
        j.flush()
        got = j.file_record(job_id, "a.dcm")
        second = j.file_record(job_id, "b.dcm")
    assert got is not None and second is not None
    assert (got.state, got.etag, got.blake3_hex, got.error, got.encryptiondata) == (
        "committed", '"0x1"', "ab" * 32, None, '{"wrapped": 1}',
    )  # fmt: skip
    assert list(got.acked_blocks or {}) == [0]
    assert (second.state, second.etag, second.error) == ("committed", '"0x2"', None)


def test_a_commit_point_amended_into_the_insert_is_durable_before_the_commit(
    db_path: Path,
) -> None:
    with Journal.open(db_path) as j:
        job_id = j.create_job("/pacs", DEST, {})
        rec = begin(j, job_id, "a.dcm")
        j.mark_committing(rec.file_id)  # flush=True: durable when it returns
        sql = f"SELECT state FROM files WHERE file_id = {rec.file_id}"
        # a second connection sees what a process killed now would find on resume
        assert rows_seen_by_other_connection(db_path, sql) == "committing"  # type: ignore[comparison-overlap]
