"""A fault-injection reverse proxy in front of Azurite, for the test suite.

It runs an aiohttp server on a free loopback port, in its own thread and event loop (so tests can
drive ``asyncio.run(copy(...))`` or the CLI in the main thread), and forwards every request
unchanged: method, raw path and query, headers and body. SharedKey signatures cover the method,
path, query and the standard and ``x-ms-*`` headers, so Azurite still verifies them.

What a test can ask for (rules may change while a job runs):

- :meth:`FaultProxy.storm`: every request in a time window answered with 503 ``ServerBusy`` (or
  another status) carrying ``x-ms-retry-after-ms``, without reaching Azurite;
- :meth:`FaultProxy.fault` with a kind, on a share of the requests or every N-th one:
  ``reset`` (the connection is cut after half the request body), ``stall`` (no answer for
  ``stall_s``), ``truncate`` (the answer declares more body than it sends, then the connection
  closes), ``error`` (a 500 instead of forwarding), ``commit_lost`` (forwarded and done by
  Azurite, but the answer replaced by a 500), or ``mixed`` (one of these at random).

And a recording: with ``recording = True`` every request's method, path and headers are kept
in ``recorded`` (for headers Azurite accepts but does not store, e.g. immutability policies).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from loop_server import LoopThreadServer
from yarl import URL

#: headers that belong to one connection, not to the request (RFC 9110 section 7.6.1)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
KINDS = ("reset", "stall", "truncate", "error", "commit_lost")
#: what "mixed" draws from (commit_lost only hits Put Block List, so it is a rule of its own)
MIXED_KINDS = ("reset", "stall", "truncate", "error")

Match = Callable[[str, str], bool]


def is_put_block_list(method: str, path_qs: str) -> bool:
    return method == "PUT" and "comp=blocklist" in path_qs


def has_body(method: str, path_qs: str) -> bool:
    """Put Blob, Put Block and Put Block List: the requests that carry data."""
    return method == "PUT" and "restype=container" not in path_qs


@dataclass
class _Storm:
    start_s: float
    end_s: float
    status: int
    retry_after_ms: int
    code: str


@dataclass
class _Fault:
    kind: str
    rate: float | None
    every: int | None
    times: int | None
    match: Match | None
    stall_s: float
    seen: int = 0
    fired: int = 0


class FaultProxy(LoopThreadServer):
    thread_name = "faultproxy"

    def __init__(self, upstream_origin: str, *, seed: int = 0) -> None:
        #: e.g. ``http://127.0.0.1:10000``
        self.upstream_origin = upstream_origin.rstrip("/")
        self.origin = ""
        self.port = 0
        self.requests = 0
        #: faults injected, by kind ("storm" for requests answered by a storm)
        self.injected: Counter[str] = Counter()
        #: (monotonic time, bytes) for every piece of request body received
        self.body_log: list[tuple[float, int]] = []
        #: monotonic arrival time of every request
        self.request_times: list[float] = []
        self._storms: list[_Storm] = []
        self._faults: list[_Fault] = []
        #: with recording on: (method, raw path and query, headers with lower-case names)
        self.recording = False
        self.recorded: list[tuple[str, str, dict[str, str]]] = []
        #: with recording on: [method, raw path and query, upstream status, headers with
        #: lower-case names] of each request whose whole body arrived (a client that died
        #: mid-body never gets that far); status None: no answer came back (the client went
        #: away meanwhile; the upstream may have acted on it all the same)
        self.forwarded: list[list[Any]] = []
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- rules (called from the test's thread) ---------------------------------------------

    def url(self, url: str) -> str:
        """``url`` (an Azurite URL) pointed at the proxy instead."""
        assert url.startswith(self.upstream_origin), url
        return self.origin + url[len(self.upstream_origin) :]

    def storm(
        self,
        duration_s: float,
        *,
        start_in_s: float = 0.0,
        status: int = 503,
        retry_after_ms: int = 1000,
        code: str = "ServerBusy",
    ) -> None:
        """Answer every request with ``status`` from ``start_in_s`` for ``duration_s``."""
        now = time.monotonic()
        self._storms.append(
            _Storm(now + start_in_s, now + start_in_s + duration_s, status, retry_after_ms, code)
        )

    def fault(
        self,
        kind: str,
        *,
        rate: float | None = None,
        every: int | None = None,
        times: int | None = None,
        match: Match | None = None,
        stall_s: float = 5.0,
    ) -> None:
        """Inject ``kind`` on a random share ``rate`` of the matching requests, or on every
        ``every``-th one, at most ``times`` times."""
        assert kind in (*KINDS, "mixed"), kind
        assert (rate is None) != (every is None), "give rate or every"
        self._faults.append(_Fault(kind, rate, every, times, match, stall_s))

    def clear(self) -> None:
        self._storms = []
        self._faults = []

    # --- life cycle ----------------------------------------------------------------------

    async def _start(self) -> None:
        # no pool limit: the client under test decides how many connections it opens
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        )
        app = web.Application(client_max_size=1 << 31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{self.port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the proxy -----------------------------------------------------------------------

    def _pick(self, method: str, path_qs: str) -> _Storm | _Fault | None:
        now = time.monotonic()
        for storm in self._storms:
            if storm.start_s <= now < storm.end_s:
                return storm
        for f in self._faults:
            if f.match is not None and not f.match(method, path_qs):
                continue
            if f.times is not None and f.fired >= f.times:
                continue
            f.seen += 1
            hit = (
                self._rng.random() < f.rate if f.rate is not None else f.seen % (f.every or 1) == 0
            )
            if hit:
                f.fired += 1
                return f
        return None

    async def _read_body(self, request: web.Request, limit_bytes: int | None = None) -> bytes:
        parts: list[bytes] = []
        got = 0
        while limit_bytes is None or got < limit_bytes:
            want = 65536 if limit_bytes is None else min(65536, limit_bytes - got)
            piece = await request.content.read(want)
            if not piece:
                break
            self.body_log.append((time.monotonic(), len(piece)))
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.request_times.append(time.monotonic())
        method, path_qs = request.method, request.raw_path
        if self.recording:
            self.recorded.append(
                (method, path_qs, {k.lower(): v for k, v in request.headers.items()})
            )
        rule = self._pick(method, path_qs)
        if isinstance(rule, _Storm):
            await self._read_body(request)
            self.injected["storm"] += 1
            return _error(rule.status, rule.code, {"x-ms-retry-after-ms": str(rule.retry_after_ms)})
        kind = rule.kind if rule is not None else None
        if kind == "mixed":
            kind = self._rng.choice(MIXED_KINDS)
        if kind is not None:
            self.injected[kind] += 1
        if kind == "reset":
            await self._read_body(request, (request.content_length or 0) // 2)
            _cut(request)
            return web.Response(status=500)  # never reaches the client
        body = await self._read_body(request)
        if kind == "stall":
            await asyncio.sleep(rule.stall_s if rule is not None else 5.0)
            _cut(request)
            return web.Response(status=500)
        if kind == "error":
            return _error(500, "InternalError", {})
        entry: list[Any] = [
            method,
            path_qs,
            None,
            {k.lower(): v for k, v in request.headers.items()},
        ]
        if self.recording:
            self.forwarded.append(entry)
        status, headers, content = await self._forward(request, body)
        entry[2] = status
        if kind == "commit_lost":
            return _error(500, "InternalError", {})
        resp = web.StreamResponse(status=status, headers=headers)
        if kind == "truncate":
            # promise more than is sent, then close: the client sees a payload cut short
            resp.content_length = len(content) + 100
            await resp.prepare(request)
            await resp.write(content[: len(content) // 2])
            _cut(request)
            return resp
        resp.content_length = int(headers.get("Content-Length", len(content)))
        await resp.prepare(request)
        if content:
            await resp.write(content)
        await resp.write_eof()
        return resp

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.upstream_origin + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body if body else None
        ) as up:
            content = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            return up.status, out, content


def _error(status: int, code: str, headers: dict[str, str]) -> web.Response:
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the fault proxy</Message></Error>"
    )
    return web.Response(
        status=status,
        headers={"x-ms-error-code": code, "Content-Type": "application/xml", **headers},
        text=body,
    )


def _cut(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()  # RST-like: no orderly close, what a dying middlebox does
