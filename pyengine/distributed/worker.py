"""A Dask worker's side of a distributed copy: one engine per worker process and job.

The engine is the in-process one minus its bookkeeping: a native pipeline (threads and
memory_cap_bytes are per worker), the job's target, and send.py's Sender, which reads, sends
and commits each file under the same ordering rules as in one process. What the Sender would
journal goes back to the driver instead (RelayJournal: acks, commit points), in event batches
on Dask's event log, and so does each file's result (a "done" event): the shard's return value
is only its number of files, which the driver never fetches (dispatch.py says why).

A shard runs once: Dask re-runs a task whose worker died, with the arguments it was first given,
and those name blocks to resume as they were then. run_shard refuses such a re-run (StaleShard),
and the driver submits the shard anew, built from its journal as it is now.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyengine import _core
from pyengine.distributed.shard import SetUp, Shard, WorkItem, file_result
from pyengine.engine import metadata_names as mn
from pyengine.engine.context import FileTask, JobContext
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.scan import display_path
from pyengine.engine.send import Sender
from pyengine.engine.taskowner import TaskOwner
from pyengine.errors import PyEngineError
from pyengine.targets.auth import redact, resolve_credential
from pyengine.targets.open import open_target
from pyengine.targets.profile import choose_profile

log = logging.getLogger("pyengine")

#: events sent in one batch at most; a batch also leaves every EVENT_FLUSH_S (see EventBatch)
EVENT_BATCH = 256
EVENT_FLUSH_S = 0.05
#: ... and this long after a file's answer ("done") when the engine has drained: at most this
#: many files left in flight (see EventBatch)
EVENT_ANSWER_S = 0.005
DRAINED_FILES = 8

#: this process's engines by job token (each opened once, on the worker's event loop)
_ENGINES: dict[str, asyncio.Future[WorkerEngine]] = {}


class StaleShard(RuntimeError):
    """Dask re-ran a shard after its worker died: the driver builds it anew from its journal."""


class EngineStopped(RuntimeError):
    """The worker's engine failed while it ran a shard (a task of the engine raised): the
    shard's files are lost, and the driver sends them again, on an engine opened anew."""


async def run_shard(setup: SetUp, shard: Shard) -> int:
    """The Dask task: sends a shard's files on this process's engine; how many it answered
    (their results went to the driver as events). A coroutine: Dask runs it on the worker's
    own event loop, where the engine runs too (WorkerEngine says why)."""
    from distributed import get_client, get_worker

    if setup.reruns:
        # scheduler metadata marks a shard as started: a second start is Dask's own retry
        client = get_client()
        seen_key = [setup.topic, shard.key]
        if await maybe_await(client.get_metadata(seen_key, default=None)) is not None:
            raise StaleShard(f"shard {shard.key} was started before (its worker died)")
        await maybe_await(client.set_metadata(seen_key, 1))
    engine = await _engine(setup, get_worker())
    return await engine.run(shard)


async def maybe_await(value: Any) -> Any:
    """A Dask client's answer: awaited when the client is asynchronous (it is on the worker's
    loop), as is when it is not."""
    return await value if inspect.isawaitable(value) else value


async def _engine(setup: SetUp, worker: Any) -> WorkerEngine:
    """This process's engine of the job, opened on first use (once, whoever asks first; an
    engine that failed to open or stopped is opened anew by the next shard)."""
    opening = _ENGINES.get(setup.token)
    if opening is None or _unusable(opening):
        opening = _ENGINES[setup.token] = asyncio.ensure_future(WorkerEngine.open(setup, worker))
    # shielded: a cancelled shard does not cancel an opening other shards wait for
    return await asyncio.shield(opening)


def _unusable(opening: asyncio.Future[WorkerEngine]) -> bool:
    if not opening.done():
        return False
    if opening.cancelled() or opening.exception() is not None:
        return True
    engine = opening.result()
    return engine.broken or engine.owner.failure is not None


async def open_engine(setup: SetUp, dask_worker: Any = None) -> bool:
    """Client.run on every worker as a job starts (Dask passes ``dask_worker``): the engine
    (its connections and pipeline) opens while the driver scans and decides the first files,
    not when the first shard comes. True once open; a failure is left for the first shard to
    meet and report."""
    try:
        await _engine(setup, dask_worker)
    except Exception:  # the first shard opens it again and reports why
        return False
    return True


