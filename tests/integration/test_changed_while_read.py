"""A file rewritten in place while it is read, its mtime then restored (archivers and some PACS
exports do this), is never committed as a mix of old and new bytes: the core sees the change
(ctime moves, whatever mtime says), the uploader reads the file again from scratch (new upload
id, new content key), and a file that keeps changing fails with one line.

Integration tests run against the real Azurite and read the result back with the official SDK;
the journal tests open real SQLite files.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper
from pyengine.crypto import content_key_from_metadata
from pyengine.engine import decide
from pyengine.engine.plan import CTIME_METADATA
from pyengine.options import MiB
from pyengine.state.journal import _SCHEMA_V1, SCHEMA_VERSION, Journal

KiB = 1024
_BIN = Path(sys.executable).with_name("pyengine")
PYENGINE = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "pyengine.cli"]


def content(size_bytes: int, seed: int) -> bytes:
    period = bytes(range(251))
    return (period * ((size_bytes + seed) // 251 + 1))[seed % 251 : seed % 251 + size_bytes]


def rewrite_in_place_keeping_mtime(path: Path, data: bytes) -> os.stat_result:
    """Writes data (the file's length) over path and restores its mtime. Only ctime still shows
    the write; the kernel's timestamp clock is coarse (a few ms), so this waits until ctime moved
    and the outcome never depends on timing. Returns the final stat."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    while True:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        now = os.stat(path)
        if now.st_ctime_ns != before.st_ctime_ns:
            return now
        time.sleep(0.002)


def container_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


# --- the uploader reads a changed file again --------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_rewrite_during_copy_commits_the_new_bytes_read_again_from_scratch(
    azurite: Any, container: str, sdk_blob: Any, tmp_path: Path, monkeypatch: Any, encrypt: bool
) -> None:
    # Blocks of 4 MiB (the CSE v2 region) and a pool of two: when block 0 is acknowledged the
    # reader is still waiting for memory, so the rewrite lands between its first and last read.
    block_bytes = 4 * MiB
    src = tmp_path / "src"
    src.mkdir()
    path = src / "series.dcm"
    old, new = content(3 * block_bytes, 1), content(3 * block_bytes, 2)
    path.write_bytes(old)
    kek_bytes = os.urandom(32)
    kek = LocalKeyWrapper(kek_bytes) if encrypt else None
    keys: list[bytes] = []
    real_new_content_key = decide.new_content_key

    def recording_new_content_key() -> bytes:
        keys.append(real_new_content_key())
        return keys[-1]

    monkeypatch.setattr(decide, "new_content_key", recording_new_content_key)
    rewritten: list[os.stat_result] = []

    def on_event(ev: Any) -> None:
        if ev.kind == "progress" and not rewritten:
            rewritten.append(rewrite_in_place_keeping_mtime(path, new))

    opts = CopyOptions(
        threads=1,
        memory_cap_bytes=2 * block_bytes + 2 * MiB,
        block_bytes=block_bytes,
        encrypt=encrypt,
        kek=kek,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
    )
    report = asyncio.run(pyengine.copy(src, container, opts, on_event=on_event))

    assert rewritten, "the copy never acknowledged a block"
    assert (report.files_copied, report.files_failed) == (1, 0), report.failures
    blob = sdk_blob(container, "series.dcm", kek_bytes if encrypt else None)
    assert blob.download_blob().readall() == new  # never a mix of old and new bytes
    metadata = blob.get_blob_properties().metadata
    final = rewritten[0]
    # what was read: the metadata carries the ctime the core saw, not the scan's
    assert metadata[CTIME_METADATA] == str(final.st_ctime_ns)
    assert metadata["pyenginemtimens"] == str(final.st_mtime_ns)
    with Journal.open(opts.journal_path) as journal:
        record = journal.file_record(report.job_id, "series.dcm")
    assert record is not None and record.state == "committed"
    assert record.ctime_ns == final.st_ctime_ns
    assert metadata["pyengineuploadid"] == record.upload_id
    if encrypt:
        # the second read ran under a new content key: no (key, nonce) pair covers two texts
        assert len(keys) == 2 and keys[0] != keys[1]
        assert content_key_from_metadata(metadata["encryptiondata"], kek) == keys[1]


