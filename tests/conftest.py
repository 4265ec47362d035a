"""Shared fixtures: a real Azurite blob service for the whole session, a fresh container per test.

Set ``PYENGINE_AZURITE_DEBUG=1`` to have Azurite write its debug log (every request, the string
it signed) to ``azurite.debug_log`` in the session's temp dir; it is off by default because it
slows Azurite down.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Azurite's well-known development account: public, printed in Azurite's own README.
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_LISTENING = re.compile(r"successfully listens on https?://[^:]+:(\d+)")
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Azurite:
    port: int
    account_name: str
    account_key: str
    debug_log: Path | None

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.account_url};"
        )


def _azurite_blob_bin() -> str:
    local = REPO / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    pytest.fail(
        "Azurite is not installed (no node_modules/.bin/azurite-blob nor azurite-blob on PATH): "
        "run `make test`, which installs it",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real Azurite blob service on a free loopback port, stopped at the end of the session."""
    workdir = tmp_path_factory.mktemp("azurite")
    debug_log = workdir / "debug.log" if os.environ.get("PYENGINE_AZURITE_DEBUG") else None
    cmd = [
        _azurite_blob_bin(),
        "--blobHost",
        "127.0.0.1",
        # port 0: the kernel picks a free port and Azurite prints it (no probe-then-bind race)
        "--blobPort",
        "0",
        "--location",
        str(workdir / "data"),
        "--disableTelemetry",  # tests must not reach the network
        "--skipApiVersionCheck",
        # --loose is required: strict mode rejects x-ms-content-crc64 as an unsupported header
        # (Azurite's StrictModelMiddlewareFactory), and every Put Block/Put Blob sends it.
        "--loose",
        # above aiohttp's 15 s pool keep-alive, so Azurite never closes a connection the
        # client is about to reuse (that would show up as spurious retries)
        "--blobKeepAliveTimeout",
        "60",
    ]
    cmd += ["--debug", str(debug_log)] if debug_log else ["--silent"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
    )
    assert proc.stdout is not None
    port: int | None = None
    lines: list[str] = []
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break  # exited
        lines.append(line.rstrip())
        m = _LISTENING.search(line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        proc.wait()
        pytest.fail("Azurite did not start: " + " | ".join(lines[-5:]), pytrace=False)
    # keep draining its output so a full pipe never blocks it
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield Azurite(port, DEV_ACCOUNT_NAME, DEV_ACCOUNT_KEY, debug_log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def container(azurite: Azurite) -> Iterator[str]:
    """A fresh, uniquely named container; yields its Destination-ready URL (no credential)."""
    from azure.storage.blob import BlobServiceClient

    name = f"t-{uuid.uuid4().hex[:20]}"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        svc.create_container(name)
        yield f"{azurite.account_url}/{name}"
        svc.delete_container(name)
