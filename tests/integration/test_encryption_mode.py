"""What the user asked for is what the destination holds: "up to date" includes the encryption
mode, the KEK and the source's ctime; key rotation re-wraps in place; a resume never mixes modes.
Checked with the official SDK (the `sdk_blob` fixture decrypts with a key)."""

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
from pyengine.crypto import LocalKeyWrapper
from pyengine.state.journal import Journal
from pyengine.targets.azure_blob import parse_destination

pytestmark = pytest.mark.integration


def _tree(src: Path) -> dict[str, bytes]:
    files = {f"s/img{i}.dcm": os.urandom(1000 + i) for i in range(4)}
    files["s/big.dcm"] = os.urandom(9 * 1024 * 1024)  # several blocks
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


def _copy(src: Path, container: str, tmp: Path, azurite, **kw) -> pyengine.CopyReport:
    opts = CopyOptions(
        journal_path=str(tmp / "j.sqlite"),
        connection_string=azurite.connection_string,
        threads=2,
        **kw,
    )
    return asyncio.run(pyengine.copy(src, container, opts))


def _plain_blobs(azurite, container: str) -> dict[str, tuple[bytes, dict]]:
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    out = {}
    with ContainerClient.from_container_url(container, credential=cred) as c:
        for b in c.list_blobs(include=["metadata"]):
            out[b.name] = (c.download_blob(b.name).readall(), dict(b.metadata))
    return out


def _assert_encrypted_under(sdk_blob, container, files, key: bytes) -> None:
    for rel, data in files.items():
        with sdk_blob(container, rel, key) as bc:
            assert bc.download_blob().readall() == data, rel


def test_plain_copy_then_encrypt_sends_every_file_again_encrypted(
    tmp_path, azurite, container, sdk_blob
) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    assert _copy(src, container, tmp_path, azurite).files_copied == len(files)
    key = os.urandom(32)
    report = _copy(src, container, tmp_path, azurite, encrypt=True, kek=LocalKeyWrapper(key))
    assert report.ok
    assert report.files_copied == len(files) and report.files_skipped == 0
    assert report.files_resent_for_encryption == len(files)
    _assert_encrypted_under(sdk_blob, container, files, key)
    for rel, (raw, md) in _plain_blobs(azurite, container).items():
        assert "encryptiondata" in md and raw != files[rel]


def test_encrypted_copy_then_plain_sends_every_file_again_plain(
    tmp_path, azurite, container
) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    key = LocalKeyWrapper(os.urandom(32))
    assert _copy(src, container, tmp_path, azurite, encrypt=True, kek=key).ok
    report = _copy(src, container, tmp_path, azurite)
    assert report.files_copied == len(files) and report.files_resent_for_encryption == len(files)
    for rel, (raw, md) in _plain_blobs(azurite, container).items():
        assert raw == files[rel] and "encryptiondata" not in md


def test_another_kek_resends_and_an_old_kek_rewraps_in_place(
    tmp_path, azurite, container, sdk_blob
) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    k1, k2, k3 = (os.urandom(32) for _ in range(3))
    assert _copy(src, container, tmp_path, azurite, encrypt=True, kek=LocalKeyWrapper(k1)).ok

    # k1 is given as an old key: every blob is re-wrapped under k2, no byte is sent
    report = _copy(
        src,
        container,
        tmp_path,
        azurite,
        encrypt=True,
        kek=LocalKeyWrapper(k2),
        old_keks=(LocalKeyWrapper(k1),),
    )
    assert report.ok
    assert report.files_rewrapped == len(files) and report.files_skipped == len(files)
    assert report.files_copied == 0 and report.blocks_sent == 0
    _assert_encrypted_under(sdk_blob, container, files, k2)

    # k3 without the old key: the blobs cannot stay under k2, so they are sent again under k3
    report = _copy(src, container, tmp_path, azurite, encrypt=True, kek=LocalKeyWrapper(k3))
    assert report.files_copied == len(files)
    assert report.files_resent_for_encryption == len(files)
    _assert_encrypted_under(sdk_blob, container, files, k3)


def test_rekey_command_rewraps_every_blob_and_is_idempotent(
    tmp_path, azurite, container, sdk_blob
) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    old, new = os.urandom(32), os.urandom(32)
    assert _copy(src, container, tmp_path, azurite, encrypt=True, kek=LocalKeyWrapper(old)).ok
    before = _plain_blobs(azurite, container)
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    cmd = [
        sys.executable, "-m", "pyengine.cli", "rekey", container, "--kek-file",
        str(tmp_path / "old.bin"), "--new-kek-file", str(tmp_path / "new.bin"), "--json",
        "--connection-string", azurite.connection_string,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["blobs_rewrapped"] == len(files) and summary["problems"] == []
    _assert_encrypted_under(sdk_blob, container, files, new)
    after = _plain_blobs(azurite, container)
    for rel in files:  # ciphertext untouched: metadata only
        assert after[rel][0] == before[rel][0]
        assert after[rel][1]["encryptiondata"] != before[rel][1]["encryptiondata"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["blobs_rewrapped"] == 0 and summary["blobs_already_new"] == len(files)


def test_resume_with_other_encryption_options_exits_2_naming_the_option(
    tmp_path, azurite, container
) -> None:
    src = tmp_path / "src"
    _tree(src)
    journal_path = tmp_path / "j.sqlite"
    dest = parse_destination(container).redacted()
    with Journal.open(str(journal_path)) as journal:  # an unfinished plain job
        journal.create_job(str(src), dest, {"encrypt": False, "kek_id": None})
    (tmp_path / "k.bin").write_bytes(os.urandom(32))
    proc = subprocess.run(
        [
            sys.executable, "-m", "pyengine.cli", "copy", str(src), container, "--encrypt",
            "--kek-file", str(tmp_path / "k.bin"), "--journal", str(journal_path),
            "--connection-string", azurite.connection_string,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --encrypt: job ") and "without --encrypt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_file_rewritten_in_place_with_mtime_restored_is_sent_again(
    tmp_path, azurite, container
) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    assert _copy(src, container, tmp_path, azurite).files_copied == len(files)
    path = src / "s/img2.dcm"
    st = path.stat()
    new = os.urandom(st.st_size)
    path.write_bytes(new)  # same size, and the archiver puts the mtime back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ctime_ns != st.st_ctime_ns
    report = _copy(src, container, tmp_path, azurite)
    assert report.files_copied == 1 and report.files_skipped == len(files) - 1
    assert _plain_blobs(azurite, container)["s/img2.dcm"][0] == new
