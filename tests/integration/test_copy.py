"""The upload path end to end (issue 3): pyengine.copy() against the real Azurite from conftest.py.

Every check reads the destination back with the official SDK: content (BLAKE3 of the download
equals the source's), metadata, names, tier, tags, and client-side encryption v2 decrypted by the
SDK itself. x-ms-content-crc64 is checked on the wire through a recording reverse proxy, because
Azurite in --loose mode ignores the header.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient
from azure.storage.extensions import checksums

import pyengine
from pyengine import CopyOptions, CopyReport, Event, LocalKeyWrapper
from pyengine.crypto import content_key_from_metadata, keyed_digest_hex
from pyengine.options import MiB

pytestmark = pytest.mark.integration

KiB = 1024
# Azurite takes ~60 MB/s: each test sends a few tens of MB at most.


def content(size_bytes: int, seed: int) -> bytes:
    """Deterministic bytes, different per seed: the ``i % 251`` pattern (swapped blocks change
    the digest) rotated by ``seed`` so that two files of one size differ."""
    period = bytes(range(251))
    reps = (size_bytes + seed) // 251 + 1
    return (period * reps)[seed % 251 : seed % 251 + size_bytes]


def make_tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """Write ``{rel_path: size_bytes}`` under ``root``; returns ``{rel_path: bytes}``."""
    files: dict[str, bytes] = {}
    for seed, (rel, size_bytes) in enumerate(sorted(sizes.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content(size_bytes, seed)
        path.write_bytes(data)
        files[rel] = data
    return files


def container_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def options(azurite: Any, tmp_path: Path, **kw: Any) -> CopyOptions:
    """Small, fast options: 2 reader threads (CI has 2 cores), a per-test journal."""
    base: dict[str, Any] = {
        "threads": 2,
        "memory_cap_bytes": 64 * MiB,
        "connection_string": azurite.connection_string,
        "journal_path": str(tmp_path / "journal.sqlite"),
    }
    base.update(kw)
    return CopyOptions(**base)


def run_copy(src: Path, dest: str, opts: CopyOptions) -> tuple[CopyReport, list[Event]]:
    events: list[Event] = []
    report = asyncio.run(pyengine.copy(src, dest, opts, on_event=events.append))
    return report, events


def container_client(azurite: Any, url: str) -> ContainerClient:
    return ContainerClient.from_connection_string(azurite.connection_string, container_of(url))


def download_all(azurite: Any, url: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """``{blob name: (content, metadata)}`` of every blob in the container."""
    out: dict[str, tuple[bytes, dict[str, str]]] = {}
    with container_client(azurite, url) as cc:
        for props in cc.list_blobs(include=["metadata"]):
            data = cc.download_blob(props.name).readall()
            out[props.name] = (data, dict(props.metadata or {}))
    return out


def assert_blobs_match_sources(
    azurite: Any, url: str, src: Path, files: dict[str, bytes], prefix: str = ""
) -> None:
    blobs = download_all(azurite, url)
    assert sorted(blobs) == sorted(prefix + rel for rel in files)
    for rel, data in files.items():
        got, metadata = blobs[prefix + rel]
        expected_b3 = blake3.blake3(data).hexdigest()
        assert len(got) == len(data), rel
        assert blake3.blake3(got).hexdigest() == expected_b3, rel
        assert metadata["pyengineblake3"] == expected_b3, rel
        assert metadata["pyenginesize"] == str(len(data)), rel
        assert metadata["pyenginemtimens"] == str(os.stat(src / rel).st_mtime_ns), rel


# ------------------------------------------------------------------------------------------
# content, names, metadata


def test_blobs_equal_sources_around_4_mib_block_boundaries(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # block 4 MiB and a 1 MiB single-put limit: 4 MiB ± 1 and 8 MiB ± 1 go as Put Block × n,
    # so every case of "last block full / one byte / one byte short" is committed
    sizes = {
        "empty.dcm": 0,
        "one.dcm": 1,
        "put-blob-max.dcm": 1 * MiB,
        "first-block-list.dcm": 1 * MiB + 1,
        "b/4m-1.dcm": 4 * MiB - 1,
        "b/4m.dcm": 4 * MiB,
        "b/4m+1.dcm": 4 * MiB + 1,
        "c/d/8m-1.dcm": 8 * MiB - 1,
        "c/d/8m.dcm": 8 * MiB,
        "c/d/8m+1.dcm": 8 * MiB + 1,
    }
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    opts = options(azurite, tmp_path, block_bytes=4 * MiB, single_put_max_bytes=1 * MiB)
    report, _ = run_copy(src, container, opts)
    assert report.failures == []
    assert (report.files_copied, report.bytes_copied) == (len(sizes), sum(sizes.values()))
    assert_blobs_match_sources(azurite, container, src, files)
    # the multi-block files really are block lists of 4 MiB blocks
    with container_client(azurite, container) as cc:
        blocks = cc.get_blob_client("c/d/8m+1.dcm").get_block_list("committed")[0]
    assert [b.size for b in blocks] == [4 * MiB, 4 * MiB, 1]


def test_blobs_equal_sources_around_the_8_mib_single_put_threshold_with_defaults(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"8m-1.dcm": 8 * MiB - 1, "8m.dcm": 8 * MiB, "8m+1.dcm": 8 * MiB + 1}
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    report, _ = run_copy(src, container, options(azurite, tmp_path))
    assert report.files_copied == 3 and report.failures == []
    assert_blobs_match_sources(azurite, container, src, files)
    with container_client(azurite, container) as cc:
        committed = {
            name: cc.get_blob_client(name).get_block_list("committed")[0] for name in sizes
        }
    # Put Blob leaves no block list; above the threshold: default 8 MiB blocks
    assert committed["8m.dcm"] == [] and committed["8m-1.dcm"] == []
    assert [b.size for b in committed["8m+1.dcm"]] == [8 * MiB, 1]


def test_blob_names_are_prefix_plus_relative_path_for_nested_and_unicode_names(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {
        "Ünïcødé/患者 1.dcm": 3 * KiB,
        "a/b/c/d/e/deep.dcm": 10,
        "space name/x y.dcm": 1,
        "plus+and%25percent.dcm": 5,
        "top.dcm": 0,
    }
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    report, events = run_copy(src, container + "/site-a/2024", options(azurite, tmp_path))
    assert report.files_copied == len(sizes) and report.failures == []
    assert_blobs_match_sources(azurite, container, src, files, prefix="site-a/2024/")
    copied = {e.path: e.blob for e in events if e.kind == "file_copied"}
    assert copied == {rel: "site-a/2024/" + rel for rel in sizes}


def test_single_file_source_becomes_one_blob_named_after_its_basename(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    path = tmp_path / "study.dcm"
    path.write_bytes(content(5000, 7))
    report, _ = run_copy(path, container + "/in", options(azurite, tmp_path))
    assert report.files_copied == 1
    blobs = download_all(azurite, container)
    assert list(blobs) == ["in/study.dcm"]
    assert blobs["in/study.dcm"][0] == path.read_bytes()


# ------------------------------------------------------------------------------------------
# client-side encryption v2: the SDK decrypts what we upload


@pytest.mark.parametrize("block_mib", [None, 4])
def test_encrypted_blobs_decrypt_with_the_official_sdk(
    azurite: Any, container: str, tmp_path: Path, sdk_blob: Any, block_mib: int | None
) -> None:
    sizes = {
        "e0.dcm": 0,
        "e1.dcm": 1,
        "e4m-1.dcm": 4 * MiB - 1,
        "e4m.dcm": 4 * MiB,
        "e4m+1.dcm": 4 * MiB + 1,
        "e9m.dcm": 9 * MiB,
    }
    if block_mib is None:
        sizes["e20m.dcm"] = 20 * MiB  # 3 blocks of the default 8 MiB
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    key = os.urandom(32)
    opts = options(
        azurite,
        tmp_path,
        encrypt=True,
        kek=LocalKeyWrapper(key),
        block_bytes=block_mib * MiB if block_mib else None,
    )
    report, _ = run_copy(src, container, opts)
    assert report.failures == [] and report.files_copied == len(sizes)
    for rel, data in files.items():
        with sdk_blob(container, rel, key) as bc:
            got = bc.download_blob().readall()
            metadata = bc.get_blob_properties().metadata
        assert got == data, rel
        # metadata describes the plaintext
        assert metadata["pyenginesize"] == str(len(data))
        # the plaintext digest is keyed: only a holder of the content key can check it
        assert "pyengineblake3" not in metadata
        cek = content_key_from_metadata(metadata["encryptiondata"], LocalKeyWrapper(key))
        assert cek is not None
        want = keyed_digest_hex(cek, blake3.blake3(data).hexdigest())
        assert metadata["pyenginekeyedblake3"] == want


def test_encrypted_blob_is_not_the_plaintext_at_rest(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    files = make_tree(src, {"p.dcm": 100 * KiB})
    opts = options(azurite, tmp_path, encrypt=True, kek=LocalKeyWrapper(os.urandom(32)))
    run_copy(src, container, opts)
    raw, metadata = download_all(azurite, container)["p.dcm"]
    # one 4 MiB region: 12-byte nonce (region 0) + ciphertext + 16-byte tag
    assert len(raw) == len(files["p.dcm"]) + 28
    assert raw[:12] == bytes(12)
    assert files["p.dcm"][:64] not in raw
    assert '"Protocol": "2.0"' in metadata["encryptiondata"]


# ------------------------------------------------------------------------------------------
# the library API: report, events, tier, tags, re-runs


def test_copy_reports_exact_counts_and_one_file_copied_event_per_file(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"a.dcm": 10, "b/c.dcm": 2 * MiB, "b/d.dcm": 0, "e.dcm": 9 * MiB}
    src = tmp_path / "src"
    make_tree(src, sizes)
    report, events = run_copy(src, container, options(azurite, tmp_path))
    assert isinstance(report, CopyReport)
    assert (report.files_copied, report.files_skipped, report.files_failed) == (4, 0, 0)
    assert (report.bytes_copied, report.bytes_skipped, report.bytes_failed) == (
        sum(sizes.values()),
        0,
        0,
    )
    assert report.ok and report.job_id and not report.dry_run
    assert report.manifest_path and Path(report.manifest_path).is_file()
    copied = sorted((e.path, e.bytes) for e in events if e.kind == "file_copied")
    assert copied == sorted(sizes.items())
    assert events[0].kind == "job_started" and events[-1].kind == "job_finished"
    # progress counts every acknowledged byte once
    assert sum(e.bytes for e in events if e.kind == "progress") == sum(sizes.values())


def test_tier_and_tags_are_applied_to_put_blob_and_block_list_blobs(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"small.dcm": 100, "large.dcm": 9 * MiB}  # Put Blob, then Put Block List
    src = tmp_path / "src"
    make_tree(src, sizes)
    tags = (("study", "CT-42"), ("site", "a b/c"))
    opts = options(azurite, tmp_path, tier="Cool", tags=tags)
    report, _ = run_copy(src, container, opts)
    assert report.files_copied == 2
    with container_client(azurite, container) as cc:
        for name in sizes:
            bc = cc.get_blob_client(name)
            assert bc.get_blob_tags() == dict(tags), name
            # Azurite 3.35 stores x-ms-access-tier of Put Blob / Put Block List and reports it
            assert bc.get_blob_properties().blob_tier == "Cool", name


def test_second_copy_of_an_unchanged_tree_skips_every_file(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"a.dcm": 10, "b/c.dcm": 9 * MiB}
    src = tmp_path / "src"
    make_tree(src, sizes)
    first, _ = run_copy(src, container, options(azurite, tmp_path))
    assert first.files_copied == 2
    with container_client(azurite, container) as cc:
        etags = {n: cc.get_blob_client(n).get_blob_properties().etag for n in sizes}
    second, events = run_copy(src, container, options(azurite, tmp_path))
    assert (second.files_copied, second.files_skipped) == (0, 2)
    assert second.bytes_skipped == sum(sizes.values())
    assert not [e for e in events if e.kind in ("file_started", "progress")]
    with container_client(azurite, container) as cc:
        assert {n: cc.get_blob_client(n).get_blob_properties().etag for n in sizes} == etags


def test_changed_file_is_sent_again_on_the_next_copy(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "b.dcm": 20})
    run_copy(src, container, options(azurite, tmp_path))
    (src / "b.dcm").write_bytes(b"new content")
    report, _ = run_copy(src, container, options(azurite, tmp_path))
    assert (report.files_copied, report.files_skipped) == (1, 1)
    blobs = download_all(azurite, container)
    assert blobs["b.dcm"][0] == b"new content"
    assert blobs["b.dcm"][1]["pyengineblake3"] == blake3.blake3(b"new content").hexdigest()


def test_dry_run_sends_nothing_and_plans_every_file(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"a.dcm": 10, "b/c.dcm": 9 * MiB}
    src = tmp_path / "src"
    make_tree(src, sizes)
    report, events = run_copy(src, container + "/p", options(azurite, tmp_path, dry_run=True))
    assert report.dry_run and (report.files_to_copy, report.files_copied) == (2, 0)
    assert (report.files_skipped, report.files_up_to_date) == (0, 0)
    planned = sorted((e.path, e.blob, e.bytes) for e in events if e.kind == "file_planned")
    assert planned == sorted((rel, "p/" + rel, n) for rel, n in sizes.items())
    assert download_all(azurite, container) == {}


def test_file_deleted_after_the_scan_is_reported_failed_and_the_rest_copied(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # file_started is emitted just before the file is handed to the native reader: deleting
    # the file then removes it between scan and read, deterministically
    sizes = {f"f{i:02d}.dcm": 1000 + i for i in range(20)}
    src = tmp_path / "src"
    make_tree(src, sizes)
    victim = src / "f13.dcm"

    def on_event(ev: Event) -> None:
        if ev.kind == "file_started" and ev.path == "f13.dcm":
            victim.unlink()

    report = asyncio.run(pyengine.copy(src, container, options(azurite, tmp_path), on_event))
    assert (report.files_copied, report.files_failed) == (19, 1)
    path, reason = report.failures[0]
    assert path == "f13.dcm"
    assert "no such file" in reason.lower() and "\n" not in reason
    assert sorted(download_all(azurite, container)) == sorted(set(sizes) - {"f13.dcm"})


def test_file_grown_after_the_scan_is_reported_failed_and_never_committed(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # file_started is emitted just before the file is handed to the native reader: growing the
    # file then makes it differ from what the scan planned (size), deterministically
    sizes = {"grows.dcm": 9 * MiB, "small.dcm": 10}
    src = tmp_path / "src"
    make_tree(src, sizes)
    grown = src / "grows.dcm"

    def on_event(ev: Event) -> None:
        if ev.kind == "file_started" and ev.path == "grows.dcm":
            with grown.open("ab") as f:
                f.write(b"appended after the scan")

    opts = options(azurite, tmp_path, block_bytes=4 * MiB)
    report = asyncio.run(pyengine.copy(src, container, opts, on_event=on_event))
    assert (report.files_copied, report.files_failed) == (1, 1)
    path, reason = report.failures[0]
    assert path == "grows.dcm" and "chang" in reason.lower()
    with container_client(azurite, container) as cc:
        assert [b.name for b in cc.list_blobs()] == ["small.dcm"]


# ------------------------------------------------------------------------------------------
# x-ms-content-crc64 on the wire (Azurite --loose ignores it: record it in a proxy)


class RecordingProxy:
    """A reverse proxy on 127.0.0.1 that forwards every request to Azurite unchanged (the
    SharedKey signature covers the path and headers, not the Host) and records each request's
    method, query, headers and body."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        self.requests.append(
            (request.method, request.query_string, {k.lower(): v for k, v in headers.items()}, body)
        )
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body if body else None,
        ) as resp:
            payload = await resp.read()
            out_headers = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            if request.method == "HEAD":
                out_headers["Content-Length"] = resp.headers.get("Content-Length", "0")
            return web.Response(status=resp.status, headers=out_headers, body=payload)

    async def __aenter__(self) -> RecordingProxy:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("Content-Type", "User-Agent")
        )
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def expected_crc64_header(body: bytes) -> str:
    crc = checksums.crc64.compute(body, 0)
    return base64.b64encode(crc.to_bytes(8, "little")).decode("ascii")


