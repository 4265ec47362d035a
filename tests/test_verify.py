"""`pyengine verify` against a real Azurite: metadata checks, deep re-hash, encrypted jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
    )


def _pattern(n_bytes: int, seed: int) -> bytes:
    # i % 251 (BLAKE3's test-vector input) shifted by seed: swapped blocks change the hash
    return bytes((i + seed) % 251 for i in range(251)) * (n_bytes // 251) + bytes(n_bytes % 251)


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "study/series1/img0001.dcm": _pattern(12 * MiB + 7, 1),  # 4 blocks of 4 MiB
        "study/series1/img0002.dcm": _pattern(70_000, 2),
        "study/notes.txt": b"report\n",
        "empty.dcm": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def _copy(src: Path, dest: str, journal: Path, cs: str, *extra: str) -> str:
    proc = _cli(
        "copy", str(src), dest, "--json", "--block-size", "4", "--journal", str(journal),
        "--connection-string", cs, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "summary"
    return summary["job_id"]


def _verify(target: str, journal: Path, cs: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("verify", target, "--journal", str(journal), "--connection-string", cs, *extra)


@pytest.fixture
def copied(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    files = _make_tree(src)
    journal = tmp_path / "jobs.sqlite"
    job_id = _copy(src, container, journal, azurite.connection_string)
    client = ContainerClient.from_container_url(
        container, credential={"account_name": azurite.account_name,
                               "account_key": azurite.account_key},
    )  # fmt: skip
    with client:
        yield job_id, journal, files, client


def test_verify_passes_after_copy(copied, azurite) -> None:
    job_id, journal, files, _ = copied
    proc = _verify(job_id, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    assert out["files_ok"] == out["files_checked"] == len(files)
    assert out["problems"] == []


def test_deep_verify_passes_after_copy(copied, azurite) -> None:
    job_id, journal, files, _ = copied
    proc = _verify(job_id, journal, azurite.connection_string, "--json", "--deep")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["files_ok"] == len(files)
    assert out["bytes_checked"] == sum(len(d) for d in files.values())


def test_verify_by_destination_url_checks_its_latest_job(copied, azurite, container) -> None:
    job_id, journal, _, _ = copied
    proc = _verify(container, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job_id"] == job_id


def test_deep_verify_reports_overwritten_blob_as_hash_mismatch(copied, azurite) -> None:
    job_id, journal, files, client = copied
    name = "study/series1/img0002.dcm"
    blob = client.get_blob_client(name)
    # same size and same metadata: only a download and re-hash can tell
    metadata = blob.get_blob_properties().metadata
    blob.upload_blob(_pattern(len(files[name]), 99), overwrite=True, metadata=metadata)

    shallow = _verify(job_id, journal, azurite.connection_string, "--json")
    assert shallow.returncode == 0, shallow.stdout
    deep = _verify(job_id, journal, azurite.connection_string, "--json", "--deep")
    assert deep.returncode == 1, deep.stderr
    out = json.loads(deep.stdout)
    assert out["files_hash_mismatch"] == 1
    assert out["files_ok"] == len(files) - 1
    assert [p["path"] for p in out["problems"]] == [name]


def test_verify_reports_deleted_blob_as_missing(copied, azurite) -> None:
    job_id, journal, _, client = copied
    client.delete_blob("study/notes.txt")
    proc = _verify(job_id, journal, azurite.connection_string)
    assert proc.returncode == 1
    assert "missing: study/notes.txt:" in proc.stdout


def test_verify_reports_truncated_blob_as_size_mismatch(copied, azurite) -> None:
    job_id, journal, files, client = copied
    name = "study/series1/img0002.dcm"
    blob = client.get_blob_client(name)
    metadata = blob.get_blob_properties().metadata
    blob.upload_blob(files[name][:-1], overwrite=True, metadata=metadata)
    proc = _verify(job_id, journal, azurite.connection_string, "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["files_size_mismatch"] == 1
    assert out["problems"][0]["kind"] == "size_mismatch"


def test_verify_unknown_job_is_a_one_line_usage_error(copied, azurite) -> None:
    _, journal, _, _ = copied
    proc = _verify("20000101-0000-dead", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: 20000101-0000-dead: no such job in the journal"
    assert proc.stdout == ""


def test_verify_without_journal_is_a_usage_error(tmp_path: Path, azurite) -> None:
    proc = _verify("x", tmp_path / "none.sqlite", azurite.connection_string)
    assert proc.returncode == 2
    assert "no journal here" in " ".join(proc.stderr.split())
    assert not (tmp_path / "none.sqlite").exists()


def test_usage_error_naming_a_long_path_stays_on_one_line(tmp_path: Path, azurite) -> None:
    # rich wraps at 80 columns when stderr is not a terminal; an operator's log must not
    journal = tmp_path / ("deep" * 20) / "none.sqlite"
    proc = _verify("x", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {journal}: no journal here (--journal PATH)\n"


@pytest.fixture
def encrypted(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    files = _make_tree(src)
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    journal = tmp_path / "jobs.sqlite"
    job_id = _copy(
        src, container, journal, azurite.connection_string, "--encrypt", "--kek-file",
        str(kek_file),
    )  # fmt: skip
    return job_id, journal, files, kek_file


def test_encrypted_job_deep_verifies_with_the_right_kek(encrypted, azurite) -> None:
    job_id, journal, files, kek_file = encrypted
    proc = _verify(
        job_id, journal, azurite.connection_string, "--deep", "--json", "--kek-file", str(kek_file)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["files_ok"] == len(files)


def test_encrypted_job_deep_verify_fails_with_another_kek(encrypted, azurite, tmp_path) -> None:
    job_id, journal, files, _ = encrypted
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(32))
    proc = _verify(
        job_id, journal, azurite.connection_string, "--deep", "--json", "--kek-file", str(other)
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    # the empty blob too: the SDK refuses a key whose id is not the blob's before decrypting
    assert out["files_hash_mismatch"] == len(files)
    assert all("cannot decrypt" in p["reason"] for p in out["problems"])


def test_encrypted_job_deep_verify_without_kek_is_a_usage_error(encrypted, azurite) -> None:
    job_id, journal, _, _ = encrypted
    proc = _verify(job_id, journal, azurite.connection_string, "--deep")
    assert proc.returncode == 2
    assert "--deep needs --kek-file" in proc.stderr
