"""body_writer.py: a plain-HTTP request's head and body go to the kernel from a thread beside the
event loop, in one non-blocking sendmsg; what it does not take goes by the transport. The bytes on
the wire are exactly the request's, a peer that stops reading or answers early blocks neither the
thread nor the caller, and a cancelled exchange lets go of the body only once the thread has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import pytest

from pyengine.targets import body_writer
from pyengine.targets.body_writer import MAX_BODY_BYTES, ThreadSend
from pyengine.targets.raw_http import HttpPool

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


async def _server(serve: Any, rcvbuf: int | None = None) -> tuple[asyncio.Server, str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:  # inherited by accepted sockets: a small window, sends fall short
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(serve, sock=sock)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def _spy_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(bytes the thread took, bytes it was given) of each thread send."""
    seen: list[tuple[int, int]] = []
    real = ThreadSend.send_by_thread

    async def spy(self: ThreadSend, head: bytes, body: memoryview) -> int:
        sent = await real(self, head, body)
        seen.append((sent, len(head) + body.nbytes))
        return sent

    monkeypatch.setattr(ThreadSend, "send_by_thread", spy)
    return seen


@pytest.mark.parametrize("size", [1, 256 * 1024 + 28, MAX_BODY_BYTES, MAX_BODY_BYTES + 1])
def test_the_bytes_on_the_wire_are_the_requests_whoever_sends_them(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    seen = _spy_sends(monkeypatch)
    got: list[tuple[bytes, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await _read_request(reader))
        writer.write(CREATED)
        await writer.drain()
        writer.close()

    async def go() -> int:
        server, origin = await _server(serve)
        async with server:
            pool = HttpPool(origin, None)
            body = os.urandom(size)
            status, _, _ = await pool.request(
                "PUT", "/c/b", {"content-length": str(size)}, body=body
            )
            pool.close()
            assert got[0][1] == body
            assert got[0][0].startswith(b"PUT /c/b HTTP/1.1\r\n")
            return status

    assert asyncio.run(go()) == 201
    # up to MAX_BODY_BYTES the thread sent (all of it, or the transport the rest); above, never
    assert len(seen) == (1 if size <= MAX_BODY_BYTES else 0)


def test_what_the_kernel_did_not_take_goes_by_the_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _spy_sends(monkeypatch)
    got: list[bytes] = []
    real_attach = ThreadSend.attach_socket

    def small_send_buffer(self: ThreadSend, transport: Any) -> None:
        real_attach(self, transport)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(ThreadSend, "attach_socket", small_send_buffer)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # the client's send fills the small window first
        got.append((await _read_request(reader))[1])
        writer.write(CREATED)
        await writer.drain()
        writer.close()

    async def go() -> None:
        server, origin = await _server(serve, rcvbuf=4096)
        async with server:
            pool = HttpPool(origin, None)
            body = os.urandom(MAX_BODY_BYTES)
            status, _, _ = await pool.request(
                "PUT", "/c/b", {"content-length": str(len(body))}, body=memoryview(body)
            )
            pool.close()
            assert status == 201 and got == [body]

    asyncio.run(go())
    assert seen and seen[0][0] < seen[0][1], seen  # the thread's send fell short


def test_an_answer_before_the_body_is_read_ends_the_exchange_without_hanging() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: refused before the body
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def go() -> int:
        server, origin = await _server(serve, rcvbuf=4096)
        async with server:
            pool = HttpPool(origin, None)
            try:
                status, _, _ = await asyncio.wait_for(
                    pool.request(
                        "PUT",
                        "/c/b",
                        {"content-length": str(MAX_BODY_BYTES)},
                        body=os.urandom(MAX_BODY_BYTES),
                    ),
                    5,
                )
            finally:
                pool.close()
            return status

    assert asyncio.run(go()) == 413


def test_a_cancelled_exchange_returns_only_once_the_thread_let_go_of_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that never reads: the caller cancels (the stall watch does so) while the thread's
    attempt is out (held out here for 0.3 s); the cancellation reaches the caller only after
    the attempt answered, and the connection is closed."""
    attempts: list[asyncio.Future[int]] = []

    def slow_send(sock: socket.socket, bufs: list[memoryview]) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        attempts.append(loop.create_future())
        sock.close()  # as the thread would after its attempt
        loop.call_later(0.3, attempts[-1].set_result, 0)  # the kernel took nothing
        return attempts[-1]

    monkeypatch.setattr(body_writer.WRITER, "send", slow_send)
    conns: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)
        writer.close()

    async def go() -> None:
        server, origin = await _server(serve, rcvbuf=4096)
        async with server:
            pool = HttpPool(origin, None)
            real_connection = pool._connection

            async def connection() -> Any:
                conns.append(await real_connection())
                return conns[-1]

            pool._connection = connection  # type: ignore[method-assign]
            body = os.urandom(MAX_BODY_BYTES)
            request = asyncio.ensure_future(
                pool.request("PUT", "/c/b", {"content-length": str(len(body))}, body=body)
            )
            while not attempts:
                await asyncio.sleep(0)
            request.cancel()  # while the thread's attempt may still be out
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(request, 5)
            assert attempts[0].done()
            await asyncio.sleep(0.05)  # the aborted transport's connection_lost
            assert conns[0].closed
            pool.close()

    asyncio.run(go())


class _FakeSocket:
    """sendmsg as the test says: a count of bytes taken, or an exception raised."""

    def __init__(self, outcome: int | BaseException) -> None:
        self.outcome = outcome

    closed = False

    def close(self) -> None:
        self.closed = True

    def sendmsg(self, bufs: list[memoryview], *args: Any) -> int:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def test_the_writer_thread_outlives_an_unexpected_error_and_a_death() -> None:
    writer = body_writer.BodyWriter()
    data = memoryview(b"x" * 10)

    async def go() -> None:
        with pytest.raises(RuntimeError, match="odd"):
            await writer.send(_FakeSocket(RuntimeError("odd")), [data])  # type: ignore[arg-type]
        assert await writer.send(_FakeSocket(7), [data]) == 7  # type: ignore[arg-type]

    asyncio.run(go())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_writer_thread_is_started_again_for_the_next_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = body_writer.BodyWriter()
    real_serve = body_writer._serve
    deaths: list[int] = []

    def dies_once(*job: Any) -> None:
        if not deaths:
            deaths.append(1)
            raise SystemExit  # not caught by the thread's loop: the thread ends
        real_serve(*job)

    monkeypatch.setattr(body_writer, "_serve", dies_once)

    async def go() -> int:
        # the job a thread dies on is lost (its _serve answers every error it can meet)
        writer.send(_FakeSocket(1), [memoryview(b"a")])  # type: ignore[arg-type]
        assert writer._thread is not None
        writer._thread.join(5)  # dead
        return await asyncio.wait_for(writer.send(_FakeSocket(3), [memoryview(b"b")]), 5)  # type: ignore[arg-type]

    assert asyncio.run(go()) == 3
    assert deaths == [1]


def test_the_writer_thread_keeps_no_reference_to_a_body_it_sent() -> None:
    """A pooled native buffer goes back to its pool when its last view is dropped: the thread
    must not hold the last job's views until the next job comes."""
    writer = body_writer.BodyWriter()
    body = bytearray(b"y" * 100)

    async def go() -> None:
        view = memoryview(body)
        assert await writer.send(_FakeSocket(100), [view]) == 100  # type: ignore[arg-type]
        view.release()

    asyncio.run(go())
    time.sleep(0.05)  # the thread returns from the job it has answered
    body.extend(b"z")  # BufferError while any view of it is alive


def test_a_kept_connection_holds_one_descriptor_whatever_the_thread_sent() -> None:
    """Each thread send works on a dup of its own that the thread closes: 50 Puts on one kept
    connection leave one descriptor open, not two (a policy's lanes run 64 connections each)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(50):
            await _read_request(reader)
            writer.write(CREATED)
            await writer.drain()
        await reader.read()
        writer.close()

    def descriptors_of(fd: int) -> int:
        """How many of this process's descriptors are the socket ``fd`` is."""
        target = os.readlink(f"/proc/self/fd/{fd}")
        count = 0
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{name}") == target
        return count

    async def go() -> int:
        server, origin = await _server(serve)
        async with server:
            pool = HttpPool(origin, None)
            body = os.urandom(64 * 1024)
            for _ in range(50):
                status, _, _ = await pool.request(
                    "PUT", "/c/b", {"content-length": str(len(body))}, body=body
                )
                assert status == 201
            await asyncio.sleep(0.05)  # the thread closes each dup after answering
            (conn,) = pool._idle
            held = descriptors_of(conn.transport.get_extra_info("socket").fileno())
            pool.close()
            return held

    assert asyncio.run(go()) == 1
