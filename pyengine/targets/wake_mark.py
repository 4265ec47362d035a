"""SO_RCVLOWAT for a body that raw_http.py reads into the caller's buffer.

Why, measured: nginx passes a ranged body on in pieces of a few KiB, and the event loop woke for
each (bench download: ~84,000 socket reads and ~1 CPU-s of the loop per GB; with the mark ~4,000
reads and 0.37 CPU-s). The mark stays a TLS record and more under what is left of the body, so its
last bytes always wake the loop (a partial record in the TLS layer's buffer is at most ~17 KiB); a
mark that has not woken the loop within RCV_LOWAT_CHECK_S is dropped for the rest of the answer, so
a slow link's bytes still wake it as they come and the stall watch sees them; the next answer's
head is read with no mark.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

#: a body read into a caller's buffer wakes the loop once this much has arrived
RCV_LOWAT_BYTES = 256 * 1024
#: a raised mark that has not woken the loop for this long is dropped for the rest of the answer:
#: a slow link's bytes wake the loop as they come, and the stall watch sees them
RCV_LOWAT_CHECK_S = 1.0

#: a TLS record (16 KiB of data) and its framing, with room to spare
_RECORD_BYTES = 17 * 1024


class WakeMark:
    """The mark of one raw_http connection (its _state, _filled and _need are the body's)."""

    _state: str
    _filled: int
    _need: int

    def __init__(self) -> None:
        self._sock: Any = None  # the transport's socket (set by attach_mark)
        self._lowat = 1
        self._slow = False  # this answer's bytes came slower than the mark: no mark
        self._slow_timer: asyncio.TimerHandle | None = None

    def attach_mark(self, transport: Any) -> None:
        self._sock = transport.get_extra_info("socket")

    def _wake_after(self, left: int) -> None:
        """The mark for a body with ``left`` bytes still to come (the module says why)."""
        mark = min(RCV_LOWAT_BYTES, left - 2 * _RECORD_BYTES) if left > 4 * _RECORD_BYTES else 1
        if self._slow:
            mark = 1
        if mark != self._lowat and self._sock is not None:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, mark))
            except OSError:  # a closed socket; nothing to wake for any more
                return
            self._lowat = mark
        if mark > 1 and self._slow_timer is None:
            self._slow_timer = asyncio.get_running_loop().call_later(
                RCV_LOWAT_CHECK_S, self._slow_check, self._filled
            )

    def _slow_check(self, filled: int) -> None:
        self._slow_timer = None
        if self._state != "into":
            return
        if self._filled == filled:  # nothing woke the loop: the bytes come slower than the mark
            self._slow = True
        self._wake_after(self._need - self._filled)

    def _reset_mark(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        self._slow = False
        if self._lowat != 1:
            self._wake_after(0)
