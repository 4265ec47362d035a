"""How the driver feeds its workers (pyengine.distributed.dispatch) and how a worker's events
leave for the driver (worker.EventBatch): when a shard goes out, when an event batch goes out,
and what the job's end waits for. A plain fake stands for the Dask client (pure logic only; the
real cluster runs in tests/integration/test_distributed.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyengine import CopyOptions
from pyengine.distributed import dispatch
from pyengine.distributed.dispatch import Dispatcher
from pyengine.distributed.shard import SHARD_LINGER_S, SHARDS_AHEAD, SetUp, WorkItem, file_result
from pyengine.distributed.worker import EVENT_ANSWER_S, EVENT_BATCH, EventBatch
from pyengine.engine.context import JobContext
from pyengine.engine.scan import SourceFile
from pyengine.engine.taskowner import TaskOwner
from pyengine.errors import ClusterError
from pyengine.state.records import FileRecord


class FakeFuture:
    """A Dask future that the test resolves (or never does)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.cancelled = False
        self.fetched = 0
        #: the task's error when it failed on its worker (Dask holds it for the client)
        self.error: BaseException | None = None

    def __await__(self) -> Any:
        self.fetched += 1
        if self.error is not None:  # as Dask's: awaiting a failed task raises its error
            raise self.error
        return self.future.__await__()

    @property
    def status(self) -> str:
        if not self.future.done():
            return "pending"
        if self.error is not None:
            return "error"
        return "cancelled" if self.future.cancelled() else "finished"

    def fail(self, error: BaseException) -> None:
        """The task raised ``error`` on its worker."""
        self.error = error
        self.future.set_result(None)

    def exception(self) -> BaseException | None:
        return self.error

    def add_done_callback(self, fn: Any) -> None:
        self.future.add_done_callback(lambda _: fn(self))

    def release(self) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True
        self.future.cancel()


class FakeClient:
    def __init__(self) -> None:
        self.submitted: list[tuple[Any, FakeFuture]] = []
        self.status = "running"
        self.workers = 1

    def scheduler_info(self) -> dict[str, Any]:
        return {"n_workers": self.workers}

    def submit(self, fn: Any, setup: SetUp, shard: Any, *, key: str, pure: bool) -> FakeFuture:
        future = FakeFuture()
        self.submitted.append((shard, future))
        return future

    def subscribe_topic(self, topic: str, handler: Any) -> None:
        pass

    def unsubscribe_topic(self, topic: str) -> None:
        pass


def item(file_id: int) -> WorkItem:
    src = SourceFile(f"/s/{file_id}.dcm", f"{file_id}.dcm", 1000, 1, 2, 3, 4)
    record = FileRecord(
        file_id=file_id, job_id="j", rel_path=src.rel_path, size_bytes=1000, mtime_ns=1,
        inode=2, device=3, blob_name=src.rel_path, upload_id="u" * 32, block_bytes=1 << 20,
        encrypted=False, state="uploading", acked_blocks={}, ctime_ns=4,
    )  # fmt: skip
    return WorkItem(src, record, 1 << 20, True, None, None, set())


def dispatcher(workers: int = 1) -> tuple[Dispatcher, FakeClient]:
    client = FakeClient()
    setup = SetUp(token="t", job_id="j", dest=None, options=CopyOptions(), env={})  # type: ignore[arg-type]
    ctx = JobContext(source="", dest=None, options=CopyOptions(), on_event=None)  # type: ignore[arg-type]
    d = Dispatcher(client, setup, ctx, workers)
    d.start()
    return d, client


@contextlib.asynccontextmanager
async def owned_dispatcher() -> AsyncIterator[tuple[Dispatcher, FakeClient, TaskOwner]]:
    """A dispatcher inside a job's task owner, which a lost cluster fails."""
    d, client = dispatcher()
    async with TaskOwner() as owner:
        d.ctx.owner = owner
        yield d, client, owner


def quick_no_worker_clock(monkeypatch: Any, seconds: float) -> None:
    monkeypatch.setattr(dispatch, "NO_WORKERS_S", seconds)
    monkeypatch.setattr(dispatch, "NO_WORKERS_POLL_S", 0.01)


