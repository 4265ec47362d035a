"""Copies through a real nginx reverse proxy with its default header handling (issue 16 item 1).

nginx drops request headers whose names hold ``_`` unless ``underscores_in_headers on``; metadata
travels as ``x-ms-meta-<name>`` headers, so a ``pyengine_*`` name vanished on the way, the
SharedKey signature (computed over the headers as sent) no longer matched, and every upload got
403. The proxy here keeps nginx's defaults for headers and only sets what any upload proxy needs
(no body size limit, no request buffering, HTTP/1.1 upstream). Host is passed on as the client
sent it: a SharedKey signature covers the x-ms-* headers and the URL path, not Host. What went
through nginx is read back directly from Azurite with the official SDK.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper
from pyengine.errors import AuthError
from pyengine.options import MiB, RetryPolicy
from pyengine.targets.azure_blob import BlobStore, parse_destination, resolve_credential

pytestmark = pytest.mark.integration

KiB = 1024
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT_S = 10.0
#: a single-Put file, a multi-block one (1 MiB blocks over 1 MiB, below) and an empty one
SIZES = {"study/img0001.dcm": 70 * KiB, "study/big.dcm": 5 * MiB // 2, "empty.dcm": 0}


def render_proxy_conf(tmpdir: Path, port: int, upstream_port: int) -> str:
    # No underscores_in_headers / ignore_invalid_headers lines: their defaults (off / on) are
    # the point of the test.
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmpdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
pid {tmpdir}/nginx.pid;
error_log {tmpdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx_proxy(azurite: Any, tmp_path: Path) -> Iterator[str]:
    """nginx on a free loopback port proxying to the session's Azurite; yields its origin."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX}: not installed (apt-get install nginx-light)", pytrace=False)
    tmpdir = tmp_path / "nginx"
    tmpdir.mkdir()
    port = free_port()
    (tmpdir / "nginx.conf").write_text(render_proxy_conf(tmpdir, port, azurite.port))
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmpdir), "-c", str(tmpdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"nginx did not start: {err.decode(errors='replace')}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not listen in time", pytrace=False)
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def via(proxy: str, container: str) -> str:
    """``container`` (an Azurite URL) with the proxy's origin in place of Azurite's."""
    path = container.split("/", 3)[3]
    return f"{proxy}/{path}"


def make_tree(root: Path) -> dict[str, bytes]:
    files = {}
    for i, (rel, size_bytes) in enumerate(sorted(SIZES.items())):
        data = bytes((j * 13 + i) % 251 for j in range(size_bytes))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_copy_through_nginx_with_default_header_handling_succeeds(
    tmp_path: Path, azurite: Any, container: str, nginx_proxy: str, sdk_blob: Any, encrypt: bool
) -> None:
    files = make_tree(tmp_path / "src")
    key = os.urandom(32)
    opts = CopyOptions(
        threads=2,
        memory_cap_bytes=32 * MiB,
        block_bytes=4 * MiB if encrypt else 1 * MiB,  # encrypted: whole 4 MiB regions
        single_put_max_bytes=1 * MiB,
        encrypt=encrypt,
        kek=LocalKeyWrapper(key) if encrypt else None,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
        retry=RetryPolicy(max_elapsed_s=20.0),
    )
    report = asyncio.run(pyengine.copy(tmp_path / "src", via(nginx_proxy, container), opts))
    assert (report.files_copied, report.files_failed) == (len(files), 0), report
    for rel, data in files.items():  # read back directly from Azurite, not through nginx
        blob = sdk_blob(container, rel, key if encrypt else None)
        got = blob.download_blob().readall()
        assert blake3.blake3(got).digest() == blake3.blake3(data).digest(), rel
        if encrypt:
            assert "encryptiondata" in blob.get_blob_properties().metadata
        if len(data) > MiB:  # Put Block and Put Block List went through nginx too
            assert len(blob.get_block_list("committed")[0]) == (1 if encrypt else 3), rel


def test_underscore_metadata_through_nginx_is_reported_as_a_signature_mismatch(
    azurite: Any, container: str, nginx_proxy: str
) -> None:
    dest = parse_destination(via(nginx_proxy, container))
    credential = resolve_credential(dest, azurite.connection_string, env={})

    async def go() -> None:
        async with BlobStore(dest, credential, retry=RetryPolicy(max_elapsed_s=5.0)) as store:
            await store.put_blob("u.bin", b"u", crc64=0x0, metadata={"a_b": "1"})

    with pytest.raises(AuthError) as info:
        asyncio.run(go())
    reason = info.value.reason
    assert reason.startswith("authentication failed, signature mismatch (403 "), reason
    assert "altered or dropped headers" in reason
    assert "nginx drops header names holding '_'" in reason
