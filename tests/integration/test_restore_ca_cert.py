"""`pyengine restore --ca-cert FILE` (issue 12): a restore from an endpoint whose certificate a
private CA signed (a Data Box's Blob endpoint; here its stand-in, tests/databoxproxy.py, HTTPS on
127.0.0.1 in front of Azurite) trusts it through the flag alone, as copy does; without the flag
it fails with the one-line certificate error, and a missing file stops it before any request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyengine
from pyengine import CopyOptions
from pyengine.options import MiB

pytestmark = pytest.mark.integration


def restore(azurite: Any, url: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    env.pop("SSL_CERT_FILE", None)  # only --ca-cert may trust the stand-in
    env.pop("SSL_CERT_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "pyengine", "restore", url, str(out), "--target", "databox",
         "--retry-window", "2", "--threads", "2", *flags],
        env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_restore_trusts_a_private_ca_with_ca_cert_and_refuses_it_without(
    databox, azurite, container, tmp_path
):
    src = tmp_path / "src"
    files = {"a/s0.dcm": os.urandom(1000), "b/multi.bin": os.urandom(2 * MiB + 17)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    opts = CopyOptions(
        threads=2,
        block_bytes=MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "j.sqlite"),
    )
    assert asyncio.run(pyengine.copy(src, container, opts)).failures == []
    url = databox.url(container)

    refused = restore(azurite, url, tmp_path / "out0")
    assert refused.returncode == 3  # the destination cannot be used (cli/common.py's table)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert "TLS certificate not trusted" in lines[0] and "--ca-cert FILE" in lines[0]
    assert databox.log == []  # the handshake failed: no request reached the stand-in

    missing = restore(azurite, url, tmp_path / "out1", "--ca-cert", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.pem'}: --ca-cert: no such file"
    ]
    assert databox.log == [] and not (tmp_path / "out1").exists()

    ok = restore(azurite, url, tmp_path / "out", "--ca-cert", str(databox.ca_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    assert databox.log and databox.refused() == []
    assert {e.headers["x-ms-version"] for e in databox.log} == {"2019-02-02"}
