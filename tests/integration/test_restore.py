"""Restore end to end (issue 12): blobs uploaded by pyengine.copy (or the SDK) into the real
Azurite, brought back with pyengine.restore / `pyengine restore`, compared byte for byte.

Every failure case checks the same promise: the file fails with a one-line reason, nothing stands
at its final path, and the other files of the job are restored.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper, RestoreOptions
from pyengine.options import MiB, RetryPolicy
from pyengine.state.manifest import read_manifest

pytestmark = pytest.mark.integration

REGION = 4 * MiB


def content(size_bytes: int, seed: int) -> bytes:
    period = bytes(range(251))
    return (period * ((size_bytes + seed) // 251 + 1))[seed % 251 : seed % 251 + size_bytes]


def make_tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    files = {}
    for seed, (rel, size_bytes) in enumerate(sorted(sizes.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(size_bytes, seed))
        os.utime(path, ns=(1_700_000_000_123_456_789 + seed, 1_700_000_000_123_456_789 + seed))
        files[rel] = path.read_bytes()
    return files


def container_client(azurite: Any, url: str) -> ContainerClient:
    # path-style Azurite URL: http://HOST:PORT/ACCOUNT/CONTAINER[/PREFIX]
    return ContainerClient.from_connection_string(azurite.connection_string, url.split("/")[4])


def upload(azurite: Any, tmp_path: Path, src: Path, url: str, kek: Any = None) -> None:
    opts = CopyOptions(
        threads=2,
        memory_cap_bytes=64 * MiB,
        encrypt=kek is not None,
        kek=kek,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
    )
    report = asyncio.run(pyengine.copy(src, url, opts))
    assert report.ok, report.failures


def run_restore(azurite: Any, tmp_path: Path, url: str, out: Path, **kw: Any):
    base: dict[str, Any] = {
        "threads": 2,
        "memory_cap_bytes": 64 * MiB,
        "connection_string": azurite.connection_string,
        "journal_path": str(tmp_path / "journal.sqlite"),
        "retry": RetryPolicy(max_elapsed_s=2.0),
    }
    base.update(kw)
    events: list = []
    report = asyncio.run(pyengine.restore(url, out, RestoreOptions(**base), events.append))
    return report, events


def leftovers(root: Path) -> list[str]:
    """Temporary files left in the tree (a failed file must not leave one at its final path)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*pyengine-part*"))


EDGE_SIZES = {
    "empty": 0,
    "one": 1,
    "region-1": REGION - 1,
    "region": REGION,
    "region+1": REGION + 1,
    "block-1": 8 * MiB - 1,
    "block": 8 * MiB,
    "block+1": 8 * MiB + 1,
    "big40": 40 * MiB,
    "études/ünïcødé 東京.dcm": 3000,
}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_round_trip_restores_edge_sizes_and_unicode_names_with_their_mtime(
    azurite, container, tmp_path, encrypted
):
    src, out = tmp_path / "src", tmp_path / "out"
    files = make_tree(src, EDGE_SIZES)
    kek = LocalKeyWrapper(os.urandom(32)) if encrypted else None
    upload(azurite, tmp_path, src, container + "/p/", kek)
    report, _ = run_restore(azurite, tmp_path, container + "/p/", out, kek=kek)
    assert report.ok and report.failures == []
    assert report.files_copied == len(files) and report.files_unverified == 0
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel
        assert (out / rel).stat().st_mtime_ns == (src / rel).stat().st_mtime_ns, rel
    assert leftovers(out) == []
    statuses = {e["path"]: e["status"] for e in read_manifest(report.manifest_path)}
    assert statuses == dict.fromkeys(files, "restored")
    # a second run finds every file in place (size + recorded mtime) and fetches nothing
    again, _ = run_restore(azurite, tmp_path, container + "/p/", out, kek=kek)
    assert again.files_skipped == len(files) and again.ranges_fetched == 0


def test_blob_without_pyengine_metadata_is_restored_and_reported_unverified(
    azurite, container, tmp_path
):
    container_client(azurite, container).upload_blob("sdk/plain.bin", b"x" * 5000)
    report, _ = run_restore(azurite, tmp_path, container + "/sdk/", tmp_path / "out")
    assert report.ok and report.files_unverified == 1
    assert (tmp_path / "out" / "plain.bin").read_bytes() == b"x" * 5000


def _rewrite_blob(azurite, url: str, name: str, change) -> None:
    """Replace a blob's stored bytes (and/or metadata) keeping what change() returns."""
    cc = container_client(azurite, url)
    blob = cc.get_blob_client(name)
    props = blob.get_blob_properties()
    data, metadata = change(blob.download_blob().readall(), dict(props.metadata))
    blob.upload_blob(data, overwrite=True, metadata=metadata)


