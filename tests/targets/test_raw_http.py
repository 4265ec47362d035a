"""raw_http.py, our HTTP/1.1 client: Put Blob / Put Block bodies out and restore's ranged GET into
the caller's buffer, over one pool of keep-alive connections. What aiohttp did for them (answers in
any framing and segmentation, keep-alive, a dropped connection retried, TLS with a private CA)
still holds, against local scripted HTTP/1.1 servers (plain, and TLS with databoxproxy's CA)."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from databoxproxy import make_certificates

from pyengine.errors import DestinationError
from pyengine.options import RetryPolicy
from pyengine.targets.azure_blob import BlobStore, SharedKeyCredential, parse_destination
from pyengine.targets.raw_http import HttpPool
from pyengine.targets.tls import CertificateProblem, ssl_context

FAST_RETRY = RetryPolicy(max_tries=4, base_delay_s=0.001, max_delay_s=0.1, max_elapsed_s=5.0)
CREATED = b'HTTP/1.1 201 Created\r\nETag: "0x1"\r\nContent-Length: 0\r\n\r\n'

#: one connection's handling: (reader, writer, index of the request on this server) -> keep on
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class RawServer:
    """A loopback HTTP/1.1 server whose answers are written byte for byte by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if not await self.handler(reader, writer, len(self.requests) - 1):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/devstoreaccount1/c01"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def store_for(url: str) -> BlobStore:
    dest = parse_destination(url)
    cred = SharedKeyCredential(dest.account_name, base64.b64encode(b"k" * 32).decode())
    return BlobStore(dest, cred, retry=FAST_RETRY)


def test_put_blob_and_put_block_bypass_aiohttp_other_requests_do_not() -> None:
    sent_through_aiohttp: list[str] = []

    async def created(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CREATED)
        await writer.drain()
        return True

    async def go() -> RawServer:
        async with RawServer(created) as srv, store_for(srv.url) as store:
            request = store._session.request

            def counting(method: str, url: Any, **kw: Any) -> Any:
                sent_through_aiohttp.append(method)
                return request(method, url, **kw)

            store._session.request = counting
            await store.put_blob("a", b"x" * 1000, crc64=0, metadata={"k": "v"})
            await store.put_block("b", "YWJj", b"y" * 1000, crc64=0)
            await store.set_tier("a", "Cool")
        return srv

    srv = asyncio.run(go())
    assert sent_through_aiohttp == ["PUT"]  # set_tier only
    assert srv.connections <= 2  # Put Blob and Put Block shared one kept-alive connection
    head, body = srv.requests[0]
    assert head.startswith(b"PUT /devstoreaccount1/c01/a HTTP/1.1\r\n")
    assert b"\r\nx-ms-meta-k: v\r\n" in head and b"\r\nauthorization: SharedKey " in head
    assert body == b"x" * 1000


