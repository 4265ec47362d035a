"""A request's head and body handed to the kernel by a thread beside the event loop.

Why, measured: on a plain-HTTP connection (the nginx sink, Azurite, a Data Box's HTTP endpoint)
the send() of a 256 KiB Put Blob body is ~75 us of the event loop's CPU (the kernel's copy, and on
loopback the receiver's TCP processing too), ~20 % of the loop's work per small file, and the loop
is what bounds small files/s on 2 cores. Here one sendmsg() of head and body together runs in
this thread, GIL released, while the loop serves other files; one segment-train instead of a
head write and a body write also saves the receiver a wake-up per request.

The thread makes one non-blocking attempt and reports how many bytes the kernel took; the
connection (raw_http.py) writes whatever is left through its transport, as before, so a slow or
stalled peer never blocks this thread for the other connections. The socket is a dup() of the
transport's, so the transport closing its descriptor mid-send cannot hand this thread a reused
number; the caller awaits the attempt before it lets go of the body's buffer (a pooled native
buffer) or of the socket, also when it is cancelled.

TLS connections keep the transport's own path: their bytes must go through the TLS object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from queue import SimpleQueue
from typing import Any

import aiohttp

#: bodies up to this size go by the thread; larger ones are the transport's (block uploads are
#: bandwidth-bound, and their slices report progress to the stall watch as they go)
MAX_BODY_BYTES = 1024 * 1024

_Job = tuple[asyncio.AbstractEventLoop, socket.socket, list[memoryview], "asyncio.Future[int]"]


class BodyWriter:
    """One daemon thread per process, started on first use (again in a forked child)."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def send(self, sock: socket.socket, bufs: list[memoryview]) -> asyncio.Future[int]:
        """One non-blocking sendmsg of ``bufs`` in the thread, which then closes ``sock``: the
        future gives the bytes taken (0 when the socket's buffer was full), or the error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._ensure_thread()
        self._jobs.put((loop, sock, bufs, fut))
        return fut

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._jobs = SimpleQueue()  # a forked child: the parent's queue is not ours
                self._pid = os.getpid()
            elif self._thread.is_alive():
                return
            # first use, a forked child, or a thread that died: the queued jobs are served
            self._thread = threading.Thread(
                target=self._main, args=(self._jobs,), name="pyengine-body-writer", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _main(jobs: SimpleQueue[_Job]) -> None:
        while True:
            _serve(*jobs.get())  # a function: nothing of a job outlives it here (its body
            # is a pooled buffer that goes back to its pool when its last view is dropped)


def _serve(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    bufs: list[memoryview],
    fut: asyncio.Future[int],
) -> None:
    result: Any
    try:
        result = sock.sendmsg(bufs, (), socket.MSG_NOSIGNAL)
    except BlockingIOError:
        result = 0
    except BaseException as e:  # whatever it is, the waiting caller gets it; the thread lives
        result = e
    finally:
        sock.close()  # the send's own dup (ThreadSend)
    # a closed loop (RuntimeError): nobody waits any more
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future[int], result: Any) -> None:
    if fut.cancelled():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


#: the process's writer
WRITER = BodyWriter()


class ThreadSend:
    """The part of a raw_http connection that sends by the thread: the descriptor of its plain
    socket (-1 over TLS), dup()'d for each send and closed by the thread after it. A connection
    so holds one descriptor, and the transport closing its own mid-send cannot hand the thread a
    number reused by another file."""

    def __init__(self) -> None:
        self._fd = -1
        self._family = self._type = 0
        self.closed = False

    @property
    def thread_sends(self) -> bool:
        return self._fd >= 0 and not self.closed

    def attach_socket(self, transport: Any) -> None:
        if transport.get_extra_info("sslcontext") is not None:
            return
        raw = transport.get_extra_info("socket")
        if raw is None or raw.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return
        self._fd, self._family, self._type = raw.fileno(), raw.family, raw.type

    async def send_by_thread(self, head: bytes, body: memoryview) -> int:
        """Head and body handed to the kernel by the thread: the bytes it took (0 when it could
        not try: the transport then sends them all). The thread reads the caller's buffer until
        it answers, so a cancelled exchange still waits for that answer (one non-blocking
        syscall) before it lets the buffer go."""
        try:  # the same open socket (non-blocking already), under a number of the thread's own
            sock = socket.socket(self._family, self._type, 0, os.dup(self._fd))
        except OSError:  # out of descriptors, say: the transport's own path
            return 0
        attempt = WRITER.send(sock, [memoryview(head), body])
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            while not attempt.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((attempt,))
            attempt.exception()  # retrieved: the cancellation is what the caller sees
            raise
        except OSError as e:
            raise aiohttp.ClientOSError(e.errno, f"cannot send: {e.strerror or e}") from None
