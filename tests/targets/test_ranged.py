"""restore's ranged GET (targets/ranged.py) over real TLS: a local HTTPS server with a private CA
(databoxproxy.make_certificates) answers ranges, error documents and cut-off bodies."""

from __future__ import annotations

import asyncio
import os
import ssl

import aiohttp
import pytest
from databoxproxy import make_certificates

from pyengine.targets.ranged import RangeClient
from pyengine.targets.tls import CertificateProblem, ssl_context

BLOB = os.urandom(3 * 1024 * 1024 + 17)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list) -> None:
    seen.append(writer)
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        lines = head.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if path == "/blob":
            first, last = (int(v) for v in hdrs["x-ms-range"].split("=")[1].split("-"))
            body = BLOB[first : last + 1]
            writer.write(
                b"HTTP/1.1 206 Partial Content\r\nx-ms-content-crc64: abc=\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            # in pieces, as a network delivers them
            for i in range(0, len(body), 100_000):
                writer.write(body[i : i + 100_000])
                await writer.drain()
        elif path == "/missing":
            doc = b"<?xml version='1.0'?><Error><Code>BlobNotFound</Code></Error>"
            writer.write(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(doc), doc))
        elif path == "/short":
            writer.write(
                b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10
            )
            await writer.drain()
            writer.close()
            break
        await writer.drain()
    writer.close()


async def _with_server(tmp_path, body) -> None:
    ca, cert, key = make_certificates(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list = []
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, seen), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    try:
        await body(f"https://127.0.0.1:{port}", str(ca), seen)
    finally:
        server.close()


def test_ranges_arrive_in_the_callers_buffer_over_tls_on_one_kept_connection(tmp_path):
    async def body(origin: str, ca: str, seen: list) -> None:
        client = RangeClient(origin, ssl_context(ca), limit=4)
        buf = memoryview(bytearray(4 * 1024 * 1024))
        touched: list = []
        for first, n in ((0, len(BLOB)), (1000, 2_000_000)):
            answer, got = await client.get(
                "/blob",
                {"x-ms-range": f"bytes={first}-{first + n - 1}"},
                buf,
                ok=(200, 206),
                progress=lambda: touched.append(1),
            )
            assert answer.status == 206 and answer.headers["X-MS-Content-CRC64"] == "abc="
            assert isinstance(got, memoryview) and got.obj is buf.obj  # no copy handed back
            assert bytes(got) == BLOB[first : first + n]
        assert len(seen) == 1 and touched  # keep-alive; progress reported to the stall watch
        client.close()

    asyncio.run(_with_server(tmp_path, body))


def test_an_error_document_comes_back_as_bytes_and_a_cut_off_body_is_retryable(tmp_path):
    async def body(origin: str, ca: str, seen: list) -> None:
        client = RangeClient(origin, ssl_context(ca), limit=4)
        buf = memoryview(bytearray(8192))
        answer, doc = await client.get("/missing", {}, buf, ok=(206,), progress=lambda: None)
        assert answer.status == 404 and b"BlobNotFound" in doc and isinstance(doc, bytes)
        with pytest.raises(aiohttp.ClientPayloadError, match="10 of 5000"):
            await client.get("/short", {}, buf, ok=(206,), progress=lambda: None)
        client.close()

    asyncio.run(_with_server(tmp_path, body))


def test_an_untrusted_certificate_is_a_certificate_problem(tmp_path):
    async def body(origin: str, ca: str, seen: list) -> None:
        client = RangeClient(origin, None, limit=4)  # the system store: the private CA is not in
        with pytest.raises(CertificateProblem, match="TLS certificate not trusted"):
            await client.get("/blob", {}, memoryview(bytearray(10)), ok=(206,), progress=print)

    asyncio.run(_with_server(tmp_path, body))