def test_an_error_answer_sent_chunked_one_byte_at_a_time_is_read_whole() -> None:
    xml = b"<?xml version='1.0'?><Error><Code>BlobArchived</Code><Message>no</Message></Error>"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(xml), xml)
    answer = (
        b"HTTP/1.1 409 Conflict\r\nx-ms-error-code: BlobArchived\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )

    async def trickle(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
        return True

    async def go() -> None:
        async with RawServer(trickle) as srv, store_for(srv.url) as store:
            await store.put_blob("a", b"x", crc64=0, metadata={})

    with pytest.raises(DestinationError, match=r"HTTP 409 BlobArchived no"):
        asyncio.run(go())


def test_an_answer_with_connection_close_is_not_reused() -> None:
    async def close_each(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CREATED.replace(b"Content-Length", b"Connection: close\r\nContent-Length"))
        await writer.drain()
        return False

    async def go() -> RawServer:
        async with RawServer(close_each) as srv, store_for(srv.url) as store:
            for i in range(3):
                await store.put_blob(f"f{i}", b"x", crc64=0, metadata={})
            assert store.stats.retries == 0
        return srv

    srv = asyncio.run(go())
    assert srv.connections == 3 and len(srv.requests) == 3


def test_a_connection_dropped_before_the_answer_is_retried() -> None:
    async def drop_first(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        if index == 0:
            writer.transport.abort()
            return False
        writer.write(CREATED)
        await writer.drain()
        return True

    async def go() -> tuple[RawServer, str, int]:
        async with RawServer(drop_first) as srv, store_for(srv.url) as store:
            etag = await store.put_blob("a", b"x" * 300_000, crc64=0, metadata={})
            return srv, etag, store.stats.retries

    srv, etag, retries = asyncio.run(go())
    assert etag == '"0x1"' and retries == 1 and len(srv.requests) == 2


def test_an_answer_cut_short_is_retried_not_taken_as_complete() -> None:
    async def cut_first(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        if index == 0:
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            return False
        writer.write(CREATED)
        await writer.drain()
        return True

    async def go() -> int:
        async with RawServer(cut_first) as srv, store_for(srv.url) as store:
            await store.put_blob("a", b"x", crc64=0, metadata={})
            assert len(srv.requests) == 2
            return store.stats.retries

    assert asyncio.run(go()) == 1


def test_a_newline_in_a_header_value_is_refused_before_anything_is_sent() -> None:
    async def created(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(CREATED)
        return True

    async def go() -> RawServer:
        async with RawServer(created) as srv, store_for(srv.url) as store:
            with pytest.raises(ValueError, match="newline"):
                await store.put_blob("a", b"x", crc64=0, metadata={"k": "v\r\nx-ms-evil: 1"})
        return srv

    assert asyncio.run(go()).requests == []


def test_an_answer_without_a_length_ends_with_its_connection() -> None:
    xml = b"<?xml version='1.0'?><Error><Code>InvalidHeaderValue</Code><Message>m</Message></Error>"

    async def no_length(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + xml)
        await writer.drain()
        return False  # the server closes: that ends the body

    async def go() -> None:
        async with RawServer(no_length) as srv, store_for(srv.url) as store:
            await store.put_blob("a", b"x", crc64=0, metadata={})

    with pytest.raises(DestinationError, match=r"HTTP 400 InvalidHeaderValue m$"):
        asyncio.run(go())


def test_a_garbled_answer_is_retried_then_one_line() -> None:
    async def garbage(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        return False

    async def go() -> tuple[RawServer, BaseException]:
        async with RawServer(garbage) as srv, store_for(srv.url) as store:
            with pytest.raises(DestinationError) as info:
                await store.put_blob("a", b"x", crc64=0, metadata={})
        return srv, info.value

    srv, error = asyncio.run(go())
    assert len(srv.requests) == FAST_RETRY.max_tries
    assert "not an HTTP/1.1 answer" in str(error) and "\n" not in str(error)


def test_a_ranged_get_and_a_put_blob_share_one_kept_connection_and_bypass_aiohttp() -> None:
    blob = os.urandom(300_000)

    async def answer(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        head = srv.requests[index][0]
        if head.startswith(b"GET "):
            writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\n\r\n")
            writer.write(blob[5000:6000])
        else:
            writer.write(CREATED)
        await writer.drain()
        return True

    async def go() -> tuple[memoryview, bytes, memoryview, list[str]]:
        nonlocal srv
        through_aiohttp: list[str] = []
        async with RawServer(answer) as srv, store_for(srv.url) as store:
            request = store._session.request

            def counting(method: str, url: Any, **kw: Any) -> Any:
                through_aiohttp.append(method)
                return request(method, url, **kw)

            store._session.request = counting
            await store.put_blob("a", blob, crc64=0, metadata={})
            buf = memoryview(bytearray(4096))
            _, got = await store.get_range("a", 5000, 1000, into=buf)
            return buf, bytes(got), got, through_aiohttp

    srv = RawServer(answer)
    buf, content, got, through_aiohttp = asyncio.run(go())
    assert content == blob[5000:6000] and got.obj is buf.obj  # received into the buffer
    assert through_aiohttp == [] and srv.connections == 1
    assert srv.requests[1][0].startswith(b"GET /devstoreaccount1/c01/a HTTP/1.1\r\n")
    assert b"\r\nx-ms-range: bytes=5000-5999\r\n" in srv.requests[1][0]


# ---- over TLS with a private CA: ranges into the caller's buffer -------------------------------

BLOB = os.urandom(3 * 1024 * 1024 + 17)


async def _serve_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list
) -> None:
    seen.append(writer)
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        lines = head.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        await reader.readexactly(int(hdrs.get("content-length", "0")))
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
        elif path == "/put":
            writer.write(CREATED)
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


async def _with_tls_server(tmp_path: Any, body: Any) -> None:
    ca, cert, key = make_certificates(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list = []
    server = await asyncio.start_server(
        lambda r, w: _serve_tls(r, w, seen), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    try:
        await body(f"https://127.0.0.1:{port}", str(ca), seen)
    finally:
        server.close()


def test_ranges_arrive_in_the_callers_buffer_over_tls_on_one_kept_connection(tmp_path) -> None:
    async def body(origin: str, ca: str, seen: list) -> None:
        pool = HttpPool(origin, ssl_context(ca), limit=4)
        buf = memoryview(bytearray(4 * 1024 * 1024))
        touched: list = []
        for first, n in ((0, len(BLOB)), (1000, 2_000_000)):
            status, headers, got = await pool.request(
                "GET",
                "/blob",
                {"x-ms-range": f"bytes={first}-{first + n - 1}"},
                into=buf,
                ok=(200, 206),
                progress=lambda: touched.append(1),
            )
            assert status == 206 and headers["X-MS-Content-CRC64"] == "abc="
            assert isinstance(got, memoryview) and got.obj is buf.obj  # no copy handed back
            assert bytes(got) == BLOB[first : first + n]
        # a body out over the same TLS connection, then a range in again
        put = {"content-length": "600000"}
        status, _, got = await pool.request("PUT", "/put", put, body=os.urandom(600_000))
        assert status == 201 and got == b""
        _, _, got = await pool.request(
            "GET", "/blob", {"x-ms-range": "bytes=7-9"}, into=buf, ok=(206,)
        )
        assert bytes(got) == BLOB[7:10]
        assert len(seen) == 1 and touched  # keep-alive; progress reported to the stall watch
        pool.close()

    asyncio.run(_with_tls_server(tmp_path, body))


def test_an_error_document_comes_back_as_bytes_and_a_cut_off_body_is_retryable(tmp_path) -> None:
    async def body(origin: str, ca: str, seen: list) -> None:
        pool = HttpPool(origin, ssl_context(ca), limit=4)
        buf = memoryview(bytearray(8192))
        status, _, doc = await pool.request("GET", "/missing", {}, into=buf, ok=(206,))
        assert status == 404 and b"BlobNotFound" in doc and isinstance(doc, bytes)
        with pytest.raises(aiohttp.ClientPayloadError, match="10 of 5000"):
            await pool.request("GET", "/short", {}, into=buf, ok=(206,))
        pool.close()

    asyncio.run(_with_tls_server(tmp_path, body))


def test_an_untrusted_certificate_is_a_certificate_problem(tmp_path) -> None:
    async def body(origin: str, ca: str, seen: list) -> None:
        pool = HttpPool(origin, None, limit=4)  # the system store: the private CA is not in it
        with pytest.raises(CertificateProblem, match="TLS certificate not trusted"):
            await pool.request("GET", "/blob", {}, into=memoryview(bytearray(10)), ok=(206,))

    asyncio.run(_with_tls_server(tmp_path, body))


@pytest.mark.parametrize("chunked", [False, True])
def test_a_range_trickled_one_byte_at_a_time_lands_whole_in_the_buffer(chunked: bool) -> None:
    data = os.urandom(3000)
    if chunked:  # a range sent chunked is collected, then copied into the buffer once
        framing = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (3000, data)
    else:
        framing = b"Content-Length: 3000\r\n\r\n" + data
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial Content\r\n" + framing

    async def trickle(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
        return True

    async def go() -> tuple[memoryview, memoryview]:
        async with RawServer(trickle) as srv, store_for(srv.url) as store:
            buf = memoryview(bytearray(4096))
            _, got = await store.get_range("a", 0, 3000, into=buf)
            return buf, got

    buf, got = asyncio.run(go())
    assert got.obj is buf.obj and bytes(got) == data


def test_a_range_longer_than_the_buffer_is_retried_then_one_line() -> None:
    async def too_long(reader: Any, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5000\r\n\r\n")
        await writer.drain()
        return True

    async def go() -> tuple[RawServer, BaseException]:
        async with RawServer(too_long) as srv, store_for(srv.url) as store:
            with pytest.raises(DestinationError) as info:
                await store.get_range("a", 0, 1000, into=memoryview(bytearray(1000)))
        return srv, info.value

    srv, error = asyncio.run(go())
    assert len(srv.requests) == FAST_RETRY.max_tries
    assert "longer than the range asked for" in str(error) and "\n" not in str(error)
