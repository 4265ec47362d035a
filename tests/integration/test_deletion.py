"""Mirror deletion and the naming rule against Azurite: a run deletes only what provably has no
source file, only after a clean scan, within a limit; names the service would alter fail at plan
time. Every outcome is checked with the official SDK."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions
from pyengine.engine.mirror import DeleteLimit, parse_max_delete, refusal
from pyengine.errors import ConfigError
from pyengine.state.manifest import read_manifest

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
    )


def _copy(src: Path, dest: str, journal: Path, azurite, *extra: str):
    proc = _cli(
        "copy", str(src), dest, "--json", "--journal", str(journal),
        "--connection-string", azurite.connection_string, *extra,
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, events[-1] if events else {}, events


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _names(client: ContainerClient) -> set[str]:
    return {b.name for b in client.list_blobs()}


@pytest.fixture
def client(azurite, container: str):
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    with ContainerClient.from_container_url(container, credential=cred) as c:
        yield c


def _tree(src: Path, n: int) -> None:
    for i in range(n):
        _write(src / f"series/img{i:02d}.dcm", bytes([i]) * (100 + i))


# --- the limit ---------------------------------------------------------------------------------


def test_max_delete_parses_counts_and_shares() -> None:
    assert parse_max_delete("7") == DeleteLimit(count=7, percent=None, explicit=True)
    assert parse_max_delete("2.5%") == DeleteLimit(count=None, percent=2.5, explicit=True)
    for bad in ("", "x", "-1", "101%", "1.5"):
        with pytest.raises(ConfigError):
            parse_max_delete(bad)


def test_default_limit_refuses_more_than_ten_percent_and_any_deletion_from_an_empty_tree() -> None:
    d = DeleteLimit()
    assert refusal(candidates=10, blobs_under_prefix=100, files_in_source=90, limit=d) is None
    assert "more than the limit of 10%" in (
        refusal(candidates=11, blobs_under_prefix=100, files_in_source=89, limit=d) or ""
    )
    assert "source tree is empty" in (
        refusal(candidates=1, blobs_under_prefix=100, files_in_source=0, limit=d) or ""
    )
    explicit = parse_max_delete("100%")
    assert refusal(candidates=5, blobs_under_prefix=5, files_in_source=0, limit=explicit) is None


def test_delete_over_the_default_limit_deletes_nothing_and_exits_nonzero(
    tmp_path, azurite, container, client
) -> None:
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    _tree(src, 5)
    proc, _, _ = _copy(src, container, journal, azurite)
    assert proc.returncode == 0, proc.stderr
    (src / "series/img01.dcm").unlink()  # 1 of 5 blobs = 20 % > 10 %

    proc, summary, _ = _copy(src, container, journal, azurite, "--delete-destination")
    assert proc.returncode == 1
    assert summary["blobs_deleted"] == 0
    assert "more than the limit of 10%" in summary["deletion_refused"]
    assert "series/img01.dcm" in _names(client)

    proc = _cli(
        "copy", str(src), container, "--journal", str(journal), "--delete-destination",
        "--max-delete", "1", "--connection-string", azurite.connection_string,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "deleted 1 blobs whose source file is gone" in proc.stderr
    assert "kept" not in proc.stderr
    assert "series/img01.dcm" not in _names(client)
    assert len(_names(client)) == 4


def test_every_deletion_is_a_manifest_line(tmp_path, azurite, container, client) -> None:
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    _tree(src, 4)
    _copy(src, container, journal, azurite)
    (src / "series/img03.dcm").unlink()
    manifest = tmp_path / "m.jsonl"
    proc, summary, events = _copy(
        src, container, journal, azurite, "--delete-destination", "--max-delete", "25%",
        "--manifest", str(manifest),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert summary["blobs_deleted"] == 1
    assert [e["blob"] for e in events if e["kind"] == "file_deleted"] == ["series/img03.dcm"]
    deleted = [e for e in read_manifest(manifest) if e["status"] == "deleted"]
    assert [e["path"] for e in deleted] == ["series/img03.dcm"]


def test_an_empty_source_tree_deletes_nothing_by_default(
    tmp_path, azurite, container, client
) -> None:
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    _tree(src, 3)
    _copy(src, container, journal, azurite)
    for p in (src / "series").iterdir():
        p.unlink()  # what an unmounted NFS export looks like: an empty directory
    proc, summary, _ = _copy(src, container, journal, azurite, "--delete-destination")
    assert proc.returncode == 1
    assert "source tree is empty" in summary["deletion_refused"]
    assert len(_names(client)) == 3


def test_dry_run_lists_exactly_what_would_be_deleted(tmp_path, azurite, container, client) -> None:
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    _tree(src, 10)
    _copy(src, container, journal, azurite)
    (src / "series/img02.dcm").unlink()
    proc, summary, events = _copy(
        src, container, journal, azurite, "--delete-destination", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert [e["blob"] for e in events if e["kind"] == "delete_planned"] == ["series/img02.dcm"]
    assert summary["blobs_to_delete"] == 1 and summary["blobs_deleted"] == 0
    assert "series/img02.dcm" in _names(client)  # a dry run deletes nothing


# --- a scan that did not see the whole tree deletes nothing ------------------------------------


def test_a_dangling_symlinked_directory_keeps_its_blobs(
    tmp_path, azurite, container, client
) -> None:
    src, journal, mount = tmp_path / "src", tmp_path / "j.sqlite", tmp_path / "mount"
    _tree(src, 10)
    for i in range(3):
        _write(mount / f"study{i}.dcm", b"on the mount %d" % i)
    (src / "remote").symlink_to(mount, target_is_directory=True)
    proc, _, _ = _copy(src, container, journal, azurite)
    assert proc.returncode == 0, proc.stderr
    assert len(_names(client)) == 13
    mount.rename(tmp_path / "mount-away")  # the mount is away for this run

    proc, summary, events = _copy(
        src, container, journal, azurite, "--delete-destination", "--max-delete", "100%"
    )
    assert proc.returncode == 1
    assert "nothing deleted: the scan met 1 error" in summary["deletion_refused"]
    assert "remote: dangling symlink" in summary["deletion_refused"]
    assert not [e for e in events if e["kind"] in ("file_deleted", "deleted_at_source")]
    assert len(_names(client)) == 13


def test_a_transient_lstat_error_keeps_the_blobs(
    tmp_path, azurite, container, client, monkeypatch
) -> None:
    src = tmp_path / "src"
    _tree(src, 10)
    _write(src / "other/x.dcm", b"x")
    opts = CopyOptions(
        journal_path=str(tmp_path / "j.sqlite"),
        threads=2,
        connection_string=azurite.connection_string,
    )
    report = asyncio.run(pyengine.copy(src, container, opts))
    assert report.files_copied == 11

    import pyengine.engine.scan as source_mod

    real_lstat = os.lstat

    def flaky_lstat(path, *a, **kw):
        if str(path).endswith("/series"):
            raise OSError(5, "Input/output error", str(path))
        return real_lstat(path, *a, **kw)

    monkeypatch.setattr(source_mod.os, "lstat", flaky_lstat)
    opts = CopyOptions(
        journal_path=str(tmp_path / "j.sqlite"),
        threads=2,
        connection_string=azurite.connection_string,
        delete_destination=True,
        max_delete=parse_max_delete("100%"),
        include=("*.dcm",),  # the directory itself is not a file the filters take
    )
    report = asyncio.run(pyengine.copy(src, container, opts))
    assert not report.ok
    assert report.blobs_deleted == 0
    assert "series: I/O error" in (report.deletion_refused or "")
    assert len(_names(client)) == 11


# --- the naming rule -----------------------------------------------------------------------------


def test_backslash_name_fails_at_plan_time_and_its_neighbour_keeps_its_own_bytes(
    tmp_path, azurite, container, client
) -> None:
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    _write(src / "back\\slash.dcm", b"the one with a backslash")
    _write(src / "back/slash.dcm", b"the one in a directory")
    proc, summary, _ = _copy(src, container, journal, azurite)
    assert proc.returncode == 1
    assert summary["files_copied"] == 1 and summary["files_failed"] == 1
    (failure,) = summary["failures"]
    assert failure["path"] == "back\\slash.dcm"
    assert "backslash" in failure["reason"] and "\n" not in failure["reason"]
    assert _names(client) == {"back/slash.dcm"}
    assert client.download_blob("back/slash.dcm").readall() == b"the one in a directory"

    # a mirror run never deletes the blob that a live file claims, and says what it did
    proc, summary, _ = _copy(src, container, journal, azurite, "--delete-destination")
    assert proc.returncode == 1
    assert summary["blobs_deleted"] == 0
    assert "nothing deleted" in summary["deletion_refused"]
    assert client.download_blob("back/slash.dcm").readall() == b"the one in a directory"


def test_blob_that_a_rejected_name_would_become_is_never_a_deletion_candidate(
    tmp_path, azurite, container, client
) -> None:
    # An older tool stored back\slash.dcm as back/slash.dcm; the file still exists.
    client.upload_blob("p/back/slash.dcm", b"stored by another tool")
    src = tmp_path / "src"
    _write(src / "back\\slash.dcm", b"x")
    for i in range(20):
        _write(src / f"f{i}.dcm", b"y")
    from pyengine.engine.plan import names_claimed

    assert "p/back/slash.dcm" in names_claimed("p/", "back\\slash.dcm")
    opts = CopyOptions(
        journal_path=str(tmp_path / "j.sqlite"),
        connection_string=azurite.connection_string,
        delete_destination=True,
        max_delete=parse_max_delete("100%"),
    )
    report = asyncio.run(pyengine.copy(src, container + "/p", opts))
    assert report.files_failed == 1 and report.blobs_deleted == 0
    assert "p/back/slash.dcm" in _names(client)
    assert report.deleted_at_source == []


@pytest.mark.parametrize("name", ["new\nline.dcm", "tab\there.dcm", "del\x7f.dcm", "c1\x85.dcm"])
def test_control_characters_fail_with_one_printable_line(
    tmp_path, azurite, container, client, name
) -> None:
    src = tmp_path / "src"
    _write(src / name, b"data")
    _write(src / "ok.dcm", b"fine")
    proc, summary, _ = _copy(src, container, tmp_path / "j.sqlite", azurite)
    assert proc.returncode == 1
    (failure,) = summary["failures"]
    assert "control character U+" in failure["reason"]
    assert "\n" not in failure["path"] and "\t" not in failure["path"]
    error_lines = [line for line in proc.stderr.splitlines() if "control character" in line]
    assert error_lines == [] or len(error_lines) == 1
    assert _names(client) == {"ok.dcm"}
