"""Incremental re-runs against Azurite: only new and changed files are copied, deletions are
reported (and removed only with --delete-destination), --check decides what "unchanged" means,
and summaries add up across a kill and a resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
    )


def _events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
            out.append(json.loads(line))
    return out


def _copy(src: Path, dest: str, journal: Path, azurite, *extra: str) -> tuple[dict, list[dict]]:
    proc = _cli(
        "copy", str(src), dest, "--json", "--block-size", "4", "--journal", str(journal),
        "--connection-string", azurite.connection_string, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    assert events[-1]["kind"] == "summary"
    return events[-1], events


def _copied(events: list[dict]) -> set[str]:
    return {e["path"] for e in events if e["kind"] == "file_copied"}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def setup(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    for i in range(5):
        _write(src / f"series/img{i}.dcm", bytes([i]) * (1000 + i))
    _write(src / "big.dcm", os.urandom(9 * MiB))  # three blocks
    journal = tmp_path / "jobs.sqlite"
    summary, _ = _copy(src, container, journal, azurite)
    assert summary["files_copied"] == 6
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    with ContainerClient.from_container_url(container, credential=cred) as client:
        yield src, journal, client


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))


def test_rerun_copies_exactly_new_and_changed_files(setup, azurite, container) -> None:
    src, journal, client = setup
    _write(src / "series/new.dcm", b"new file")
    (src / "series/img1.dcm").write_bytes(b"changed content")
    _bump_mtime(src / "series/img1.dcm")
    (src / "series/img2.dcm").unlink()

    summary, events = _copy(src, container, journal, azurite)
    assert _copied(events) == {"series/new.dcm", "series/img1.dcm"}
    assert summary["files_copied"] == 2
    assert summary["files_skipped"] == 4  # img0, img3, img4, big
    assert summary["files_failed"] == 0
    assert summary["deleted_at_source"] == ["series/img2.dcm"]
    assert client.get_blob_client("series/img2.dcm").exists()  # reported, kept
    assert client.download_blob("series/img1.dcm").readall() == b"changed content"


def test_delete_destination_removes_blobs_whose_source_is_gone(setup, azurite, container) -> None:
    src, journal, client = setup
    (src / "series/img2.dcm").unlink()
    summary, _ = _copy(
        src, container, journal, azurite, "--delete-destination", "--max-delete", "1"
    )
    assert summary["deleted_at_source"] == ["series/img2.dcm"]
    assert summary["blobs_deleted"] == 1
    assert not client.get_blob_client("series/img2.dcm").exists()
    assert client.get_blob_client("series/img3.dcm").exists()


def test_check_hash_skips_a_touched_file_whose_content_is_unchanged(
    setup, azurite, container
) -> None:
    src, journal, _ = setup
    _bump_mtime(src / "big.dcm")
    summary, events = _copy(src, container, journal, azurite, "--check", "hash")
    assert _copied(events) == set()
    assert summary["files_skipped"] == 6


def test_check_metadata_recopies_a_touched_file(setup, azurite, container) -> None:
    src, journal, _ = setup
    _bump_mtime(src / "big.dcm")
    summary, events = _copy(src, container, journal, azurite, "--check", "metadata")
    assert _copied(events) == {"big.dcm"}
    assert summary["files_skipped"] == 5


def test_summaries_add_up_across_a_kill_and_a_resume(tmp_path: Path, azurite, container) -> None:
    src = tmp_path / "src"
    sizes = [0, 1, 4096, 5 * MiB, 13 * MiB, 17 * MiB + 3] + [2000 + i for i in range(40)]
    for i, n in enumerate(sizes):
        _write(src / f"d{i % 4}/f{i:03d}.dcm", os.urandom(n))
    journal = tmp_path / "jobs.sqlite"
    args = [
        sys.executable, "-m", "pyengine.cli", "copy", str(src), container, "--json",
        "--block-size", "4", "--journal", str(journal),
        "--connection-string", azurite.connection_string,
    ]  # fmt: skip
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    # kill -9 as soon as the first file is committed: the job is part done (waiting longer
    # lets a fast run finish the whole tree, leaving nothing to resume)
    for line in child.stdout:
        if '"file_copied"' in line:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL

    summary, events = _copy(src, container, journal, azurite)
    assert any(e["kind"] == "job_started" and e["extra"]["resumed"] for e in events)
    assert summary["files_failed"] == 0
    assert summary["files_copied"] + summary["files_skipped"] == len(sizes)
    assert summary["files_total"] == len(sizes)
    assert summary["bytes_total"] == sum(sizes)
    assert summary["bytes_copied"] + summary["bytes_skipped"] == sum(sizes)
    jobs = _cli("jobs", "show", summary["job_id"], "--journal", str(journal), "--json")
    journal_summary = json.loads(jobs.stdout)["summary"]
    assert journal_summary["files_copied"] + journal_summary["files_skipped"] == len(sizes)
    assert journal_summary["bytes_copied"] + journal_summary["bytes_skipped"] == sum(sizes)
