"""Put Blob / Put Block bodies over plain HTTP/1.1 keep-alive connections of our own, beside
aiohttp's session (rest.py sends every other request through aiohttp).

Why: aiohttp's request pipeline (ClientRequest, its header merging, a writer task, the response
object) was ~135 us of event-loop CPU per 256 KiB Put Blob of the ~245 us the whole request cost
(bench upload's small files, main-thread CPU measured with RUSAGE_THREAD into the nginx sink:
aiohttp ~245 us, this path ~110 us, same headers and signing). On 2 cores the loop's CPU per file
is what bounds files/s. DESIGN.md allows the bypass for the data path where a benchmark shows it.

What it keeps: the same signed headers (rest.py builds and signs them, as for aiohttp); TLS with
the store's context (certificate errors are CertificateProblem, as aiohttp's); every failure is
an exception the pacer already classifies (aiohttp's ClientOSError, ServerDisconnectedError,
ClientPayloadError), so retries, the stall watch and the adaptive limit apply unchanged. What it
leaves to aiohttp: requests under a bandwidth cap (paced slices), bodiless requests, downloads.
There is no forward-proxy support to keep: the session does not read proxy settings either.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from pyengine.targets.pacer import StallWatch
from pyengine.targets.tls import CertificateProblem, certificate_reason_of

#: connect timeout, as the aiohttp session's sock_connect
CONNECT_TIMEOUT_S = 30.0
#: body slices handed to the transport between drains (as wire._BufferPayload: a whole 8 MiB
#: block in one write had asyncio copy what the kernel did not take at once)
SLICE_BYTES = 256 * 1024
#: body length of an answer with neither Content-Length nor chunking: it ends with the connection
UNTIL_CLOSE = -2
#: an answer's head larger than this is not an Azure answer
MAX_HEAD_BYTES = 64 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._answer: asyncio.Future[tuple[int, CIMultiDict[str], bytes, bool]] | None = None
        self._head: tuple[int, CIMultiDict[str], int, bool] | None = None  # status, headers, len
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._watch: StallWatch | None = None

    def pending_bytes(self) -> int:
        """Bytes received while no request was waiting (an idle connection should have none)."""
        return len(self._buf)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(aiohttp.ServerDisconnectedError())
        if self._answer is not None and not self._answer.done():
            if self._head is not None and self._head[2] == UNTIL_CLOSE and exc is None:
                status, headers, _, _ = self._head
                self._answer.set_result((status, headers, bytes(self._buf), False))
                return
            if self._head is not None:
                error: Exception = aiohttp.ClientPayloadError("Response payload is not completed")
            else:
                error = aiohttp.ServerDisconnectedError()
            self._answer.set_exception(error)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._watch is not None:
            self._watch.touch()
        if self._answer is not None and not self._answer.done():
            try:
                self._parse()
            except aiohttp.ClientError as e:
                self._answer.set_exception(e)

    # -- one request -----------------------------------------------------------------------

    async def request(
        self, head: bytes, body: memoryview, watch: StallWatch
    ) -> tuple[int, CIMultiDict[str], bytes, bool]:
        """Sends ``head`` and ``body``; (status, headers, body, keep_alive) of the answer."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._head = None
        self._watch = watch
        try:
            self.transport.write(head)
            # a body of up to two slices goes in one write (a 28-byte tail of an encrypted
            # 256 KiB file was a send() of its own)
            step = max(1, body.nbytes) if body.nbytes <= 2 * SLICE_BYTES else SLICE_BYTES
            for start in range(0, body.nbytes, step):
                self.transport.write(body[start : start + step])
                if self._paused and not self.closed:
                    self._drained = loop.create_future()
                    await self._drained
                watch.touch()
            return await self._answer
        finally:
            self._watch = None
            self._drained = None

    def _parse(self) -> None:
        assert self._answer is not None
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise aiohttp.ClientPayloadError("answer head too large")
                return
            self._head = _parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        status, headers, length, keep_alive = self._head
        if length == UNTIL_CLOSE:
            return  # connection_lost completes it
        if length < 0:  # chunked: the whole body is in before it is decoded
            body = _dechunk(self._buf)
            if body is None:
                return
        else:
            if len(self._buf) < length:
                return
            body = bytes(self._buf[:length])
            del self._buf[:length]
        self._answer.set_result((status, headers, body, keep_alive and not self._buf))


def _parse_head(raw: bytes) -> tuple[int, CIMultiDict[str], int, bool]:
    """(status, headers, body length: -1 chunked, UNTIL_CLOSE, keep-alive) of an answer's head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise aiohttp.ClientPayloadError("not an HTTP/1.1 answer")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise aiohttp.ClientPayloadError("malformed answer header")
        headers.add(name.strip(), value.strip())
    keep_alive = parts[0] == "HTTP/1.1" and headers.get("Connection", "").lower() != "close"
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return int(parts[1]), headers, -1, keep_alive
    length = headers.get("Content-Length")
    if length is None:
        # no length: the body ends with the connection (never a keep-alive answer)
        return int(parts[1]), headers, UNTIL_CLOSE, False
    if not length.isdigit():
        raise aiohttp.ClientPayloadError("malformed Content-Length")
    return int(parts[1]), headers, int(length), keep_alive


def _dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked encoding at the start of ``buf`` (removed from it), or
    None while it is incomplete."""
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise aiohttp.ClientPayloadError("malformed chunk size") from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # trailers, then the blank line
            if end < 0:
                return None
            del buf[: end + 4]
            return bytes(out)
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        out += buf[start : start + size]
        pos = start + size + 2


def request_head(method: str, target: str, host: str, headers: dict[str, str]) -> bytes:
    """The request line and headers (``headers``: lowercase names, as signed). A CR or LF in a
    value would end the header early (header injection): refused, as aiohttp refuses it."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {SERVER_SOFTWARE}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a newline")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


class RawPool:
    """Idle keep-alive connections to one origin. A connection serves one request at a time;
    how many run at once is the pacer's limit (rest.py sends through it)."""

    def __init__(self, scheme: str, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> None:
        self._host, self._port = host, port
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_ctx if ssl_ctx is not None else ssl.create_default_context()
        self._idle: list[_Connection] = []

    async def request(
        self, head: bytes, body: memoryview, watch: StallWatch
    ) -> tuple[int, CIMultiDict[str], bytes]:
        conn = await self._connection()
        clean = False
        try:
            status, headers, content, keep_alive = await conn.request(head, body, watch)
            clean = keep_alive
            return status, headers, content
        finally:
            # a cancelled or failed try leaves the connection in an unknown state: never reused
            if clean and not conn.closed:
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.abort()

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.pending_bytes():
                return conn
            if conn.transport is not None:  # closed, or it sent something unasked: not reused
                conn.transport.abort()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except ssl.SSLCertVerificationError as e:
            raise CertificateProblem(certificate_reason_of(e)) from None
        except OSError as e:
            raise aiohttp.ClientOSError(
                e.errno, f"Cannot connect to host {self._host}:{self._port} [{e.strerror or e}]"
            ) from None
        return conn

    def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()