@pytest.fixture
def proxied(azurite: Any) -> Any:
    """``proxied(fn)`` runs ``await fn(proxy)`` with a RecordingProxy in front of Azurite and
    returns the proxy with its recorded requests."""

    def run(fn: Any) -> RecordingProxy:
        async def main() -> RecordingProxy:
            async with RecordingProxy(f"http://127.0.0.1:{azurite.port}") as proxy:
                await fn(proxy)
                return proxy

        return asyncio.run(main())

    return run


@pytest.mark.parametrize("encrypt", [False, True])
def test_every_put_blob_and_put_block_carries_the_crc64_of_its_body(
    azurite: Any, container: str, tmp_path: Path, proxied: Any, encrypt: bool
) -> None:
    sizes = {"empty.dcm": 0, "small.dcm": 1234, "multi.dcm": 9 * MiB + 3}
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    kek = LocalKeyWrapper(os.urandom(32)) if encrypt else None
    opts = options(
        azurite,
        tmp_path,
        block_bytes=4 * MiB,
        single_put_max_bytes=1 * MiB,
        encrypt=encrypt,
        kek=kek,
    )

    async def go(proxy: RecordingProxy) -> None:
        url = f"http://127.0.0.1:{proxy.port}/{azurite.account_name}/{container_of(container)}"
        report = await pyengine.copy(src, url, opts)
        assert report.failures == [] and report.files_copied == 3

    proxy = proxied(go)
    puts = [
        (query, headers, body)
        for method, query, headers, body in proxy.requests
        if method == "PUT" and "comp=blocklist" not in query
    ]
    blocks = [p for p in puts if "comp=block" in p[0]]
    blobs = [p for p in puts if "comp=" not in p[0]]
    # 9 MiB + 3 in 4 MiB blocks: 3 Put Block; empty and small: 2 Put Blob
    assert len(blocks) == 3 and len(blobs) == 2
    for query, headers, body in puts:
        assert headers.get("x-ms-content-crc64") == expected_crc64_header(body), query
    sent = sum(len(b) for _, _, b in blocks)
    overhead = 3 * 28 if encrypt else 0  # 3 regions of 4 MiB
    assert sent == len(files["multi.dcm"]) + overhead
