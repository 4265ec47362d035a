"""body_writer.py: a plain-HTTP request's head and body go to the kernel in one non-blocking
sendmsg by the pool's native thread; what it does not take goes by the transport. The bytes on the
wire are exactly the request's, a peer that stops reading or answers early never blocks anything,
a send error is the connection's error, and the thread holds the body until its attempt is
answered, also when the caller was cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import warnings
from typing import Any

import aiohttp
import pytest

from pyengine.targets.body_writer import MAX_BODY_BYTES, GatherSend, NativeSends
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
    """(bytes the kernel took, bytes it was given) of each gathered send."""
    seen: list[tuple[int, int]] = []
    real = GatherSend.send_gathered

    async def spy(self: GatherSend, head: bytes, body: memoryview) -> int:
        sent = await real(self, head, body)
        seen.append((sent, len(head) + body.nbytes))
        return sent

    monkeypatch.setattr(GatherSend, "send_gathered", spy)
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
    # up to MAX_BODY_BYTES one sendmsg sent head and body (all of it, or the transport the rest);
    # above, never
    assert len(seen) == (1 if size <= MAX_BODY_BYTES else 0)
    if size <= 256 * 1024 + 28:  # a loopback socket's buffer takes these whole
        assert seen[0][0] == seen[0][1]


def test_what_the_kernel_did_not_take_goes_by_the_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _spy_sends(monkeypatch)
    got: list[bytes] = []
    real_attach = GatherSend.attach_socket

    def small_send_buffer(self: GatherSend, transport: Any) -> None:
        real_attach(self, transport)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(GatherSend, "attach_socket", small_send_buffer)

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
    assert seen and 0 < seen[0][0] < seen[0][1], seen  # the sendmsg took part of it


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


def test_a_full_socket_buffer_takes_nothing_and_a_dead_peer_is_a_connection_error() -> None:
    async def go() -> None:
        ours, peer = socket.socketpair()
        with ours, peer:
            ours.setblocking(False)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            with contextlib.suppress(BlockingIOError):
                while True:
                    ours.send(b"f" * 4096)
            send = GatherSend()
            send._fd = ours.fileno()
            sends = NativeSends(asyncio.get_running_loop())
            send.sends = lambda: sends
            assert send.gathers
            assert await send.send_gathered(b"head", memoryview(b"body")) == 0  # full
            peer.close()
            with pytest.raises(aiohttp.ClientOSError, match="cannot send"):
                await send.send_gathered(b"head", memoryview(b"body"))
            sends.close()
            send.closed = True
            assert not send.gathers

    asyncio.run(go())


def test_the_thread_holds_the_body_until_its_attempt_is_answered_even_if_nobody_waits() -> None:
    """The body is a pooled native buffer in a real job: it must stay exported while the thread
    may read it, and be let go once the attempt is answered, whether its caller still waits."""

    async def go() -> None:
        ours, peer = socket.socketpair()
        with ours, peer:
            sends = NativeSends(asyncio.get_running_loop())
            body = bytearray(b"b" * 1000)
            attempt = sends.send(ours.fileno(), b"head", memoryview(body))
            assert attempt is not None
            with pytest.raises(BufferError):  # exported while the attempt is out
                body.extend(b"x")
            assert await attempt == (1004, 0)
            body.extend(b"x")  # answered: let go

            cancelled = bytearray(b"c" * 1000)
            attempt = sends.send(ours.fileno(), b"head", memoryview(cancelled))
            assert attempt is not None
            attempt.cancel()  # its caller went away: the thread may still read the body
            with pytest.raises(BufferError):
                cancelled.extend(b"x")
            sends.close()  # makes the attempt, answers it, lets go of it
            cancelled.extend(b"x")
            sent = b""
            while len(sent) < 2 * 1004:
                sent += peer.recv(4096)
            assert sent == b"head" + b"b" * 1000 + b"head" + b"c" * 1000

    asyncio.run(go())


def test_a_tls_connection_does_not_gather() -> None:
    class _Transport:
        def get_extra_info(self, name: str) -> Any:
            return object() if name == "sslcontext" else socket.socket()

    send = GatherSend()
    send.attach_socket(_Transport())
    assert not send.gathers


def test_a_kept_connection_holds_one_descriptor_and_a_closed_pool_no_thread() -> None:
    """Each send works on a dup the thread closes after its attempt: 50 Puts on one kept
    connection leave one descriptor open, not two (a policy's lanes run 64 connections each);
    closing the pool stops its thread."""

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
            (conn,) = pool._idle
            held = descriptors_of(conn.transport.get_extra_info("socket").fileno())
            threads = len(os.listdir("/proc/self/task"))
            pool.close()
            # joined; the kernel may list the ended thread a moment longer
            deadline = time.monotonic() + 2
            while len(os.listdir("/proc/self/task")) != threads - 1:
                assert time.monotonic() < deadline, "the pool's sender thread outlived close()"
                time.sleep(0.01)
            return held

    assert asyncio.run(go()) == 1


def test_a_request_cancelled_while_its_attempt_is_out_aborts_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stall watch cancels: the caller sees the cancellation, and the connection, whose
    bytes the thread may still be sending, is never handed to another request."""
    real_send = NativeSends.send
    held_out: list[asyncio.Future[tuple[int, int]]] = []

    def slow(
        self: NativeSends, fd: int, head: bytes, body: memoryview
    ) -> asyncio.Future[tuple[int, int]] | None:
        real = real_send(self, fd, head, body)
        assert real is not None
        answer = self._loop.create_future()  # answered 0.3 s after the thread's own answer
        real.add_done_callback(
            lambda r: (
                self._loop.call_later(0.3, answer.set_result, (0, 0)) if not answer.done() else None
            )
        )
        held_out.append(answer)
        return answer

    monkeypatch.setattr(NativeSends, "send", slow)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)
        writer.close()

    async def go() -> None:
        server, origin = await _server(serve)
        async with server:
            pool = HttpPool(origin, None)
            body = os.urandom(64 * 1024)
            request = asyncio.ensure_future(
                pool.request("PUT", "/c/b", {"content-length": str(len(body))}, body=body)
            )
            while not held_out:
                await asyncio.sleep(0)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(request, 5)
            assert pool._idle == []  # aborted, not kept
            pool.close()

    asyncio.run(go())


