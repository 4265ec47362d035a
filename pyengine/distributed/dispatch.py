"""The driver's side of the shards: files gathered into shards, shards submitted to the cluster,
and the workers' events applied to the driver's journal and report as they arrive.

Each file waits on a future of its own; it is resolved by the file's "done" event. A shard that
ends with files unanswered (its worker died, Dask re-ran it and run_shard refused: StaleShard;
or an event lost on the way) resolves them as "lost", and the driver (driver.py) decides again
from its journal. Events of a file that is no longer waited for are dropped: its "done" event
carried every ack of that attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyengine.distributed.cluster import worker_count
from pyengine.distributed.shard import (
    SHARD_BYTES,
    SHARD_FILES,
    SHARD_LINGER_S,
    SHARDS_AHEAD,
    SetUp,
    Shard,
    WorkItem,
    ack_of,
    file_result,
)
from pyengine.distributed.worker import maybe_await, run_shard
from pyengine.engine.context import JobContext
from pyengine.errors import ClusterError
from pyengine.targets.auth import redact

log = logging.getLogger("pyengine")

#: at the job's end, how long shards whose files are all answered may take to return
SHARD_RETURN_WAIT_S = 5.0
#: a cluster with no worker this long, while files wait, fails the job (Dask would wait for a
#: worker forever); how often the client's view of the cluster is read (Dask refreshes it every
#: 2 s)
NO_WORKERS_S = 60.0
NO_WORKERS_POLL_S = 1.0


@dataclass
class _Waiting:
    item: WorkItem
    future: asyncio.Future[dict[str, Any]]
    #: the key of the shard that carries this attempt ("" until it is submitted)
    shard_key: str = ""
    #: block indexes of this attempt already journaled (from events)
    applied: set[int] = field(default_factory=set)


class Dispatcher:
    """Shards out, events (acks, commit points, results) in."""

    def __init__(self, client: Any, setup: SetUp, ctx: JobContext, workers: int = 1) -> None:
        self.client = client
        self.setup = setup
        self.ctx = ctx
        self.workers = workers
        self._waiting: dict[int, _Waiting] = {}
        self._open: list[WorkItem] = []
        self._open_bytes = 0
        self._timer: asyncio.Handle | None = None
        #: shard key -> its files not answered yet (a shard with none left is not counted)
        self._unanswered: dict[str, int] = {}
        self._soon = False
        #: the tasks awaiting the shards' returns, and their shards' keys
        self._shards: dict[asyncio.Task[None], str] = {}
        self.shards_submitted = 0
        self.shards_lost = 0
        self._watch: asyncio.Future[None] | None = None
        #: the scheduler's address, for the error that stops the job when it is gone
        self.where = str(getattr(getattr(client, "scheduler", None), "address", "") or "Dask")

    def start(self) -> None:
        self.client.subscribe_topic(self.setup.topic, self._on_events)
        self._watch = asyncio.ensure_future(self._watch_workers())

    async def _watch_workers(self) -> None:
        """Fails the job when its cluster has had no worker for NO_WORKERS_S while shards
        wait (every worker of a --scheduler cluster gone; the embedded one's nannies restart
        theirs): the journal keeps what was acknowledged, and a re-run resumes it."""
        loop = asyncio.get_running_loop()
        since: float | None = None
        while True:
            await asyncio.sleep(NO_WORKERS_POLL_S)
            try:
                running = self.client.status == "running"
                workers = worker_count(self.client.scheduler_info()) if running else 0
            except Exception as e:  # a client closing under it: _await_shard reports that
                log.debug("cannot read the cluster's workers: %s", redact(str(e)))
                continue
            if not running or workers or not self._unanswered:
                since = None  # a client without its scheduler is _await_shard's to report
                continue
            since = loop.time() if since is None else since
            if self._unanswered and loop.time() - since >= NO_WORKERS_S:
                self._cluster_lost(f"the Dask cluster has had no worker for {NO_WORKERS_S:.0f} s")
                return

    async def stop(self, *, wait: bool = True) -> None:
        """Ends the job's shards: with ``wait``, those with files not answered yet may end
        first; the others are cancelled. A shard whose files were all answered by their events
        is not waited for: it has done all it will do (the engines' close, driver.py, comes
        after its last event, when it has returned on its worker)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        busy = {t for t, key in self._shards.items() if key in self._unanswered}
        if busy and wait:
            await asyncio.wait(busy, timeout=SHARD_RETURN_WAIT_S)
        for t in list(self._shards):
            t.cancel()
        if self._shards:
            await asyncio.gather(*list(self._shards), return_exceptions=True)
        # a closed client (ClosedClientError) has nothing subscribed any more
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self.setup.topic)

    async def send(self, item: WorkItem) -> dict[str, Any]:
        """Sends one file version through a shard; its result (shard.file_result)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[item.record.file_id] = _Waiting(item, future)
        self._open.append(item)
        self._open_bytes += item.src.size_bytes
        if len(self._open) >= SHARD_FILES or self._open_bytes >= SHARD_BYTES:
            self._submit()
        elif self._starved():
            self._submit_soon()
        elif self._timer is None:
            self._timer = loop.call_later(SHARD_LINGER_S, self._submit)
        try:
            return await future
        finally:
            self._waiting.pop(item.record.file_id, None)

    def _starved(self) -> bool:
        """Fewer shards under way than SHARDS_AHEAD per worker: one more would be started (or
        queued right behind a running one) at once."""
        return len(self._unanswered) < SHARDS_AHEAD * self.workers

    def _submit_soon(self) -> None:
        """A worker waits for files: the open shard leaves once this turn of the loop has added
        what it has (files decided in the same turn travel together), not SHARD_LINGER_S later."""
        if self._soon:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._soon = True
        self._timer = asyncio.get_running_loop().call_soon(self._submit)

    def _submit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = False
        items, self._open, self._open_bytes = self._open, [], 0
        if not items:
            return
        shard = Shard(key=f"pyengine-shard-{uuid.uuid4().hex}", items=items)
        self._unanswered[shard.key] = len(items)
        for item in items:
            waiting = self._waiting.get(item.record.file_id)
            if waiting is not None:
                waiting.shard_key = shard.key
        why = ""
        if self.client.status != "running":  # reconnecting or closing: the shard would wait
            why = f"the client is {self.client.status}"
            self._cluster_lost(f"lost the Dask scheduler ({why})")
        else:
            try:
                # secrets (connection string, content keys) are arguments; the key names nothing
                future = self.client.submit(run_shard, self.setup, shard, key=shard.key, pure=False)
            except Exception as e:  # a loop callback: the files hear of it, never the loop
                why = _reason(e)
                if self.client.status != "running":
                    self._cluster_lost(f"lost the Dask scheduler ({why})")
        if why:
            for item in items:
                self._resolve(file_result(item.record.file_id, "lost", reason=why))
            self._unanswered.pop(shard.key, None)
            return
        self.shards_submitted += 1
        t = asyncio.ensure_future(self._await_shard(future, shard))
        self._shards[t] = shard.key
        t.add_done_callback(self._forget)

    def _forget(self, t: asyncio.Task[None]) -> None:
        self._shards.pop(t, None)

    async def _await_shard(self, future: Any, shard: Shard) -> None:
        why = ""
        try:
            await _ended(future)
            if future.status == "error":
                # the shard's error as an object, never raised here: a worker's task that
                # ended in a CancelledError (an engine closed under it) must not read as this
                # job's own cancellation, which would leave the shard's files unanswered
                why = _reason(await maybe_await(future.exception()))
            # A finished shard's return is never fetched. Its files were answered by their
            # events, which reach this process before its end does (one ordered stream from
            # the worker through the scheduler); and fetching a result whose worker has died
            # since makes Dask compute the shard again, with the resume state it was first
            # given (the embedded cluster has no re-run check: cluster.Cluster.reruns).
        except asyncio.CancelledError:
            if shard.key in self._unanswered:  # else it has done all it will do: released
                await _cancel_quietly(future)
            raise
        except Exception as e:  # a closed connection, a bug
            why = _reason(e)
        finally:
            future.release()
        unanswered = shard.key in self._unanswered  # else it has done all it will do
        if unanswered and future.status == "cancelled" and self.client.status != "running":
            # Dask cancels every future of a client that lost its scheduler, and a scheduler
            # that comes back knows none of them: the job stops here, resumable, instead of
            # sending the files again into a connection that may never return
            self._cluster_lost(f"lost the Dask scheduler (the client is {self.client.status})")
        if why:  # KilledWorker, StaleShard, EngineStopped, ...
            self.shards_lost += 1
            log.info("a shard of %d files was lost (%s): retrying its files", len(shard.items), why)
        for item in shard.items:  # unanswered: the driver decides them again from its journal
            reason = why or f"no answer (its shard {future.status})"
            self._resolve(file_result(item.record.file_id, "lost", reason=reason))
        self._unanswered.pop(shard.key, None)

    def _cluster_lost(self, what: str) -> None:
        """The job stops (its task owner fails it): its cluster cannot take shards any more."""
        error = ClusterError(
            self.where,
            f"{what}: the job stops; run it again to resume it (what was acknowledged is kept)",
        )
        if self.ctx.owner is not None:
            self.ctx.owner.fail(error)
        else:  # no file is being sent: nothing waits to be told
            log.warning("%s", error.one_line())

    def _resolve(self, result: dict[str, Any]) -> None:
        waiting = self._waiting.get(result["file_id"])
        if waiting is None or waiting.future.done():
            return
        for ack in result["acks"]:
            self._apply_ack(waiting, ack)
        if result.get("progress_bytes"):  # a file done between two flushes of its worker
            path, done = waiting.item.src.rel_path, result["progress_bytes"]
            self.ctx.emit("progress", path=path, bytes=done)
        waiting.future.set_result(result)
        left = self._unanswered.get(waiting.shard_key)
        if left is None:
            return
        if left > 1:
            self._unanswered[waiting.shard_key] = left - 1
            return
        del self._unanswered[waiting.shard_key]
        if self._open and self._starved():  # a lingering shard goes to the idle worker now
            self._submit_soon()

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


def _reason(error: BaseException | None) -> str:
    """A lost shard's reason, one line (never empty: the files' retry says why)."""
    if error is None:
        return "no error given"
    text = redact(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _cancel_quietly(future: Any) -> None:
    """Cancels a shard's task on the cluster (asynchronous client: a coroutine)."""
    with contextlib.suppress(Exception):
        cancelled = future.cancel()
        if asyncio.iscoroutine(cancelled):
            await cancelled


async def _ended(future: Any) -> None:
    """Waits until a shard's task has ended (finished, failed or cancelled), fetching nothing;
    Dask calls the callback from a thread of its own."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not ended.done():
            ended.set_result(None)

    def on_end(_: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the job's loop has closed meanwhile
            loop.call_soon_threadsafe(settle)

    future.add_done_callback(on_end)
    await ended
