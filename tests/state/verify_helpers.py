"""Helpers shared by the verify tests (test_verify, test_verify_deep): the CLI as a subprocess,
a small DICOM-like tree, a copy into Azurite, and bit rot done with the official SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from azure.storage.blob import ContainerClient

MiB = 1024 * 1024
REGION = 4 * MiB
STORED_REGION = REGION + 28
BIG = "study/series1/img0001.dcm"  # 12 MiB + 7: three regions and a bit


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": "", "COLUMNS": "200"},
    )


def pattern(n_bytes: int, seed: int) -> bytes:
    # i % 251 (BLAKE3's test-vector input) shifted by seed: swapped blocks change the hash
    return bytes((i + seed) % 251 for i in range(251)) * (n_bytes // 251) + bytes(n_bytes % 251)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        BIG: pattern(12 * MiB + 7, 1),  # 4 blocks of 4 MiB
        "study/series1/img0002.dcm": pattern(70_000, 2),
        "study/notes.txt": b"report\n",
        "empty.dcm": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def copy_tree(src: Path, dest: str, journal: Path, cs: str, *extra: str) -> str:
    proc = run_cli(
        "copy", str(src), dest, "--json", "--block-size", "4", "--journal", str(journal),
        "--connection-string", cs, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "summary"
    return summary["job_id"]


def verify_cli(
    target: str, journal: Path, cs: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli("verify", target, "--journal", str(journal), "--connection-string", cs, *extra)


def json_report(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout)


def findings_of(report: dict) -> list[tuple[str, str, str]]:
    return sorted((f["kind"], f["blob"], f["reason"]) for f in report["findings"])


def container_client(azurite, container: str) -> ContainerClient:
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    return ContainerClient.from_container_url(container, credential=cred)


def flip_byte(client: ContainerClient, name: str, offset: int) -> None:
    """Bit rot: one byte changed, same size, same metadata (the stored bytes, ciphertext when the
    blob is encrypted: this client holds no key, so it neither decrypts nor encrypts)."""
    blob = client.get_blob_client(name)
    metadata = blob.get_blob_properties().metadata
    data = bytearray(blob.download_blob().readall())
    data[offset] ^= 0x01
    blob.upload_blob(bytes(data), overwrite=True, metadata=metadata)