def answer(d: Dispatcher, *file_ids: int) -> None:
    """The files' "done" events, as a worker's batch."""
    d._on_events((0.0, [("done", i, file_result(i, "copied")) for i in file_ids]))


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_file_goes_out_in_its_loop_turn_while_no_shard_is_under_way() -> None:
    async def main() -> None:
        d, client = dispatcher()
        sends = [asyncio.ensure_future(d.send(item(i))) for i in (1, 2)]
        await turns()
        # not SHARD_LINGER_S later: the worker would wait for it
        assert [len(shard.items) for shard, _ in client.submitted] == [2]
        answer(d, 1, 2)
        assert [r["status"] for r in await asyncio.gather(*sends)] == ["copied", "copied"]
        await d.stop()

    asyncio.run(main())


def test_files_gather_into_one_shard_while_every_worker_has_shards_ahead() -> None:
    async def main() -> None:
        d, client = dispatcher(workers=2)
        sends = []
        for i in range(SHARDS_AHEAD * 2):  # one shard each: every worker has its shards ahead
            sends.append(asyncio.ensure_future(d.send(item(i))))
            await turns()
        assert len(client.submitted) == SHARDS_AHEAD * 2
        sends += [asyncio.ensure_future(d.send(item(100 + i))) for i in range(3)]
        await turns()
        assert len(client.submitted) == SHARDS_AHEAD * 2  # held to gather company
        await asyncio.sleep(SHARD_LINGER_S * 3)
        assert [len(s.items) for s, _ in client.submitted[SHARDS_AHEAD * 2 :]] == [3]
        answer(d, *range(SHARDS_AHEAD * 2), 100, 101, 102)
        await asyncio.gather(*sends)
        await d.stop()

    asyncio.run(main())


def test_an_answered_shard_sends_the_gathering_files_at_once() -> None:
    async def main() -> None:
        d, client = dispatcher()
        sends = []
        for i in range(SHARDS_AHEAD):
            sends.append(asyncio.ensure_future(d.send(item(i))))
            await turns()
        sends.append(asyncio.ensure_future(d.send(item(50))))
        await turns()
        assert len(client.submitted) == SHARDS_AHEAD
        answer(d, 0)  # the worker finished a shard: it takes the gathering one now
        await turns()
        assert [s.items[0].record.file_id for s, _ in client.submitted] == [
            *range(SHARDS_AHEAD),
            50,
        ]
        answer(d, *range(1, SHARDS_AHEAD), 50)
        await asyncio.gather(*sends)
        await d.stop()

    asyncio.run(main())


def test_the_jobs_end_waits_for_no_shard_whose_files_were_answered() -> None:
    async def main() -> None:
        d, client = dispatcher()
        send = asyncio.ensure_future(d.send(item(1)))
        await turns()
        answer(d, 1)
        await send
        # the shard's own return never comes: its files were all answered by their events
        await asyncio.wait_for(d.stop(), timeout=1.0)
        ((_, future),) = client.submitted
        assert not future.cancelled  # released, not cancelled on the cluster

    asyncio.run(main())


def test_a_shards_return_is_never_fetched_and_a_file_it_left_unanswered_is_lost() -> None:
    async def main() -> None:
        d, client = dispatcher()
        sends = [asyncio.ensure_future(d.send(item(i))) for i in (1, 2)]
        await turns()
        answer(d, 1)  # file 2's event never came
        ((_, future),) = client.submitted
        future.future.set_result(2)
        results = await asyncio.gather(*sends)
        # decided again from the journal by the driver; fetching the return of a shard whose
        # worker died since would have Dask run it again with its old resume state
        assert [r["status"] for r in results] == ["copied", "lost"]
        assert "no answer" in (results[1]["reason"] or "")
        assert future.fetched == 0
        await d.stop()

    asyncio.run(main())


