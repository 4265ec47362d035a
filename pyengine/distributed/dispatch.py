"""The driver's side of the shards: files gathered into shards, shards submitted to the cluster,
and the workers' events applied to the driver's journal and report as they arrive.

Each file waits on a future of its own; it is resolved by the file's "done" event, or by its
shard's return value, whichever comes first; a shard that fails (its worker died, Dask re-ran it
and run_shard refused: StaleShard) resolves its unanswered files as "lost", and the driver
(driver.py) decides again from its journal. Events of a file that is no longer waited for are
dropped: its result carried every ack of that attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyengine.distributed.shard import (
    SHARD_BYTES,
    SHARD_FILES,
    SHARD_LINGER_S,
    SetUp,
    Shard,
    WorkItem,
    ack_of,
    file_result,
)
from pyengine.distributed.worker import run_shard
from pyengine.engine.context import JobContext
from pyengine.targets.auth import redact

log = logging.getLogger("pyengine")

#: at the job's end, how long shards whose files are all answered may take to return
SHARD_RETURN_WAIT_S = 5.0


@dataclass
class _Waiting:
    item: WorkItem
    future: asyncio.Future[dict[str, Any]]
    #: block indexes of this attempt already journaled (from events)
    applied: set[int] = field(default_factory=set)


class Dispatcher:
    """Shards out, events and results in."""

    def __init__(self, client: Any, setup: SetUp, ctx: JobContext) -> None:
        self.client = client
        self.setup = setup
        self.ctx = ctx
        self._waiting: dict[int, _Waiting] = {}
        self._open: list[WorkItem] = []
        self._open_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._shards: set[asyncio.Task[None]] = set()
        self.shards_submitted = 0
        self.shards_lost = 0

    def start(self) -> None:
        self.client.subscribe_topic(self.setup.topic, self._on_events)

    async def stop(self, *, wait: bool = True) -> None:
        """Ends the job's shards: with ``wait``, those whose files are all answered may return
        first; the others are cancelled."""
        if self._timer is not None:
            self._timer.cancel()
        if self._shards and wait:  # files answered by their events: the shards' returns follow
            await asyncio.wait(set(self._shards), timeout=SHARD_RETURN_WAIT_S)
        for t in list(self._shards):
            t.cancel()
        if self._shards:
            await asyncio.gather(*self._shards, return_exceptions=True)
        # a closed client has nothing subscribed any more
        with contextlib.suppress(ValueError, RuntimeError):
            self.client.unsubscribe_topic(self.setup.topic)

    async def send(self, item: WorkItem) -> dict[str, Any]:
        """Sends one file version through a shard; its result (shard.file_result)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[item.record.file_id] = _Waiting(item, future)
        self._open.append(item)
        self._open_bytes += item.src.size_bytes
        if len(self._open) >= SHARD_FILES or self._open_bytes >= SHARD_BYTES:
            self._submit()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SHARD_LINGER_S, self._submit)
        try:
            return await future
        finally:
            self._waiting.pop(item.record.file_id, None)

    def _submit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._open, self._open_bytes = self._open, [], 0
        if not items:
            return
        shard = Shard(key=f"pyengine-shard-{uuid.uuid4().hex}", items=items)
        # secrets (connection string, content keys) are arguments; the key names nothing
        future = self.client.submit(run_shard, self.setup, shard, key=shard.key, pure=False)
        self.shards_submitted += 1
        t = asyncio.ensure_future(self._await_shard(future, shard))
        self._shards.add(t)
        t.add_done_callback(self._shards.discard)

    async def _await_shard(self, future: Any, shard: Shard) -> None:
        results: list[dict[str, Any]] = []
        why = ""
        try:
            results = await future
        except asyncio.CancelledError:
            await _cancel_quietly(future)
            raise
        except Exception as e:  # KilledWorker, StaleShard, a closed connection, a bug
            why = f"{type(e).__name__}: {redact(str(e))}"
            self.shards_lost += 1
            log.info("a shard of %d files was lost (%s): retrying its files", len(shard.items), why)
        finally:
            future.release()
        for result in results:
            self._resolve(result)
        for item in shard.items:  # unanswered: the driver decides them again from its journal
            self._resolve(file_result(item.record.file_id, "lost", reason=why or "no result"))

    def _resolve(self, result: dict[str, Any]) -> None:
        waiting = self._waiting.get(result["file_id"])
        if waiting is None or waiting.future.done():
            return
        for ack in result["acks"]:
            self._apply_ack(waiting, ack)
        waiting.future.set_result(result)

    # --- events ----------------------------------------------------------------------------

    def _on_events(self, event: tuple[float, Any]) -> None:
        _, batch = event
        try:
            for e in batch:
                self._apply(e)
        except Exception as exc:  # a journal that cannot be written: the job aborts
            if self.ctx.owner is None:
                raise
            self.ctx.owner.fail(exc)

    def _apply(self, e: list[Any]) -> None:
        kind, file_id = e[0], e[1]
        waiting = self._waiting.get(file_id)
        if waiting is None or waiting.future.done():
            return
        if kind == "ack":
            self._apply_ack(waiting, e[2:])
        elif kind == "committing":
            assert self.ctx.journal is not None
            self.ctx.journal.mark_committing(file_id, flush=False)
        elif kind == "progress":
            self.ctx.emit("progress", path=waiting.item.src.rel_path, bytes=e[2])
        elif kind == "done":
            self._resolve(e[2])

    def _apply_ack(self, waiting: _Waiting, ack: Any) -> None:
        index, block = ack_of(tuple(ack))
        if index in waiting.applied:
            return
        waiting.applied.add(index)
        record = waiting.item.record
        self.ctx.report.blocks_sent += 1
        if self.ctx.journal is not None:
            self.ctx.journal.ack_block(
                record.file_id,
                index,
                length_bytes=block.length_bytes,
                crc64=block.crc64,
                xxh3_128=block.xxh3_128,
            )


async def _cancel_quietly(future: Any) -> None:
    """Cancels a shard's task on the cluster (asynchronous client: a coroutine)."""
    with contextlib.suppress(Exception):
        cancelled = future.cancel()
        if asyncio.iscoroutine(cancelled):
            await cancelled
