"""Restore's ranged Get Blob, body straight into the caller's pooled buffer.

aiohttp hands a response body over as pieces: one fresh bytes object per socket read, a second
copy cut out by its HTTP parser, then ours into the pooled buffer. Here the socket's recv_into
writes the body into that buffer itself (asyncio's BufferedProtocol: get_buffer returns the
unfilled part of the range's buffer), so the only copy is the kernel's. `bench download` on the
shared 2-core box (2 GiB encrypted, 512 MiB cap, medians of 3, same run): the restore's
event-loop thread 1.05 CPU-s/GB through aiohttp's StreamReader, 0.59 this way (the process
1.94 -> 1.45 with the pool change in restore/download.py).

It does only what restore's ranged reads need, and the rest stays with the caller (rest.py):
signing, the pacer's retries and concurrency limit, the stall watch. HTTP/1.1 GET on keep-alive
connections to one origin; TLS with the same ssl context as the aiohttp session (tls.py: the
system store, SSL_CERT_FILE, --ca-cert); no proxy, like the session (trust_env is off). A body
with a Content-Length goes to the buffer when its status is one the caller takes; any other body
(an error document, chunked or read to EOF) is collected as bytes. Transport failures raise the
aiohttp exceptions the pacer already retries (ClientOSError, ServerDisconnectedError,
ClientPayloadError); a refused server certificate raises tls.CertificateProblem.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from pyengine.targets.tls import CertificateProblem

#: response head (status line + headers) at most; aiohttp's own limit is 8190 bytes per line
HEAD_MAX_BYTES = 64 * 1024
#: a body that is not the range (an error document) at most
OTHER_BODY_MAX_BYTES = 1024 * 1024


def _no_progress() -> None:
    pass


class RangeAnswer:
    """What rest.py's request core reads of an answer (as of an aiohttp ClientResponse)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.headers = headers


