"""Put Blob / Put Block over raw_http.py's own connections: what aiohttp did for them (answers
in any framing and segmentation, keep-alive, a dropped connection retried) still holds, against a
local scripted HTTP/1.1 server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pyengine.errors import DestinationError
from pyengine.options import RetryPolicy
from pyengine.targets.azure_blob import BlobStore, SharedKeyCredential, parse_destination

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
