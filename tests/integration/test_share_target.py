"""A mounted Data Box share as the destination: `pyengine copy SRC <tmp>/acct_BlockBlob/cont`.

No Azurite: the share is a temporary directory laid out as the device's SMB/NFS share is. What
the files hold is compared with the source byte for byte; mtimes, the journal's CRC64 (the
share ETag) and the manifest are checked; a kill -9 mid-file is resumed block by block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyengine import _core
from pyengine.state.manifest import read_manifest

MiB = 1024 * 1024


def _tree(src: Path) -> dict[str, bytes]:
    files = {
        "empty.dcm": b"",
        "one.dcm": b"\x01",
        "edge/block.bin": bytes(i % 251 for i in range(MiB)),  # exactly one block
        "edge/block+1.bin": bytes(i % 251 for i in range(9 * MiB + 1)),  # blocks + 1 byte
        "edge/blocks.bin": bytes(i % 249 for i in range(10 * MiB)),  # whole blocks
        "ünïcødé/Ω 名前.dcm": "ünïcødé".encode() * 1000,
    }
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789 + len(rel)))
    return files


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine", "copy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _summary(stdout: str) -> dict:
    return [json.loads(line) for line in stdout.splitlines() if '"summary"' in line][-1]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_copy_to_a_share_writes_exact_files_with_mtimes_and_journals_crc64(tmp_path: Path) -> None:
    src, share = tmp_path / "src", tmp_path / "mnt" / "acct_BlockBlob"
    share.mkdir(parents=True)
    files = _tree(src)
    journal = tmp_path / "j" / "journal.sqlite"
    dest = share / "cont" / "pre"
    args = [str(src), str(dest), "--create-container", "--journal", str(journal)]
    run = _cli(*args, "--block-size", "1", "--json")
    assert run.returncode == 0, run.stderr
    assert _files_under(dest) == sorted(files)  # no temporary name left behind
    for rel, data in files.items():
        out = dest / rel
        assert out.read_bytes() == data
        assert out.stat().st_mtime_ns == (src / rel).stat().st_mtime_ns
    manifest = list(read_manifest(_summary(run.stdout)["manifest_path"]))
    assert {m["path"] for m in manifest} == set(files)
    for m in manifest:
        data = files[m["path"]]
        assert m["status"] == "copied"
        assert m["crc64"] == f"{_core.crc64(data):016x}"  # combined from the blocks' CRC64s
        assert m["blake3"] == _core.blake3(data).hex()
        assert m["blob_url"].startswith("file://")

    again = _cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    report = _summary(again.stdout)
    assert report["files_copied"] == 0 and report["files_skipped"] == len(files)


def test_copy_to_a_share_killed_mid_file_resumes_sending_only_missing_blocks(
    tmp_path: Path,
) -> None:
    src, share = tmp_path / "src", tmp_path / "acct_BlockBlob" / "cont"
    share.mkdir(parents=True)
    src.mkdir()
    big = bytes(i % 251 for i in range(16 * MiB))
    (src / "big.dcm").write_bytes(big)
    journal = tmp_path / "journal.sqlite"
    # 16 blocks of 1 MiB at 4 MB/s: about 4 s, killed once a few blocks are staged
    args = [str(src), str(share), "--journal", str(journal), "--block-size", "1", "--json"]
    child = subprocess.Popen(
        [sys.executable, "-m", "pyengine", "copy", *args, "--cap-mbps", "32"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sidecars = list(share.glob(".pyengine-*.blocks"))
            if sidecars and sidecars[0].read_text().count("\n") >= 4:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no block was staged in 30 s")
        time.sleep(0.7)  # the journal's 0.5 s group commit records the acknowledgements
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not (share / "big.dcm").exists()  # nothing committed by the killed run
    staged = sidecars[0].read_text().count("\n")

    run = _cli(*args)
    assert run.returncode == 0, run.stderr
    report = _summary(run.stdout)
    assert report["blocks_resumed"] >= 4
    assert report["blocks_resumed"] + report["blocks_sent"] == 16
    assert report["blocks_sent"] <= 16 - 4 and report["blocks_resumed"] <= staged
    assert (share / "big.dcm").read_bytes() == big
    assert _files_under(share) == ["big.dcm"]


def test_encrypt_to_a_share_is_refused_with_the_reason(tmp_path: Path) -> None:
    src, share = tmp_path / "src", tmp_path / "acct_BlockBlob" / "cont"
    share.mkdir(parents=True)
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x")
    kek = tmp_path / "kek"
    kek.write_bytes(os.urandom(32))
    run = _cli(
        str(src), str(share), "--journal", str(tmp_path / "j"), "--encrypt", "--kek-file", str(kek)
    )
    assert run.returncode == 2
    assert "metadata (the wrapped key) cannot travel through a share" in run.stderr
    assert not any(share.iterdir())


@pytest.mark.parametrize(
    ("dest", "reason"),
    [
        ("acct_BlockBlob/Not_Valid", "invalid container name 'Not_Valid'"),
        ("plain/cont", "not a Data Box share path"),
        ("acct_PageBlob/cont", "not a block blob share"),
    ],
)
def test_a_share_dest_outside_the_block_blob_layout_is_refused(
    tmp_path: Path, dest: str, reason: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x")
    run = _cli(str(src), str(tmp_path / dest), "--journal", str(tmp_path / "j"))
    assert run.returncode == 2
    assert reason in run.stderr and run.stderr.count("\n") == 1


def test_a_blob_name_over_880_characters_is_refused_at_plan_time(tmp_path: Path) -> None:
    src, share = tmp_path / "src", tmp_path / "acct_BlockBlob" / "cont"
    share.mkdir(parents=True)
    deep = src.joinpath(*["d" * 200] * 4)
    deep.mkdir(parents=True)
    (deep / ("f" * 80)).write_bytes(b"too long for Data Box")  # 884 characters < 1024
    (src / "ok.dcm").write_bytes(b"fine")
    run = _cli(str(src), str(share), "--journal", str(tmp_path / "j"), "--json")
    assert run.returncode == 1
    failures = _summary(run.stdout)["failures"]
    assert len(failures) == 1 and "blob name too long: 884 characters > 880" in str(failures[0])
    assert _files_under(share) == ["ok.dcm"]