def warm_up() -> int:
    """Client.run on every worker before a job: the engine's imports (aiohttp, the native core,
    the SDK's pieces) are paid while the cluster starts, not by the first shard. The pid."""
    import pyengine.engine.job  # noqa: F401  (the modules a shard needs, loaded once)

    return os.getpid()


async def close_engine(token: str) -> dict[str, float] | None:
    """Closes this process's engine of a job (Client.run at the job's end): its target's
    retry figures and this process's CPU seconds while it was open, or None when this process
    had none."""
    opening = _ENGINES.pop(token, None)
    if opening is None:
        return None
    try:
        engine = await opening
    except Exception:  # it never opened: nothing to close
        return None
    return await engine.close()


@dataclass
class _FileState:
    rel_path: str
    acks: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    #: progress bytes not sent yet (WorkerEngine.flush_events, or the file's result)
    progress: int = 0
    #: (status, reason, etag, blake3_hex) once the Sender counted the file
    outcome: tuple[str, str | None, str | None, str | None] | None = None


class EventBatch:
    """A worker engine's events on their way to the driver, in batches (one message each): a
    batch leaves at EVENT_BATCH events, when the engine flushes (every EVENT_FLUSH_S, before a
    commit), and EVENT_ANSWER_S after a file's answer once the engine has drained (``busy()``
    is false: its last files, a small job): the driver waits for those answers (the job's end,
    its window of files). While the engine is busy, answers wait for the periodic flush: each
    batch is a message to the scheduler, which relays it to the driver (encoded and decoded on
    each hop), so fewer, fuller batches cost the worker and the driver less a file."""

    def __init__(
        self,
        send: Callable[[list[tuple[Any, ...]]], None],
        loop: asyncio.AbstractEventLoop,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._send = send
        self._loop = loop
        self._busy = busy
        self._events: list[tuple[Any, ...]] = []
        self._soon = False

    def add(self, event: tuple[Any, ...]) -> None:
        self._events.append(event)
        if len(self._events) >= EVENT_BATCH:
            self.flush()
        elif event[0] == "done" and not self._soon and not self._busy():
            # EVENT_ANSWER_S, not EVENT_FLUSH_S, later: files answered about together travel
            # together
            self._soon = True
            self._loop.call_later(EVENT_ANSWER_S, self.flush)

    def flush(self) -> None:
        self._soon = False
        if not self._events:
            return
        batch, self._events = self._events, []
        self._send(batch)


class RelayJournal:
    """What the Sender journals, relayed to the driver's journal as events."""

    def __init__(self, engine: WorkerEngine) -> None:
        self.engine = engine

    def mark_uploading(self, file_id: int) -> None:
        pass  # the driver marked it when it submitted the file

    def ack_block(
        self, file_id: int, index: int, *, length_bytes: int, crc64: int, xxh3_128: bytes
    ) -> None:
        ack = (index, length_bytes, crc64, bytes(xxh3_128))
        state = self.engine.files.get(file_id)
        if state is not None:
            state.acks.append(ack)
        self.engine.event(("ack", file_id, *ack))

    def mark_committing(self, file_id: int, *, flush: bool = True) -> None:
        self.engine.event(("committing", file_id))

    async def aflush(self) -> None:
        # before a commit request: the driver hears of the acks and the commit point first (it
        # does not wait for them to be durable: a commit the driver never heard of is found by
        # its upload id in the blob's metadata, as after a kill in one process)
        self.engine.flush_events()


class RelayContext(JobContext):
    """The Sender's context in a worker: outcomes and progress go to the engine's files."""

    engine: WorkerEngine | None = None
    #: the driver has a listener: progress is summed per file (WorkerEngine.flush_events)
    progress: bool = True

    def emit(self, kind: str, path: str | None = None, **kw: Any) -> None:
        engine = self.engine
        if kind == "progress" and self.progress and engine is not None and path is not None:
            file_id = engine.by_path.get(path)
            state = engine.files.get(file_id) if file_id is not None else None
            if state is not None:
                state.progress += int(kw.get("bytes") or 0)

    async def outcome(self, rel_path: str, status: str, **kw: Any) -> None:  # type: ignore[override]
        engine, record = self.engine, kw.get("record")
        if engine is None or record is None:
            return
        state = engine.files.get(record.file_id)
        if state is not None:
            state.outcome = (status, kw.get("reason"), kw.get("etag"), kw.get("blake3_hex"))


class WorkerSender(Sender):
    """send.py's Sender, whose commit of a file sent again after a lost worker is conditional
    (WorkItem.commit_if): refused because the lost worker's commit landed meanwhile, the
    file counts as committed by it when the blob holds this version's upload id."""

    commit_if: dict[int, dict[str, str]]

    def blob_properties(
        self, task: FileTask
    ) -> tuple[str | None, dict[str, str] | None, dict[str, str]]:
        tier, tags, headers = super().blob_properties(task)
        condition = self.commit_if.get(task.record.file_id)
        if condition:
            headers = {**headers, **condition}  # lowercase: the SharedKey signer reads them so
        return tier, tags, headers

    async def commit(self, task: FileTask) -> str:
        try:
            return await super().commit(task)
        except PyEngineError:
            if not self.commit_if.get(task.record.file_id) or self.ctx.store is None:
                raise
            props = await self.ctx.store.get_properties(task.record.blob_name)
            ours = props is not None and (
                meta_get(props.metadata, mn.UPLOAD_ID) == task.record.upload_id
            )
            if props is None or not ours:
                raise
            return props.etag


class WorkerEngine:
    """A job's engine in one worker process, opened once and kept for the job's shards. It runs
    on the Dask worker's own event loop, as the shards do (run_shard is a coroutine): an engine
    in a thread of its own made two busy loops in one process take turns at the GIL, and its
    worker took as much CPU a file as a whole job in one process."""

    def __init__(self, setup: SetUp, worker: Any) -> None:
        self.setup = setup
        self.broken = False
        self.files: dict[int, _FileState] = {}
        self.by_path: dict[str, int] = {}
        self._stats: dict[str, float] = {}
        self._shard_tasks: set[asyncio.Task[Any]] = set()
        self.loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._stop = asyncio.Event()
        self._batch = EventBatch(
            lambda batch: worker.log_event(setup.topic, batch),
            self.loop,
            busy=lambda: len(self.files) > DRAINED_FILES,
        )
        self._serving = asyncio.ensure_future(self._main())

    @classmethod
    async def open(cls, setup: SetUp, worker: Any) -> WorkerEngine:
        engine = cls(setup, worker)
        await engine._ready  # raises what stopped the engine from opening
        return engine

    # --- the engine's lifetime -------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._serve()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            elif not isinstance(e, asyncio.CancelledError):
                log.warning("pyengine worker engine stopped: %s", redact(str(e)))
        finally:
            self.broken = True  # _serve returns only after it set _ready

    async def _serve(self) -> None:
        setup, opts = self.setup, self.setup.options
        cpu_start = time.process_time()
        env = {**os.environ, **setup.env}
        credential = resolve_credential(setup.dest, opts.connection_string, env)
        profile = choose_profile(opts.target, urlsplit(setup.dest.account_url).hostname or "")
        async with open_target(setup.dest, credential, opts, profile=profile) as target:
            with _core.Pipeline(opts.threads, opts.memory_cap_bytes, opts.direct_io) as pipeline:
                ctx = RelayContext(source="", dest=setup.dest, options=opts, on_event=None)
                ctx.progress = setup.progress
                ctx.engine = self
                ctx.store = target
                ctx.journal = RelayJournal(self)  # type: ignore[assignment]
                ctx.report.job_id = setup.job_id
                self.sender = WorkerSender(ctx)
                self.sender.commit_if = {}
                self.sender.pipeline = pipeline
                self.sender.profile = profile
                self._window = asyncio.Semaphore(max(8, opts.max_concurrency * 2))
                self.loop.add_reader(pipeline.fileno(), self.sender.on_pipeline_ready)
                try:
                    async with TaskOwner() as owner:
                        ctx.owner = self.owner = owner
                        flusher = owner.spawn(self._flush_periodically())
                        self._ready.set_result(None)
                        await self._stop.wait()
                        flusher.cancel()
                finally:
                    ctx.owner = None
                    self.loop.remove_reader(pipeline.fileno())
                    self.flush_events()
            stats = target.stats
            self._stats = {
                "retries": stats.retries,
                "throttled_s": stats.throttled_s,
                "stalls": stats.stalls,
                "cpu_s": time.process_time() - cpu_start,
            }

    async def run(self, shard: Shard) -> int:
        """Runs a shard on the engine and waits for it."""
        if self.owner.failure is not None or self.owner.aborting:
            # failed after this shard found it usable (_unusable): not a bare RuntimeError
            raise self._engine_stopped()
        # owned like every task of the engine: a failure of the engine ends the shard too
        t = self.owner.spawn(self._run_shard(shard), name=shard.key)
        self._shard_tasks.add(t)
        t.add_done_callback(self._shard_tasks.discard)
        try:
            return await t
        except asyncio.CancelledError:
            failure = self.owner.failure
            if failure is None or not t.cancelled():
                raise  # the shard itself was cancelled (the job stopped)
            # the engine's failure cancelled the shard: the driver reads why, not a bare
            # CancelledError
            raise self._engine_stopped() from None

    def _engine_stopped(self) -> EngineStopped:
        """The shard's error, once the engine's acks and results are on their way (the driver
        journals them before it hears of the lost shard)."""
        self.flush_events()
        failure = self.owner.failure
        why = f"{type(failure).__name__}: {redact(str(failure))}" if failure else "closing"
        return EngineStopped(f"the worker's engine stopped ({why})")

    async def close(self) -> dict[str, float]:
        """Ends the engine: shards still running (a stopped job) are cancelled."""
        for t in list(self._shard_tasks):
            t.cancel()
        self._stop.set()
        await asyncio.wait([self._serving], timeout=60)
        return self._stats

    # --- shards and files ------------------------------------------------------------------

    async def _run_shard(self, shard: Shard) -> int:
        results = await asyncio.gather(*(self._one(item) for item in shard.items))
        self.flush_events()  # before the task ends: the driver hears of every file first
        return len(results)

    async def _one(self, item: WorkItem) -> dict[str, Any]:
        async with self._window:
            task = item.to_task()
            file_id, rel_path = item.record.file_id, item.src.rel_path
            state = self.files[file_id] = _FileState(rel_path)
            self.by_path[rel_path] = file_id
            if item.commit_if:
                self.sender.commit_if[file_id] = item.commit_if
            reason: str | None = None
            try:
                then = await self.sender._send_version(task)
            except PyEngineError as e:  # as copy_file: this file fails, the shard goes on
                then, reason = "failed", e.reason
            except (OSError, ValueError, RuntimeError) as e:
                log.debug("unexpected error on %s", display_path(rel_path), exc_info=True)
                then, reason = "failed", f"unexpected error: {type(e).__name__}: {redact(str(e))}"
            finally:
                self.files.pop(file_id, None)
                self.by_path.pop(rel_path, None)
                self.sender.commit_if.pop(file_id, None)
            etag = blake3_hex = None
            if then is None and state.outcome is not None:
                then, reason, etag, blake3_hex = state.outcome
            result = file_result(
                file_id,
                then or "failed",
                reason=reason,
                etag=etag,
                blake3_hex=blake3_hex,
                acks=state.acks,
                blocks_resumed=max(0, len(task.acked) - len(state.acks)),
                progress_bytes=state.progress,
            )
            self.event(("done", file_id, result))
            return result

    # --- events to the driver --------------------------------------------------------------

    def event(self, event: tuple[Any, ...]) -> None:
        self._batch.add(event)

    def flush_events(self) -> None:
        """Sends the events waiting, with each file's progress since its last flush."""
        for file_id, state in self.files.items():
            if state.progress:
                self._batch.add(("progress", file_id, state.progress))
                state.progress = 0
        self._batch.flush()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(EVENT_FLUSH_S)
            self.flush_events()