def _restore_expecting_one_failure(azurite, tmp_path, url, out, reason: str, **kw):
    report, _ = run_restore(azurite, tmp_path, url, out, **kw)
    assert not report.ok and report.files_failed == 1, report.failures
    (path, why), = report.failures  # fmt: skip
    assert path == "victim.bin" and reason in why and "\n" not in why
    assert not (out / "victim.bin").exists()
    assert (out / "other.bin").read_bytes() == content(1000, 0)  # the rest of the job goes on
    assert leftovers(out) == []
    return report


def _two_files(azurite, tmp_path, url, kek=None):
    src = tmp_path / "src"
    src.mkdir()
    (src / "other.bin").write_bytes(content(1000, 0))
    (src / "victim.bin").write_bytes(content(9 * MiB, 1))
    upload(azurite, tmp_path, src, url, kek)


def test_tampered_ciphertext_fails_its_file_and_leaves_nothing(azurite, container, tmp_path):
    kek = LocalKeyWrapper(os.urandom(32))
    url = container + "/t/"
    _two_files(azurite, tmp_path, url, kek)

    def flip(data: bytes, md: dict) -> tuple[bytes, dict]:
        b = bytearray(data)
        b[REGION + 28 + 1000] ^= 0x01  # inside the second region's ciphertext
        return bytes(b), md

    _rewrite_blob(azurite, url, "t/victim.bin", flip)
    _restore_expecting_one_failure(
        azurite, tmp_path, url, tmp_path / "out", "AES-GCM tag does not match", kek=kek
    )


def test_a_wrong_kek_fails_each_encrypted_file(azurite, container, tmp_path):
    url = container + "/k/"
    _two_files(azurite, tmp_path, url, LocalKeyWrapper(os.urandom(32)))
    wrong = LocalKeyWrapper(os.urandom(32), kid="local:same-kid-other-key")
    report, _ = run_restore(azurite, tmp_path, url, tmp_path / "out", kek=wrong)
    assert report.files_failed == 2 and report.files_copied == 0
    assert all("cannot unwrap" in why for _, why in report.failures)
    assert not (tmp_path / "out" / "victim.bin").exists()


def test_a_blob_whose_blake3_metadata_lies_fails_and_leaves_nothing(azurite, container, tmp_path):
    url = container + "/m/"
    _two_files(azurite, tmp_path, url)

    def lie(data: bytes, md: dict) -> tuple[bytes, dict]:
        key = "pyengineblake3" if "pyengineblake3" in md else "pyengine_blake3"
        md[key] = "0" * 64
        return data, md

    _rewrite_blob(azurite, url, "m/victim.bin", lie)
    _restore_expecting_one_failure(azurite, tmp_path, url, tmp_path / "out", "BLAKE3")


def test_a_download_cut_short_by_the_proxy_fails_its_file(
    azurite, container, tmp_path, fault_proxy
):
    url = container + "/c/"
    _two_files(azurite, tmp_path, url)
    # every data GET of the 9 MiB blob's ranges answers half its body, then closes
    fault_proxy.fault(
        "truncate",
        every=1,
        match=lambda m, p: m == "GET" and "victim.bin" in p and "comp=" not in p,
    )
    out = tmp_path / "out"
    report, _ = run_restore(azurite, tmp_path, fault_proxy.url(url), out)
    assert report.files_failed == 1 and report.failures[0][0] == "victim.bin"
    assert not (out / "victim.bin").exists()
    assert (out / "other.bin").read_bytes() == content(1000, 0)
    assert fault_proxy.injected["truncate"] >= 1


def test_hostile_names_are_refused_per_file_and_nothing_escapes(azurite, container, tmp_path):
    cc = container_client(azurite, container)
    # Azurite (like Azure) turns "\" into "/": "..\\up" is stored as "../up"
    stored = ["h/..\\up", "h//abs", "h/a//b", "h/d", "h/d/e", "h/ok.txt", "h/%2e%2e/lit"]
    for name in stored:
        cc.upload_blob(name, b"payload", overwrite=True)
    out = tmp_path / "dest" / "out"
    outside = tmp_path / "dest" / "outside"
    outside.mkdir(parents=True)
    out.mkdir()
    (out / "link").symlink_to(outside)
    cc.upload_blob("h/link/x", b"payload")
    cc.upload_blob("h/link/newdir/y", b"payload")  # no directory may be made through the link
    report, _ = run_restore(azurite, tmp_path, container + "/h/", out)
    reasons = dict(report.failures)
    assert "'..' segment" in reasons["../up"]
    assert "absolute" in reasons["/abs"]
    assert "empty path segment" in reasons["a//b"]
    assert "a file and a directory" in reasons["d"]
    assert "symbolic link" in reasons["link/x"]
    assert "symbolic link" in reasons["link/newdir/y"]
    assert report.files_failed == 6 and report.files_copied == 3
    assert (out / "ok.txt").read_bytes() == b"payload"
    assert (out / "d" / "e").read_bytes() == b"payload"
    assert (out / "%2e%2e" / "lit").read_bytes() == b"payload"
    assert list(outside.iterdir()) == [] and not (tmp_path / "dest" / "up").exists()


