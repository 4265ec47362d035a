"""A plain-HTTP request's head and body handed to the kernel in one writev(), on the loop's thread.

Why, measured: a 256 KiB Put Blob body written by the transport is two send()s (head, then body),
each a wake-up of the receiver too; one writev() of both is one syscall and one segment train.

This send once ran in a thread beside the event loop, GIL released, to take the kernel's copy
(~78 us a 256 KiB body) off the loop. Measured side by side on 2 cores it lost: the thread's
Python steps (queue, socket object, dup, close, call_soon_threadsafe) fought the loop for the GIL
at every hand-over. `pyengine bench upload --small-files 10000`, two rounds each, rclone in the
same runs: 1,704 and 2,093 files/s with the thread (806 and 657 us of CPU a file), 2,657 and
2,541 files/s here (530 and 567 us a file).

One non-blocking attempt: what the kernel does not take, the connection (raw_http.py) writes
through its transport, as before, so a slow or stalled peer never blocks the loop. asyncio's own
writes to this socket rely on SIGPIPE being ignored, as Python sets it at start-up; so does this
one. TLS connections keep the transport's path: their bytes must go through the TLS object.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp

#: bodies up to this size go in one writev with their head; larger ones are the transport's
#: (block uploads are bandwidth-bound, and their slices report progress to the stall watch)
MAX_BODY_BYTES = 1024 * 1024


class GatherSend:
    """The part of a raw_http connection that writes head and body together: the descriptor of
    its plain socket (-1 over TLS), owned by the transport and used only while it is open."""

    def __init__(self) -> None:
        self._fd = -1
        self.closed = False

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

    def send_gathered(self, head: bytes, body: memoryview) -> int:
        """Head and body in one non-blocking writev: the bytes the kernel took (0 when its
        buffer is full: the transport then sends them all)."""
        try:
            return os.writev(self._fd, (head, body))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            raise aiohttp.ClientOSError(e.errno, f"cannot send: {e.strerror or e}") from None
