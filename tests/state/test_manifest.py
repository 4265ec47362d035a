"""The JSONL audit manifest: lines parse back, carry no credential, and are on disk after close."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from pyengine.state.journal import Journal
from pyengine.state.manifest import (
    ManifestEntry,
    ManifestWriter,
    SyncManifestWriter,
    default_manifest_path,
    format_line,
    iso_utc,
    read_manifest,
)

SAS_URL = "https://acct.blob.core.windows.net/archive/a/1.dcm?sv=2023-01-03&sp=rw&sig=TOPSECRET"
FIELDS = {
    "path",
    "size_bytes",
    "mtime_ns",
    "mtime",
    "blake3",
    "blob_url",
    "etag",
    "status",
    "error",
    "job_id",
    "encrypted",
    "crc64",
}


def entry(n: int, **changes: object) -> ManifestEntry:
    fields: dict[str, object] = {
        "path": f"a/{n}.dcm",
        "size_bytes": 1000 + n,
        "mtime_ns": 1_795_500_000_123_456_789 + n,
        "status": "copied",
        "job_id": "20261124-0807-3f2a",
        "blob_url": SAS_URL,
        "blake3": "ab" * 32,
        "etag": '"0x8DC"',
        "encrypted": True,
    }
    fields.update(changes)
    return ManifestEntry(**fields)  # type: ignore[arg-type]


def test_async_manifest_lines_parse_back_and_are_fsynced_at_close(tmp_path: Path) -> None:
    path = tmp_path / "manifests" / "job.jsonl"

    async def write_all() -> int:
        async with ManifestWriter(path, flush_lines=7) as writer:
            for n in range(50):
                await writer.write(entry(n))
            await writer.write(entry(50, status="failed", error="boom\nat line 2", etag=None))
        return writer.lines_written

    assert asyncio.run(write_all()) == 51
    lines = list(read_manifest(path))
    assert len(lines) == 51
    assert all(set(line) == FIELDS for line in lines)
    assert lines[0]["path"] == "a/0.dcm"
    assert lines[0]["size_bytes"] == 1000
    assert lines[0]["mtime"] == "2026-11-24T06:00:00.123456Z"
    assert lines[0]["encrypted"] is True
    assert lines[0]["blob_url"] == "https://acct.blob.core.windows.net/archive/a/1.dcm"
    assert lines[50]["status"] == "failed"
    assert lines[50]["error"] == "boom at line 2"
    assert lines[50]["etag"] is None
    raw = path.read_bytes()
    assert b"TOPSECRET" not in raw
    assert b"sig=" not in raw
    assert raw.count(b"\n") == 51


def test_blob_url_goes_through_the_given_redact_function(tmp_path: Path) -> None:
    def redact(url: str) -> str:
        return url.replace("TOPSECRET", "REDACTED")

    line = json.loads(format_line(entry(1), redact))
    # a redact that leaves sig= in place is not trusted: the query string is dropped
    assert line["blob_url"] == "https://acct.blob.core.windows.net/archive/a/1.dcm"

    def keep_version(url: str) -> str:
        return url.split("&")[0]

    line = json.loads(format_line(entry(1), keep_version))
    assert line["blob_url"] == "https://acct.blob.core.windows.net/archive/a/1.dcm?sv=2023-01-03"


def test_error_text_in_manifest_has_secrets_scrubbed() -> None:
    line = json.loads(format_line(entry(1, status="failed", error=f"403 on {SAS_URL}")))
    assert "TOPSECRET" not in line["error"]
    assert "sig=REDACTED" in line["error"]


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown manifest status"):
        format_line(entry(1, status="done"))


def test_sync_writer_appends_after_a_torn_line_and_file_still_parses(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    with SyncManifestWriter(path) as writer:
        writer.write(entry(1))
        writer.write(entry(2))
    # a kill in the middle of a write leaves half a line at the end
    with open(path, "ab") as f:
        f.write(b'{"path":"a/3.dcm","size_by')
    with SyncManifestWriter(path) as writer:
        writer.write(entry(4, status="skipped", error="up to date"))
    assert [line["path"] for line in read_manifest(path)] == ["a/1.dcm", "a/2.dcm", "a/4.dcm"]


def test_read_manifest_names_the_line_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(format_line(entry(1)) + "not json\n", encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_manifest(path))


def test_entry_from_journal_record_maps_state_to_status(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "jobs.sqlite") as j:
        job_id = j.create_job("/pacs", "https://acct.blob.core.windows.net/archive", {})
        rec = j.begin_file(
            job_id,
            "ct/0001.dcm",
            size_bytes=5,
            mtime_ns=0,
            inode=1,
            device=1,
            blob_name="ct/0001.dcm",
            block_bytes=4 << 20,
            encrypted=False,
        )
        j.mark_committed(rec.file_id, etag='"0x1"', blake3_hex="cd" * 32)
        committed = j.file_record(job_id, "ct/0001.dcm")
        assert committed is not None
        e = ManifestEntry.from_record(committed, blob_url=SAS_URL)
        assert (e.status, e.etag, e.blake3, e.job_id) == ("copied", '"0x1"', "cd" * 32, job_id)
        with pytest.raises(ValueError, match="no manifest status"):
            ManifestEntry.from_record(rec, blob_url=None)  # still "planned"
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


def test_default_manifest_path_is_beside_the_journal(tmp_path: Path) -> None:
    journal_path = tmp_path / "state" / "jobs.sqlite"
    assert default_manifest_path("J1", journal_path) == tmp_path / "state/manifests/J1.jsonl"


def test_non_ascii_and_undecodable_paths_round_trip(tmp_path: Path) -> None:
    odd = os.fsdecode(b"patient-\xe9\xff/scan.dcm")  # not UTF-8: surrogate-escaped by Python
    path = tmp_path / "job.jsonl"
    with SyncManifestWriter(path) as writer:
        writer.write(entry(1, path="Müller/ct.dcm"))
        writer.write(entry(2, path=odd))
    lines = list(read_manifest(path))
    assert [line["path"] for line in lines] == ["Müller/ct.dcm", odd]
    assert os.fsencode(lines[1]["path"]) == b"patient-\xe9\xff/scan.dcm"


def test_manifest_line_carries_the_crc64_a_share_etag_names_and_null_otherwise() -> None:
    share = json.loads(format_line(entry(1, etag="crc64:09b21fd58289f873")))
    azure = json.loads(format_line(entry(2)))
    assert share["crc64"] == "09b21fd58289f873"
    assert azure["crc64"] is None
