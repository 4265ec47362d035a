"""A small plain-HTTP request's head and body handed to the kernel in one sendmsg() by a native
thread (cpp/body_sender.hpp), while the event loop serves other files.

Why, measured on 2 cores (10,000 encrypted 256 KiB files into the nginx sink): the kernel's copy
of a 256 KiB body is ~78 us of the loop's ~430 us a file, and the loop is what bounds small
files/s. Moved to the native thread, the loop's thread spent 351-363 us a file against 428-471,
and the job ran 5-9 % faster, at no more CPU in all (three interleaved pairs).

Head and body go in one call: one segment train, one wake-up of the receiver instead of two.

The thread is native for a reason: a Python thread did this before, and on 2 cores it lost
more than it saved. Its Python steps (queue, socket object, dup, close, call_soon_threadsafe)
fought the loop for the GIL at every hand-over: `pyengine bench upload --small-files 10000`
gave 1,704 and 2,093 files/s with it (806 and 657 us of CPU a file) against 2,657 and 2,541
(530 and 567 us) with the send on the loop's thread. The native thread never takes the GIL; the
loop gets its answers in batches from an eventfd, as it gets the pipeline's.

One non-blocking attempt per send: what the kernel does not take, the connection (raw_http.py)
writes through its transport, so a slow or stalled peer blocks neither the thread nor the loop.
The attempt works on a dup() of the socket made when it is queued, so the transport closing its
own cannot hand the thread a reused number; head and body stay exported until the attempt is
answered, so a cancelled caller cannot free what the thread still reads. TLS connections keep
the transport's path: their bytes must go through the TLS object.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from pyengine import _core

#: bodies up to this size go in one sendmsg with their head; larger ones are the transport's
#: (block uploads are bandwidth-bound, and their slices report progress to the stall watch)
MAX_BODY_BYTES = 1024 * 1024


class NativeSends:
    """One event loop's side of a native BodySender: each send's future, answered from the
    sender's eventfd with (bytes the kernel took, errno or 0)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sender = _core.BodySender()
        self._waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self._fd = self._sender.fileno()
        try:
            loop.add_reader(self._fd, self._drain)
        except BaseException:
            self._sender.close()
            raise

    def send(
        self, fd: int, head: bytes, body: memoryview
    ) -> asyncio.Future[tuple[int, int]] | None:
        """The attempt's future, or None when it could not be queued (out of descriptors)."""
        token = self._sender.send(fd, head, body)
        if token is None:
            return None
        fut: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self._waiting[token] = fut
        return fut

    def _drain(self) -> int:
        done = self._sender.poll()
        for token, sent, error in done:
            fut = self._waiting.pop(token, None)
            if fut is not None and not fut.done():  # done: its caller was cancelled
                fut.set_result((sent, error))
        return len(done)

    def close(self) -> None:
        """Makes the queued attempts, stops the thread, and answers (and lets go of) them all."""
        self._loop.remove_reader(self._fd)
        self._sender.close()
        while self._drain():
            pass


#: the pool's sender, started on first use (None: none can be, the transport sends)
SendsOf = Callable[[], "NativeSends | None"]


class GatherSend:
    """The part of a raw_http connection that writes head and body together: the descriptor of
    its plain socket (-1 over TLS), owned by the transport and used only while it is open."""

    def __init__(self) -> None:
        self._fd = -1
        self.closed = False
        #: the pool's way to a native sender (set for a plain socket by the pool that opened it)
        self.sends: SendsOf | None = None

    @property
    def gathers(self) -> bool:
        return self._fd >= 0 and not self.closed

    def attach_socket(self, transport: Any) -> None:
        if transport.get_extra_info("sslcontext") is not None:
            return
        raw = transport.get_extra_info("socket")
        if raw is None or raw.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return
        self._fd = raw.fileno()

    async def send_gathered(self, head: bytes, body: memoryview) -> int:
        """Head and body in one non-blocking sendmsg by the native thread: the bytes the kernel
        took (0 when its buffer was full or no attempt could be made: the transport then sends
        them all). The thread holds its own references to both until it is done."""
        sends = None if self.sends is None else self.sends()
        if sends is None:
            return 0
        attempt = sends.send(self._fd, head, body)
        if attempt is None:
            return 0
        sent, error = await attempt
        if error:
            raise aiohttp.ClientOSError(error, f"cannot send: {os.strerror(error)}")
        return sent