def test_keeps_changing_fails_with_one_line_and_exit_1(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "busy.dcm"
    # 9 blocks of 1 MiB through a 2 MiB pool: each read lasts as long as its uploads (tens of
    # ms at least), far longer than the rewrite period below, so every read sees a change.
    path.write_bytes(content(9 * MiB, 3))  # over single_put_max_bytes: blocks
    (src / "quiet.dcm").write_bytes(content(10 * KiB, 4))
    stop = threading.Event()
    rewrites = [0]

    def keep_rewriting() -> None:
        st = os.stat(path)
        with open(path, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(bytes([rewrites[0] % 251]) * 4096)
                f.flush()
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                rewrites[0] += 1
                time.sleep(0.002)

    writer = threading.Thread(target=keep_rewriting, daemon=True)
    writer.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        env["AZURE_TOKEN_CREDENTIALS"] = "EnvironmentCredential"
        proc = subprocess.run(
            [
                *PYENGINE,
                "copy",
                str(src),
                container,
                "--connection-string",
                azurite.connection_string,
                "--journal",
                str(tmp_path / "journal.sqlite"),
                "--threads",
                "1",
                "--block-size",
                "1",
                "--memory-cap",
                "2",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        stop.set()
        writer.join()
    assert rewrites[0] > 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: busy.dcm: changed while being read"], proc.stderr
    from azure.storage.blob import ContainerClient

    with ContainerClient.from_connection_string(
        azurite.connection_string, container_name(container)
    ) as cc:
        assert [b.name for b in cc.list_blobs()] == ["quiet.dcm"]  # nothing torn committed


# --- the journal keeps ctime per file version -------------------------------------------------


def begin(journal: Journal, job_id: str, **identity: int) -> Any:
    base = {"size_bytes": 10, "mtime_ns": 5, "ctime_ns": 7, "inode": 3, "device": 2}
    base.update(identity)
    return journal.begin_file(
        job_id, "a.dcm", blob_name="a.dcm", block_bytes=4 * MiB, encrypted=False, **base
    )


def test_resume_treats_a_ctime_change_as_a_new_version(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        job_id = journal.create_job("/src", "https://a/c", {})
        first = begin(journal, job_id)
        journal.ack_block(first.file_id, 0, length_bytes=4, crc64=1, xxh3_128=b"x" * 16)
        journal.flush()
        same = begin(journal, job_id)
        assert same.upload_id == first.upload_id and set(same.acked_blocks or {}) == {0}
        rewritten = begin(journal, job_id, ctime_ns=8)  # same size and mtime: restored
        assert rewritten.upload_id != first.upload_id
        assert rewritten.previous_state == "changed" and rewritten.acked_blocks == {}
        journal.flush()
    with Journal.open(tmp_path / "j.sqlite") as journal:
        record = journal.file_record(job_id, "a.dcm")
        assert record is not None and record.ctime_ns == 8 and record.identity[2] == 8


def test_old_schema_journal_opens_gains_ctime_and_its_files_count_as_changed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO meta VALUES ('next_file_id', 100)")
    conn.execute("INSERT INTO jobs VALUES ('job1', '/src', 'https://a/c', '{}', 'running', 1, 1)")
    conn.execute(
        "INSERT INTO files VALUES (1, 'job1', 'a.dcm', 10, 5, 3, 2, 'a.dcm', 'u1', 4194304, 0,"
        " 'uploading', NULL, NULL, NULL, 1, NULL)"
    )
    conn.close()

    with Journal.open(db) as journal:
        old = journal.file_record("job1", "a.dcm")
        assert old is not None and old.upload_id == "u1" and old.ctime_ns is None
        # never checked against an in-place rewrite: read again as a new version, once
        record = begin(journal, "job1")
        assert record.upload_id != "u1" and record.previous_state == "changed"
        journal.flush()
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(files)")]
    (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
    conn.close()
    assert "ctime_ns" in columns and version == SCHEMA_VERSION
    with Journal.open(db) as journal:  # a migrated journal opens again as it is
        again = begin(journal, "job1")
        assert again.upload_id == record.upload_id and again.ctime_ns == 7