def _cli(*args: str, **kw: Any) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "pyengine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
        **kw,
    )


def test_kill_9_mid_file_then_resume_fetches_only_the_rest(
    azurite, container, tmp_path, fault_proxy
):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    data = content(40 * MiB + 5, 3)  # 6 ranges of 8 MiB (the last of 5 bytes)
    (src / "big.bin").write_bytes(data)
    url = container + "/r/"
    upload(azurite, tmp_path, src, url)
    is_data_get = lambda m, p: m == "GET" and "big.bin" in p and "comp=" not in p  # noqa: E731
    fault_proxy.fault("stall", every=4, times=1, match=is_data_get, stall_s=60)
    args = [
        "restore", fault_proxy.url(url), str(out), "--json", "--concurrency", "1",
        "--memory-cap", "8", "--connection-string", azurite.connection_string,
        "--journal", str(tmp_path / "journal.sqlite"),
    ]  # fmt: skip
    proc = _cli(*args)
    state = out / ".big.bin.pyengine-part.state"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state.exists() and len(state.read_text().splitlines()) >= 4:  # header + 3 ranges
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "big.bin").exists()
    fault_proxy.clear()
    gets_before = fault_proxy.requests
    resumed = _cli(*args)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["ranges_resumed"] == 3 and summary["ranges_fetched"] == 3
    # container check + listing + 3 range GETs: the 3 checked ranges were not fetched again
    assert fault_proxy.requests - gets_before <= 2 + 3
    assert (out / "big.bin").read_bytes() == data
    assert leftovers(out) == []


def test_cli_exit_code_is_1_when_a_file_fails_and_errors_are_one_line(azurite, container, tmp_path):
    cc = container_client(azurite, container)
    cc.upload_blob("e/ok.bin", b"ok")
    cc.upload_blob("e//abs", b"no")
    proc = _cli(
        "restore", container + "/e/", str(tmp_path / "out"),
        "--connection-string", azurite.connection_string,
        "--journal", str(tmp_path / "journal.sqlite"),
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "error: /abs: absolute name refused" in stderr
    assert (tmp_path / "out" / "ok.bin").read_bytes() == b"ok"


def test_archived_blobs_are_reported_pending_and_rehydrate_asks_for_hot(
    azurite, container, tmp_path
):
    cc = container_client(azurite, container)
    cc.upload_blob("a/cold.bin", b"cold")
    cc.upload_blob("a/warm.bin", b"warm")
    cc.get_blob_client("a/cold.bin").set_standard_blob_tier("Archive")
    out = tmp_path / "out"
    report, _ = run_restore(azurite, tmp_path, container + "/a/", out)
    assert not report.ok and report.files_failed == 0
    assert report.files_pending_archive == 1 and report.pending_archive == ["a/cold.bin"]
    assert (out / "warm.bin").read_bytes() == b"warm" and not (out / "cold.bin").exists()
    statuses = {e["path"]: e["status"] for e in read_manifest(report.manifest_path)}
    assert statuses == {"cold.bin": "pending", "warm.bin": "unverified"}  # SDK blob: no digest
    report, _ = run_restore(azurite, tmp_path, container + "/a/", out, rehydrate="High")
    assert report.files_pending_archive == 1
    props = cc.get_blob_client("a/cold.bin").get_blob_properties()
    # the service records the request: Azure shows rehydrate-pending-to-hot; Azurite moves it
    assert props.archive_status == "rehydrate-pending-to-hot" or props.blob_tier == "Hot"


def test_study_and_tenant_select_blobs_by_their_index_tags(azurite, container, tmp_path):
    cc = container_client(azurite, container)
    cc.upload_blob("s/a.dcm", b"a", tags={"tenant": "north", "studyuid": "1.2.3"})
    cc.upload_blob("s/b.dcm", b"b", tags={"tenant": "north", "studyuid": "1.2.4"})
    cc.upload_blob("s/c.dcm", b"c", tags={"tenant": "south", "studyuid": "1.2.3"})
    report, _ = run_restore(
        azurite, tmp_path, container + "/s/", tmp_path / "o1", study_uid="1.2.3"
    )
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["a.dcm", "c.dcm"]
    report, _ = run_restore(
        azurite, tmp_path, container + "/s/", tmp_path / "o2", study_uid="1.2.3", tenant="north"
    )
    assert report.files_copied == 1
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["a.dcm"]
