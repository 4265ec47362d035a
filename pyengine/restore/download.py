"""How a blob's bytes reach the local file: ranged Get Blob requests, each handed as received to
the native writer (_core.Writer), which checks, decrypts, hashes and pwrites it off the event loop.

Memory is bounded by a byte budget (the same cap as upload): a range holds its stored size from
before its request until the writer is done with its buffer, and no request starts without its
share. Ranges are granted in request order, so the files started first finish first.
"""

from __future__ import annotations

import asyncio
import base64
import collections
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from pyengine import _core
from pyengine.restore.plan import MAX_CRC64_RANGE_BYTES, RangeLayout
from pyengine.restore.state import PartState


class RangeFailed(Exception):
    """A range that could not be fetched or did not check out; the file fails with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ByteBudget:
    """A FIFO byte semaphore: ``async with budget.hold(n)`` waits until ``n`` bytes are free."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.in_use_bytes = 0
        self.peak_bytes = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @asynccontextmanager
    async def hold(self, n: int):  # type: ignore[no-untyped-def]
        # A range larger than the whole cap still runs, alone, rather than never.
        n = min(n, self.cap_bytes)
        if self._waiters or self.in_use_bytes + n > self.cap_bytes:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._release(n)  # granted while being cancelled: give it back
                else:
                    self._waiters.remove((n, fut))
                raise
        else:
            self._take(n)
        try:
            yield
        finally:
            self._release(n)

    def _take(self, n: int) -> None:
        self.in_use_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.in_use_bytes)

    def _release(self, n: int) -> None:
        self.in_use_bytes -= n
        while self._waiters and self.in_use_bytes + self._waiters[0][0] <= self.cap_bytes:
            need, fut = self._waiters.popleft()
            if not fut.done():
                self._take(need)
                fut.set_result(None)


class WriterLoop:
    """The native writer driven from the event loop: its eventfd wakes the loop, completions
    resolve the futures of the ranges submitted."""

    def __init__(self, threads: int) -> None:
        self.writer = _core.Writer(threads)
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._loop.add_reader(self.writer.fileno(), self._drain)

    def _drain(self) -> None:
        for ev in self.writer.poll():
            fut = self._waiters.pop(ev.token, None)
            if fut is not None and not fut.done():
                fut.set_result(ev)

    async def write(self, **kwargs: Any) -> Any:
        """Submit one range and wait for its RangeDone. Shielded: a cancelled caller still waits
        for the writer to finish with the file descriptor before the file is closed."""
        token = self.writer.submit(**kwargs)
        fut = self._loop.create_future()
        self._waiters[token] = fut
        return await asyncio.shield(fut)

    def close(self) -> None:
        self._loop.remove_reader(self.writer.fileno())
        self.writer.close()
        self._drain()


def crc64_from_header(value: str | None) -> int | None:
    """The service's ``x-ms-content-crc64`` (base64 of 8 little-endian bytes) as an int."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


async def fetch_ranges(
    *,
    store: Any,
    writer: WriterLoop,
    budget: ByteBudget,
    blob_name: str,
    etag: str,
    layout: RangeLayout,
    fd: int,
    file_id: int,
    content_key: bytes | None,
    state: PartState,
    on_bytes: Callable[[int, int], None],
) -> None:
    """Fetch and write every range not in ``state`` (the last one always); raises RangeFailed or
    the store's error for the first range that fails, after every range in flight has ended
    (the writer must be done with ``fd`` before the caller closes it)."""
    todo = [i for i in range(layout.count) if i not in state.done or i == layout.count - 1]
    failure: list[BaseException] = []

    async def one(index: int) -> None:
        stored_offset, stored_len = layout.stored_span(index)
        plain_offset, plain_len = layout.plain_span(index)
        async with budget.hold(stored_len):
            if failure:
                return
            ask_crc = stored_len <= MAX_CRC64_RANGE_BYTES
            headers, data = await store.get_range(
                blob_name, stored_offset, stored_len, if_match=etag, crc64=ask_crc
            )
            expected_crc = crc64_from_header(headers.get("x-ms-content-crc64")) if ask_crc else None
            done = await writer.write(
                file_id=file_id,
                index=index,
                fd=fd,
                offset_bytes=plain_offset,
                plain_bytes=plain_len,
                data=data,
                content_key=content_key,
                last=index == layout.count - 1,
                crc64=expected_crc,
            )
            received = len(data)
            del data
        if not done.ok:
            raise RangeFailed(done.reason)
        if done.cv is not None:
            state.record(index, done.cv)
        on_bytes(received, plain_len)

    async def guarded(index: int) -> None:
        try:
            await one(index)
        except Exception as exc:  # the first failure is the file's; the rest stop early
            failure.append(exc)

    await asyncio.gather(*(guarded(i) for i in todo))
    if failure:
        raise failure[0]
