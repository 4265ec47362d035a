"""raw_http.py reads a ranged body into the caller's buffer in large pieces (SO_RCVLOWAT), not one
socket read per few KiB the server happens to write; the body's last bytes, however they
trickle in, and the next answer's head on the kept connection still wake the loop at once."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from typing import Any

from pyengine.targets import raw_http, wake_mark
from pyengine.targets.raw_http import HttpPool

BODY = os.urandom(4 * 1024 * 1024 + 5)


def _count_reads(monkeypatch: Any) -> list[int]:
    reads: list[int] = []
    real = raw_http._Connection.buffer_updated

    def counting(self: Any, nbytes: int) -> None:
        reads.append(nbytes)
        real(self, nbytes)

    monkeypatch.setattr(raw_http._Connection, "buffer_updated", counting)
    return reads


def _serve_in_pieces(listener: socket.socket) -> None:
    """In a thread, as a server process would: two ranged GETs answered in 8 KiB sends with a
    pause after each (as nginx's proxy passes a body on), the last 100 bytes one at a time;
    then a body-less answer to a PUT on the same connection."""
    conn, _ = listener.accept()
    with conn:
        f = conn.makefile("rb")
        for _ in range(2):
            while f.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(BODY))
            cut = len(BODY) - 100
            for start in range(0, cut, 8192):
                conn.sendall(BODY[start : min(start + 8192, cut)])
                time.sleep(0.0002)
            for i in range(cut, len(BODY)):
                conn.sendall(BODY[i : i + 1])
                time.sleep(0.0005)
        head = b"".join(iter(f.readline, b"\r\n"))
        assert head.startswith(b"PUT ")
        f.read(3)
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        f.read()  # the client's close


def test_a_body_written_in_small_pieces_is_read_in_large_ones_and_the_tail_still_wakes(
    monkeypatch: Any,
) -> None:
    reads = _count_reads(monkeypatch)

    async def go() -> list[bytes]:
        pool = HttpPool(origin, None)
        got = []
        if True:
            for _ in range(2):  # the second on the kept connection: the mark was reset
                buf = memoryview(bytearray(len(BODY)))
                status, _, body = await asyncio.wait_for(
                    pool.request("GET", "/c/b", {}, into=buf, ok=(206,)), 10
                )
                assert status == 206
                got.append(bytes(body))
            # a head of a few dozen bytes after the ranges: answered at once, not at the mark
            status, _, _ = await asyncio.wait_for(
                pool.request("PUT", "/c/p", {"content-length": "3"}, body=b"abc"), 5
            )
            assert status == 201
            pool.close()
        return got

    listener = socket.create_server(("127.0.0.1", 0))
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = threading.Thread(target=_serve_in_pieces, args=(listener,), daemon=True)
    server.start()
    try:
        assert asyncio.run(go()) == [BODY, BODY]
    finally:
        listener.close()
    server.join(10)
    body_reads = [n for n in reads if n > 1000]
    # 4 MiB in 512 sends of 8 KiB per range: ~680 reads without the mark, ~70 with it
    assert len(reads) < 2 * (512 + 100) // 4, len(reads)
    assert max(body_reads) >= 128 * 1024


def _serve_slowly(listener: socket.socket) -> None:
    """A 1 MiB range: 100 KiB at once, then 60 KiB at ~40 KiB/s, then the rest at once."""
    conn, _ = listener.accept()
    with conn:
        f = conn.makefile("rb")
        while f.readline() not in (b"\r\n", b""):
            pass
        body = BODY[: 1024 * 1024]
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.sendall(body[: 100 * 1024])
        for start in range(100 * 1024, 160 * 1024, 2048):
            time.sleep(0.05)
            conn.sendall(body[start : start + 2048])
        conn.sendall(body[160 * 1024 :])
        f.read()


def test_a_slow_body_drops_the_mark_and_its_bytes_reach_the_stall_watch_as_they_come(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(wake_mark, "RCV_LOWAT_CHECK_S", 0.2)
    touches: list[float] = []

    async def go() -> bytes:
        pool = HttpPool(origin, None)
        buf = memoryview(bytearray(1024 * 1024))
        _, _, body = await asyncio.wait_for(
            pool.request(
                "GET", "/c/b", {}, into=buf, ok=(206,), progress=lambda: touches.append(time.time())
            ),
            10,
        )
        pool.close()
        return bytes(body)

    listener = socket.create_server(("127.0.0.1", 0))
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = threading.Thread(target=_serve_slowly, args=(listener,), daemon=True)
    server.start()
    try:
        assert asyncio.run(go()) == BODY[: 1024 * 1024]
    finally:
        listener.close()
    server.join(10)
    # 60 KiB over ~1.5 s: without the fallback the 256 KiB mark keeps the loop asleep all that
    # time; with it, no gap much over the 0.2 s check
    gaps = [b - a for a, b in itertools.pairwise(touches)]
    assert max(gaps) < 0.45, gaps