def test_a_pool_that_cannot_start_a_sender_sends_by_the_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_thread(self: NativeSends, loop: Any) -> None:
        raise RuntimeError("Resource temporarily unavailable")  # as std::system_error maps

    monkeypatch.setattr(NativeSends, "__init__", no_thread)
    seen = _spy_sends(monkeypatch)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _read_request(reader)
            writer.write(CREATED)
            await writer.drain()
        writer.close()

    async def go() -> list[int]:
        server, origin = await _server(serve)
        async with server:
            pool = HttpPool(origin, None)
            statuses = []
            for _ in range(2):
                status, _, _ = await pool.request(
                    "PUT", "/c/b", {"content-length": "5"}, body=b"hello"
                )
                statuses.append(status)
            pool.close()
            return statuses

    assert asyncio.run(go()) == [201, 201]
    assert [sent for sent, _ in seen] == [0, 0]  # no native attempt: the transport sent all


def test_a_forked_child_sends_by_the_transport_and_closes_without_waiting() -> None:
    """The child inherits the sender but not its thread: an attempt there would never be
    answered, and joining the parent's thread would wait forever."""

    async def go() -> int:
        ours, peer = socket.socketpair()
        with ours, peer:
            sends = NativeSends(asyncio.get_running_loop())
            with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: no pytest past this point, only an exit status
                code = 0
                try:
                    if sends.send(ours.fileno(), b"head", memoryview(b"body")) is not None:
                        code = 1
                    sends._sender.close()
                except BaseException:
                    code = 2
                os._exit(code)
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    return -1
                await asyncio.sleep(0.02)
            attempt = sends.send(ours.fileno(), b"a", memoryview(b"b"))  # the parent's works
            assert attempt is not None and await attempt == (2, 0)
            sends.close()
            return os.waitstatus_to_exitcode(status)

    assert asyncio.run(go()) == 0


def test_a_pool_that_only_reads_starts_no_sender_thread() -> None:
    """Restore's pools only GET: no thread for them."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go() -> tuple[int, int]:
        server, origin = await _server(serve)
        async with server:
            pool = HttpPool(origin, None)
            threads = len(os.listdir("/proc/self/task"))
            status, _, content = await pool.request("GET", "/c/b", {})
            assert (status, bytes(content)) == (200, b"ok")
            after = len(os.listdir("/proc/self/task"))
            pool.close()
            return threads, after

    threads, after = asyncio.run(go())
    assert after == threads
