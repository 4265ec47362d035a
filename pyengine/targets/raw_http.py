"""Our own HTTP/1.1 client for the data path's two hot requests, beside aiohttp's session: Put Blob
/ Put Block bodies out, and restore's ranged Get Blob in. rest.py builds, signs and paces every
request (pacer retries, concurrency limit, stall watch) and sends all others through aiohttp.

Why, measured (DESIGN.md allows the bypass only where a benchmark shows the bottleneck):
- out: aiohttp's request pipeline (ClientRequest, its header merging, a writer task, the response
  object) was ~135 us of the ~245 us of event-loop CPU per 256 KiB Put Blob (bench upload's small
  files into the nginx sink, RUSAGE_THREAD: aiohttp ~245 us, this path ~110 us, same headers and
  signing). On 2 cores the loop's CPU per file is what bounds files/s.
- in: aiohttp hands a body over as pieces: a fresh bytes object per socket read, a second copy cut
  out by its parser, then ours into the pooled buffer. Here get_buffer (asyncio's BufferedProtocol)
  returns the unfilled part of the caller's buffer, so the socket's recv_into writes the body there
  and the only copy is the kernel's. `bench download` (2 GiB encrypted, 512 MiB cap, medians of 3):
  the restore's event loop 1.05 CPU-s/GB through aiohttp's StreamReader, 0.59 this way.

What it is: keep-alive connections to one origin, one exchange at a time on each; TLS with the
session's context (tls.py: the system store, SSL_CERT_FILE, --ca-cert); no proxy (the session
reads no proxy settings either). An answer is framed by Content-Length, chunked encoding, or the
end of its connection; interim 1xx answers are skipped. Its body goes into the caller's buffer
(``into``) when its status is one the caller takes (``ok``), else it comes back as bytes (error
documents, empty Put answers; at most OTHER_BODY_MAX_BYTES). Failures are the aiohttp exceptions
the pacer already retries (ClientOSError, ServerDisconnectedError, ClientPayloadError); a refused
server certificate is tls.CertificateProblem; a CR or LF in a header value is a ValueError before
anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from pyengine.targets.body_writer import MAX_BODY_BYTES, GatherSend, NativeSends
from pyengine.targets.http1 import CHUNKED, UNTIL_CLOSE, dechunk, parse_head, request_head
from pyengine.targets.tls import CertificateProblem, certificate_reason_of
from pyengine.targets.wake_mark import WakeMark

log = logging.getLogger("pyengine")

#: connect timeout, as the aiohttp session's sock_connect
CONNECT_TIMEOUT_S = 30.0
#: body slices handed to the transport between drains (as wire._BufferPayload: a whole 8 MiB
#: block in one write had asyncio copy what the kernel did not take at once)
SLICE_BYTES = 256 * 1024
#: an answer's head larger than this is not an Azure answer (aiohttp allows 8190 bytes a line)
MAX_HEAD_BYTES = 64 * 1024
#: a body that does not go to a caller's buffer (an error document) at most
OTHER_BODY_MAX_BYTES = 1024 * 1024

_EMPTY = memoryview(b"")


def _no_progress() -> None:
    pass


class _Connection(asyncio.BufferedProtocol, GatherSend, WakeMark):
    """One keep-alive connection: one exchange at a time, its answer parsed as bytes arrive."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.closed = False
        GatherSend.__init__(self)
        #: the last answer allows the connection to serve another request
        self.reusable = True
        # the socket's buffer for heads and for bodies that go to bytes; a memoryview, never the
        # bytearray itself: asyncio's TLS layer fills it in steps through buf[offset:], which of
        # a bytearray is a copy (3.11 sslproto._do_read__buffered), losing all but the first step
        self._scratch = memoryview(bytearray(64 * 1024))
        self._state = "idle"  # head | into | length | chunked | to_eof | idle
        self._raw = bytearray()  # the head as it arrives, then a body that goes to bytes
        self._into = _EMPTY
        self._ok: tuple[int, ...] = ()
        self._filled = 0  # body bytes in _into
        self._need = 0  # Content-Length
        self._in_buffer = False  # the answer's body is in _into
        self._no_body = False  # the answer to a HEAD has none, whatever its head says
        self._progress: Callable[[], None] = _no_progress
        self._answer: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        WakeMark.__init__(self)

    # ---- one exchange ---------------------------------------------------------------------

    async def exchange(
        self,
        head: bytes,
        body: memoryview | None,
        into: memoryview | None,
        ok: tuple[int, ...],
        progress: Callable[[], None],
        no_body: bool,
    ) -> tuple[int, CIMultiDict[str], memoryview | bytes]:
        """Sends ``head`` and ``body``; (status, headers, body) of the answer: the filled part of
        ``into`` for a status in ``ok``, else bytes."""
        loop = asyncio.get_running_loop()
        answer = self._answer = loop.create_future()
        self._into, self._ok, self._progress, self._no_body = into or _EMPTY, ok, progress, no_body
        self._state, self._filled, self._need, self._in_buffer = "head", 0, 0, False
        self._raw.clear()
        first = 0  # body bytes already in the kernel
        if (
            body is not None
            and 0 < body.nbytes <= MAX_BODY_BYTES
            and body.contiguous
            and self.gathers
            and not self.transport.is_closing()
            and not self.transport.get_write_buffer_size()
        ):
            sent = await self.send_gathered(head, body)
            head, first = head[sent:], max(0, sent - len(head))
            if sent:
                progress()
        if head and not answer.done():
            self.transport.write(head)
        if body is not None and body.nbytes > first:
            # a body of up to two slices goes in one write (a 28-byte tail of an encrypted
            # 256 KiB file was a send() of its own)
            left = body.nbytes - first
            step = left if left <= 2 * SLICE_BYTES else SLICE_BYTES
            for start in range(first, body.nbytes, step):
                if answer.done():  # answered (refused) before the whole body went out
                    self.reusable = False
                    break
                self.transport.write(body[start : start + step])
                if self._paused and not self.closed:
                    self._drained = loop.create_future()
                    await self._drained
                progress()
        await answer
        status, headers = self.status, self.headers
        content = self._into[: self._filled] if self._in_buffer else bytes(self._raw)
        self.detach()
        return status, headers, content

    def detach(self) -> None:
        """Forget the caller's buffer: nothing more is written to it, even bytes a TLS layer
        still holds, and an idle connection does not keep alive a buffer its pool dropped."""
        self._state, self._into, self._answer = "idle", _EMPTY, None
        self._progress = _no_progress
        self._raw.clear()

    def _finish(self, exc: BaseException | None = None) -> None:
        self._state = "idle"
        self._reset_mark()  # a head (the next answer's) wakes the loop at once
        answer = self._answer
        if answer is not None and not answer.done():
            if exc is None:
                answer.set_result(None)
            else:
                answer.set_exception(exc)
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)  # a sender waiting to drain: the answer is in, stop
        if exc is not None:
            self.reusable = False
            if self.transport is not None:
                self.transport.abort()

    # ---- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.attach_mark(transport)
        self.attach_socket(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        state = self._state
        if state == "to_eof" and exc is None:
            self._finish_collected()
        elif state == "into":
            self._finish(
                aiohttp.ClientPayloadError(
                    f"response cut short: {self._filled} of {self._need} bytes"
                )
            )
        elif state in ("length", "chunked", "to_eof"):
            self._finish(aiohttp.ClientPayloadError("response cut short"))
        elif state == "head":
            self._finish(aiohttp.ServerDisconnectedError())
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(aiohttp.ServerDisconnectedError())

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "into":
            return self._into[self._filled : self._need]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._progress()
        if self._state == "into":
            self._filled += nbytes
            if self._filled == self._need:
                self._finish()
            else:
                self._wake_after(self._need - self._filled)
            return
        data = self._scratch[:nbytes]
        if self._state == "head":
            self._raw += data
            self._parse_head()
        elif self._state != "idle":
            self._take(data)
        else:  # bytes nobody asked for: not HTTP as we know it
            self.reusable = False
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost decides what that means

    # ---- the answer ---------------------------------------------------------------------

    def _parse_head(self) -> None:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            if len(self._raw) > MAX_HEAD_BYTES:
                self._finish(aiohttp.ClientPayloadError("answer head too large"))
            return
        try:
            status, headers, framing, keep_alive = parse_head(bytes(self._raw[:end]))
        except aiohttp.ClientPayloadError as e:
            self._finish(e)
            return
        rest = self._raw[end + 4 :]
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._raw = rest
            self._parse_head()
            return
        self.status, self.headers, self.reusable = status, headers, keep_alive
        self._raw = bytearray()
        if self._no_body or status in (204, 304) or framing == 0:
            self.reusable = keep_alive and not rest
            self._in_buffer = bool(self._into.nbytes) and status in self._ok  # an empty range
            self._finish()
        elif framing == CHUNKED:
            self._state = "chunked"
            self._take(memoryview(rest))
        elif framing == UNTIL_CLOSE:
            self._state, self.reusable = "to_eof", False
            self._take(memoryview(rest))
        elif self._into.nbytes and status in self._ok:
            # the range: straight into the caller's buffer, from here on by the socket itself
            if framing > self._into.nbytes:
                self._finish(aiohttp.ClientPayloadError("answer longer than the range asked for"))
                return
            taken = min(len(rest), framing)
            self._into[:taken] = rest[:taken]
            self._need, self._filled, self._in_buffer = framing, taken, True
            self._state = "into"
            self._wake_after(self._need - self._filled)
            if len(rest) > framing:  # more than the answer: the connection is not reused
                self.reusable = False
            if self._filled == self._need:
                self._finish()
        elif framing > OTHER_BODY_MAX_BYTES:
            self._finish(aiohttp.ClientPayloadError("answer longer than expected"))
        else:
            self._need, self._state = framing, "length"
            self._take(memoryview(rest))

    def _take(self, data: memoryview) -> None:
        """A body that does not go straight to a buffer: collected aside."""
        raw = self._raw
        raw += data
        if self._state == "length":
            if len(raw) >= self._need:
                if len(raw) > self._need:
                    self.reusable = False
                    del raw[self._need :]
                self._finish()
            return
        limit = self._into.nbytes if self.status in self._ok else 0
        if len(raw) > max(limit, OTHER_BODY_MAX_BYTES) + 64 * 1024:  # + chunk framing
            self._finish(aiohttp.ClientPayloadError("answer longer than expected"))
        elif self._state == "chunked":
            try:
                body = dechunk(raw)
            except aiohttp.ClientPayloadError as e:
                self._finish(e)
                return
            if body is not None:
                self.reusable = self.reusable and not raw  # dechunk removed what it decoded
                self._raw = bytearray(body)
                self._finish_collected()

    def _finish_collected(self) -> None:
        """End an answer whose body was collected aside (chunked, or read to the end); a range
        that came so is copied into the buffer once (rare: Blob storage sends a Content-Length)."""
        if self._into.nbytes and self.status in self._ok:
            n = len(self._raw)
            if n > self._into.nbytes:
                self._finish(aiohttp.ClientPayloadError("answer longer than the range asked for"))
                return
            self._into[:n] = self._raw
            self._filled, self._in_buffer = n, True
        self._finish()


class HttpPool:
    """Keep-alive connections to one origin (``scheme://host[:port]``), at most ``limit`` kept
    idle. A connection serves one request at a time; how many run at once is the pacer's limit
    (rest.py sends through it)."""

    def __init__(self, origin: str, ssl_ctx: ssl.SSLContext | None, *, limit: int = 64) -> None:
        parts = urlsplit(origin)
        https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if https else 80)
        #: the Host header as aiohttp writes it (the URL's netloc)
        self._host_header = parts.netloc
        self._ssl = (ssl_ctx or ssl.create_default_context()) if https else None
        self._limit = limit
        self._idle: list[_Connection] = []
        self._sends: NativeSends | None = None  # the first small plain-HTTP body starts it
        #: no native sender for this pool: it is closed, or one could not be started
        self._no_sends = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        body: bytes | memoryview | None = None,
        into: memoryview | None = None,
        ok: tuple[int, ...] = (),
        progress: Callable[[], None] = _no_progress,
    ) -> tuple[int, CIMultiDict[str], memoryview | bytes]:
        """One exchange: (status, headers, body). ``headers`` go as given (lowercase names, as
        signed; Content-Length among them when there is a body). With ``into``, an answer whose
        status is in ``ok`` has its body received into that buffer and the filled part of it
        returned; any other body comes back as bytes. ``progress`` is called as bytes go and come
        (the stall watch's touch)."""
        head = request_head(method, target, self._host_header, headers)
        view = None if body is None else _byte_view(body)
        conn = await self._connection()
        try:
            answer = await conn.exchange(head, view, into, ok, progress, method == "HEAD")
        except BaseException:
            # cancelled or failed mid-exchange: the connection is spent, the buffer let go
            conn.detach()
            conn.reusable = False
            conn.transport.abort()
            raise
        if conn.reusable and not conn.closed and len(self._idle) < self._limit:
            self._idle.append(conn)
        else:
            conn.transport.close()
        return answer

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and not conn.closed:
                return conn
            conn.transport.abort()  # closed, or it sent something unasked
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
        if conn.gathers:
            conn.sends = self._native_sends
        return conn

    def _native_sends(self) -> NativeSends | None:
        """The pool's sender, started by the first body it sends (a pool that only reads, as
        restore's, starts no thread); None once the pool is closed or none could be started."""
        if self._sends is None and not self._no_sends:
            try:
                self._sends = NativeSends(asyncio.get_running_loop())
            except (OSError, RuntimeError) as e:  # out of descriptors or threads, say
                log.debug("no native body sender, the transport sends: %s", e)
                self._no_sends = True
        return self._sends

    def close(self) -> None:
        # a request still connecting when the pool closes starts no sender that nobody closes
        self._no_sends = True
        while self._idle:
            self._idle.pop().transport.close()
        if self._sends is not None:
            self._sends.close()
            self._sends = None


def _byte_view(body: bytes | memoryview) -> memoryview:
    view = body if isinstance(body, memoryview) else memoryview(body)
    return view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")