class _BodyProtocol(asyncio.BufferedProtocol):
    """One keep-alive connection; one request at a time (``start``, then its waiter resolves)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.closed = False
        # the head, and bodies that are not the range; a memoryview, never the bytearray itself:
        # asyncio's TLS layer fills a buffer in steps through buf[offset:], which of a
        # bytearray is a copy (3.11 sslproto._do_read__buffered), losing all but the first step
        self._scratch = memoryview(bytearray(64 * 1024))
        self._state = "idle"  # head | range | other | chunked | to_eof | idle
        self._head = bytearray()
        self._other = bytearray()
        self._into = memoryview(b"")
        self._filled = 0
        self._need = 0
        self._ok: tuple[int, ...] = ()
        self._waiter: asyncio.Future[None] | None = None
        self._progress: Callable[[], None] = _no_progress
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.keep_alive = True
        self._state_was_range = False

    # ---- one exchange -----------------------------------------------------------------

    def start(
        self,
        into: memoryview,
        ok: tuple[int, ...],
        waiter: asyncio.Future[None],
        progress: Callable[[], None],
    ) -> None:
        self._into, self._ok, self._waiter, self._progress = into, ok, waiter, progress
        self._state, self._filled, self._need = "head", 0, 0
        self._head.clear()
        self._other.clear()

    def detach(self) -> None:
        """Forget the caller's buffer (its exchange was abandoned): nothing more is written to
        it, even by bytes a TLS layer still holds."""
        self._state, self._into, self._waiter = "idle", memoryview(b""), None
        self._progress = _no_progress

    def body(self) -> memoryview | bytes:
        return self._into[: self._filled] if self._state_was_range else bytes(self._other)

    def _finish(self, exc: BaseException | None = None) -> None:
        self._state_was_range = self._state == "range"
        self._state = "idle"
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
        if exc is not None:
            self.keep_alive = False
            if self.transport is not None:
                self.transport.abort()

    # ---- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._state == "to_eof":
            self._finish_other()
        elif self._state == "range":
            self._finish(
                aiohttp.ClientPayloadError(
                    f"response cut short: {self._filled} of {self._need} bytes"
                )
            )
        elif self._state != "idle":
            self._finish(aiohttp.ServerDisconnectedError())

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "range":
            return self._into[self._filled : self._need]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == "range":
            self._filled += nbytes
            self._progress()
            if self._filled == self._need:
                self._finish()
            return
        data = self._scratch[:nbytes]
        if self._state == "head":
            self._head += data
            self._parse_head()
        elif self._state in ("other", "chunked", "to_eof"):
            self._take_other(data)
        else:  # bytes on an idle connection: not HTTP as we know it
            self.keep_alive = False
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost decides what that means

    # ---- parsing ------------------------------------------------------------------------

    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HEAD_MAX_BYTES:
                self._finish(aiohttp.ClientPayloadError("response head too long"))
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        rest = bytes(self._head[end + 4 :])
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            self._finish(aiohttp.ClientPayloadError("not an HTTP response"))
            return
        self._progress()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._head = bytearray(rest)
            self._parse_head()
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        self.status, self.headers = status, CIMultiDictProxy(headers)
        connection = headers.get("connection", "").lower()
        self.keep_alive = version == "HTTP/1.1" and connection != "close"
        length = headers.get("content-length")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunked"
        elif length is None and status in (204, 304):  # no body, by definition
            self._finish()
            return
        elif length is None:  # the body ends with the connection
            self._state, self.keep_alive = "to_eof", False
        else:
            self._need = int(length)
            if status in self._ok:
                if self._need > len(self._into):
                    self._finish(
                        aiohttp.ClientPayloadError("answer longer than the range asked for")
                    )
                    return
                self._state = "range"
                if len(rest) > self._need:
                    self._finish(aiohttp.ClientPayloadError("more bytes than Content-Length"))
                    return
                self._into[: len(rest)] = rest
                self._filled = len(rest)
                if self._filled == self._need:
                    self._finish()
                return
            self._state = "other"
        self._take_other(memoryview(rest))

    def _take_other(self, data: memoryview) -> None:
        self._other += data
        limit = len(self._into) if self.status in self._ok else OTHER_BODY_MAX_BYTES
        if len(self._other) > limit + 64 * 1024:  # + chunk framing
            self._finish(aiohttp.ClientPayloadError("answer longer than expected"))
        elif self._state == "other" and len(self._other) >= self._need:
            if len(self._other) > self._need:
                self._finish(aiohttp.ClientPayloadError("more bytes than Content-Length"))
            else:
                self._finish()
        elif self._state == "chunked":
            decoded = _dechunk(self._other)
            if decoded is not None:
                self._other = bytearray(decoded)
                self._finish_other()

    def _finish_other(self) -> None:
        """End an answer whose body was collected aside (chunked, or read to EOF); a range that
        came so is copied into the buffer once (rare: Blob storage sends a Content-Length)."""
        if self.status in self._ok:
            if len(self._other) > len(self._into):
                self._finish(aiohttp.ClientPayloadError("answer longer than the range asked for"))
                return
            self._into[: len(self._other)] = self._other
            self._filled = len(self._other)
            self._state = "range"
        self._finish()


def _dechunk(raw: bytearray) -> bytes | None:
    """The body of a complete chunked encoding (trailers ignored), None while incomplete."""
    out = bytearray()
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(raw[pos:eol]).split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out) if raw.find(b"\r\n\r\n", eol) >= 0 or raw.endswith(b"\r\n") else None
        start, end = eol + 2, eol + 2 + size
        if len(raw) < end + 2:
            return None
        out += raw[start:end]
        pos = end + 2


class RangeClient:
    """Keep-alive connections to one origin (``scheme://host[:port]``), at most ``limit``
    kept idle; ``get`` sends one GET and fills ``into`` with a body whose status is in ``ok``."""

    def __init__(self, origin: str, ssl_context: ssl.SSLContext | None, *, limit: int) -> None:
        parts = urlsplit(origin)
        self._host = parts.hostname or ""
        self._https = parts.scheme == "https"
        self._port = parts.port or (443 if self._https else 80)
        self._host_header = parts.netloc
        self._ssl = (ssl_context or ssl.create_default_context()) if self._https else None
        self._limit = limit
        self._idle: list[_BodyProtocol] = []

    async def _connect(self) -> _BodyProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(
                _BodyProtocol,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        except ssl.SSLCertVerificationError as e:
            raise CertificateProblem(
                f"TLS certificate not trusted ({e.verify_message or e.reason}); for a Data Box, "
                "pass its certificate with --ca-cert FILE (or SSL_CERT_FILE)"
            ) from None
        except OSError as e:
            raise aiohttp.ClientOSError(e.errno, e.strerror or str(e)) from None
        return proto

    async def get(
        self,
        target: str,
        headers: Mapping[str, str],
        into: memoryview,
        *,
        ok: tuple[int, ...],
        progress: Callable[[], None],
    ) -> tuple[RangeAnswer, memoryview | bytes]:
        """(answer, body): the filled part of ``into`` for a status in ``ok``, else bytes."""
        proto = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate.closed:
                proto = candidate
                break
        if proto is None:
            proto = await self._connect()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proto.start(into, ok, waiter, progress)
        head = [f"GET {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append("\r\n")
        proto.transport.write("".join(head).encode("latin-1"))
        try:
            await waiter
        except BaseException:
            proto.keep_alive = False
            proto.detach()
            proto.transport.abort()  # cancelled or failed mid-answer: the connection is spent
            raise
        answer, body = RangeAnswer(proto.status, proto.headers), proto.body()
        # an idle connection must not keep the buffer alive: the pool may drop it (its bytes
        # then leave the process, as the cap's accounting says)
        proto.detach()
        if proto.keep_alive and not proto.closed and len(self._idle) < self._limit:
            self._idle.append(proto)
        else:
            proto.transport.close()
        return answer, body

    def close(self) -> None:
        for proto in self._idle:
            proto.transport.close()
        self._idle.clear()
