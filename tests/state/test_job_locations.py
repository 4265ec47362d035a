"""Where `pyengine finalize` found a device job's files (journal table job_locations, schema 3)
and how verify's merge reads them: the job's blob names moved under the new prefix, competing
with other jobs' versions of the same name (the newest job wins)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from journal_helpers import DEST

from pyengine.state.journal import SCHEMA_VERSION, Journal


def commit(j: Journal, job_id: str, rel_path: str, blob_name: str, blake3_hex: str) -> None:
    rec = j.begin_file(
        job_id,
        rel_path,
        size_bytes=100,
        mtime_ns=1,
        inode=42,
        device=7,
        blob_name=blob_name,
        block_bytes=1 << 20,
        encrypted=False,
    )
    j.mark_committed(rec.file_id, etag="e", blake3_hex=blake3_hex)


def test_a_schema_2_journal_opens_and_gains_an_empty_job_locations_table(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        j.create_job("/pacs", DEST, {})
    conn = sqlite3.connect(db_path, isolation_level=None)  # as a pyengine of schema 2 left it
    conn.execute("DROP TABLE job_locations")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.close()
    with Journal.open(db_path) as j:
        assert j.job_locations() == []
        (job,) = j.list_jobs()
        j.record_location(job.job_id, DEST + "/moved", "pacs/")
        assert j.job_locations() == [(job.job_id, DEST + "/moved", "pacs/")]
    conn = sqlite3.connect(db_path)
    (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
    conn.close()
    assert version == SCHEMA_VERSION == 3


def test_relocated_job_blobs_are_renamed_and_a_newer_job_wins_a_shared_name(
    db_path: Path,
) -> None:
    with Journal.open(db_path) as j:
        device = j.create_job("/pacs", "https://dbx/archive/dev", {})
        for rel in ("a", "b", "c"):
            commit(j, device, rel, f"dev/{rel}", f"device-{rel}")
        commit(j, device, "z", "elsewhere/z", "outside the job prefix")  # not moved
        delta = j.create_job("/pacs", DEST, {})
        commit(j, delta, "b", "acct/b", "delta-b")
        commit(j, delta, "d", "acct/d", "delta-d")
        moved = [(device, "dev/", "acct/")]
        seen = [
            (r.blob_name, r.job_id, r.blake3_hex)
            for r in j.iter_committed_by_blob([delta], name_prefix="acct/", relocated=moved)
        ]
        assert seen == [
            ("acct/a", device, "device-a"),
            ("acct/b", delta, "delta-b"),  # the later job's version
            ("acct/c", device, "device-c"),
            ("acct/d", delta, "delta-d"),
        ]
        # a prefix below the relocation point filters the moved names as it does the others
        deeper = j.iter_committed_by_blob([delta], name_prefix="acct/c", relocated=moved)
        assert [(r.blob_name, r.job_id) for r in deeper] == [("acct/c", device)]


def test_a_relocated_job_is_as_new_as_its_finalize_not_its_creation(db_path: Path) -> None:
    """The device's blobs arrive at import, after a direct job created meanwhile wrote the same
    name: the imported version is the one there, and verify must judge it by the device job."""
    with Journal.open(db_path) as j:
        device = j.create_job("/pacs", "https://dbx/archive/dev", {})
        commit(j, device, "b", "dev/b", "device-b")
        direct = j.create_job("/pacs", DEST, {})  # created after the device job, before import
        commit(j, direct, "b", "acct/b", "direct-b")
        j.record_location(device, DEST, "dev/")  # finalize, once the import landed
        moved = [(device, "dev/", "acct/")]
        seen = j.iter_committed_by_blob([direct], name_prefix="acct/", relocated=moved)
        assert [(r.blob_name, r.blake3_hex) for r in seen] == [("acct/b", "device-b")]


def test_a_later_finalize_of_the_same_job_replaces_its_location(db_path: Path) -> None:
    with Journal.open(db_path) as j:
        job = j.create_job("/pacs", "https://dbx/archive/dev", {})
        j.record_location(job, DEST + "/wrong", "dev/")
        j.record_location(job, DEST + "/right", "dev/")
        assert j.job_locations() == [(job, DEST + "/right", "dev/")]


def test_finalizing_again_at_the_same_place_keeps_the_job_as_old_as_it_was(db_path: Path) -> None:
    """The cutover's `finalize --deep` after the online deltas: the delta that replaced a blob
    since the first finalize stays the newer version."""
    with Journal.open(db_path) as j:
        device = j.create_job("/pacs", "https://dbx/archive/dev", {})
        commit(j, device, "b", "dev/b", "device-b")
        j.record_location(device, DEST, "dev/")  # the first finalize
        delta = j.create_job("/pacs", DEST, {})
        commit(j, delta, "b", "acct/b", "delta-b")
        j.record_location(device, DEST, "dev/")  # finalize --deep at cutover
        moved = [(device, "dev/", "acct/")]
        seen = j.iter_committed_by_blob([delta], name_prefix="acct/", relocated=moved)
        assert [(r.blob_name, r.blake3_hex) for r in seen] == [("acct/b", "delta-b")]