def test_a_shard_that_ended_in_a_cancelled_error_on_its_worker_loses_its_files() -> None:
    async def main() -> None:
        d, client = dispatcher()
        sends = [asyncio.ensure_future(d.send(item(i))) for i in (1, 2)]
        await turns()
        ((_, future),) = client.submitted
        # an engine closed under the shard: the task's error is a CancelledError, which is
        # the shard's news, not a cancellation of this job (its files would wait forever)
        future.fail(asyncio.CancelledError())
        results = await asyncio.wait_for(asyncio.gather(*sends), timeout=5)
        assert [(r["status"], r["reason"]) for r in results] == [("lost", "CancelledError")] * 2
        assert d.shards_lost == 1 and future.fetched == 0
        await d.stop()

    asyncio.run(main())


def test_a_cluster_left_without_workers_fails_the_job_while_files_wait(monkeypatch) -> None:
    quick_no_worker_clock(monkeypatch, 0.2)

    async def main() -> None:
        async with owned_dispatcher() as (d, client, owner):
            sends = [owner.spawn(d.send(item(i))) for i in (1, 2)]
            await turns()
            client.workers = 0  # every worker of the cluster is gone; Dask would wait
            await asyncio.sleep(5)
        pytest.fail(f"the job was not stopped ({sends})")

    with pytest.raises(ClusterError, match="has had no worker for 0 s"):
        asyncio.run(main())


def test_a_cluster_without_workers_while_no_file_waits_is_given_its_full_time(
    monkeypatch,
) -> None:
    quick_no_worker_clock(monkeypatch, 0.3)

    async def main() -> None:
        async with owned_dispatcher() as (d, client, owner):
            client.workers = 0  # an adaptive cluster scaled to zero while nothing was sent
            await asyncio.sleep(0.5)
            owner.spawn(d.send(item(1)))
            await asyncio.sleep(0.1)  # the clock starts with the waiting file, not before
            assert owner.failure is None
            client.workers = 1  # a worker came: the files go on
            await asyncio.sleep(0.5)
            assert owner.failure is None
            ((_, future),) = client.submitted
            future.future.set_result(1)
            await d.stop(wait=False)

    asyncio.run(main())


def test_a_client_that_lost_its_scheduler_stops_the_job_at_once() -> None:
    async def main() -> None:
        async with owned_dispatcher() as (d, client, owner):
            owner.spawn(d.send(item(1)))
            await turns()
            ((_, future),) = client.submitted
            # Dask cancels every future of a client whose scheduler connection dropped
            client.status = "connecting"
            future.cancel()
            await asyncio.sleep(5)
        pytest.fail("the job was not stopped")

    with pytest.raises(ClusterError, match="lost the Dask scheduler"):
        asyncio.run(asyncio.wait_for(main(), timeout=10))


def test_a_done_event_leaves_at_once_from_a_drained_engine_while_acks_wait() -> None:
    async def main() -> None:
        sent: list[list[tuple[Any, ...]]] = []
        busy = False
        batch = EventBatch(sent.append, asyncio.get_running_loop(), busy=lambda: busy)
        ack = ("ack", 1, 0, 1 << 20, 5, b"x" * 16)
        batch.add(ack)
        await turns()
        assert sent == []  # an ack waits for the engine's periodic flush or a file's answer
        batch.add(("done", 1, {}))
        await turns()
        batch.add(("done", 2, {}))
        assert sent == []  # files answered about together travel together ...
        await asyncio.sleep(EVENT_ANSWER_S * 2)  # ... but not EVENT_FLUSH_S later
        assert sent == [[ack, ("done", 1, {}), ("done", 2, {})]]
        for i in range(EVENT_BATCH):
            batch.add(("progress", 3, i))
        assert len(sent) == 2 and len(sent[1]) == EVENT_BATCH  # a full batch leaves at once
        busy = True  # many files in flight: answers wait for the periodic flush
        batch.add(("done", 4, {}))
        await asyncio.sleep(EVENT_ANSWER_S * 2)
        assert len(sent) == 2
        batch.flush()
        assert sent[2] == [("done", 4, {})]

    asyncio.run(main())
