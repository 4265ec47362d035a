"""Faults injected inside the engine: each fails the job loudly or is contained, never swallowed,
never a hang, and nothing of the job runs after it returns.

The faults are raised where they would really arise (the journal's group commit, the event
listener, a cancellation while Put Block requests are in flight); the destination is a real
Azurite and outcomes are read back with the official SDK. The TaskOwner tests at the end are unit
tests of pure asyncio logic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import cli
from pyengine.engine import job as engine_job
from pyengine.engine.taskowner import TaskOwner
from pyengine.errors import JournalError
from pyengine.state.journal import _SQL_ACK, Journal
from pyengine.targets.azure_blob import BlobStore

MiB = 1024 * 1024


def make_tree(root: Path, *, small: int = 12, big_bytes: int = 9 * MiB + 5) -> dict[str, bytes]:
    files = {f"d{i % 3}/s{i:02d}.dcm": os.urandom(1000 + 37 * i) for i in range(small)}
    files["big.dcm"] = os.urandom(big_bytes)  # several 4 MiB blocks: acks, a block list
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def options(tmp_path: Path, azurite: Any, **kw: Any) -> pyengine.CopyOptions:
    return pyengine.CopyOptions(
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "jobs.sqlite"),
        block_bytes=4 * MiB,
        threads=2,
        max_concurrency=4,
        memory_cap_bytes=32 * MiB,
        **kw,
    )


def blobs(azurite: Any, container: str) -> dict[str, bytes]:
    name = container.rstrip("/").rsplit("/", 1)[1]
    with ContainerClient.from_connection_string(azurite.connection_string, name) as cc:
        return {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}


def _os_threads() -> int:
    """Threads of this process, native ones (the core's readers) included."""
    return len(os.listdir("/proc/self/task"))


def run_leaving_nothing(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """asyncio.run(main()), then: no task of the job is left when main returns (checked inside
    the loop), and no thread of it outlives the run (Python or native)."""
    threads_before = {t.ident for t in threading.enumerate()}
    os_threads_before = _os_threads()

    async def checked() -> Any:
        result = await main()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return result

    result = asyncio.run(checked())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        _os_threads() > os_threads_before
        or {t.ident for t in threading.enumerate()} - threads_before
    ):
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert not left, left
    assert _os_threads() <= os_threads_before
    return result


# --- a journal that cannot be written -------------------------------------------------------


@pytest.mark.integration
def test_journal_write_failure_fails_the_job_runs_no_deletion_and_a_rerun_completes(
    tmp_path: Path, azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    name = container.rstrip("/").rsplit("/", 1)[1]
    with ContainerClient.from_connection_string(azurite.connection_string, name) as cc:
        # no source file: --delete-destination removes it, but only after a sound run
        cc.upload_blob("orphan.dcm", b"left from an older migration")
    journal = tmp_path / "jobs.sqlite"
    argv = [
        "copy", str(src), container, "--connection-string", azurite.connection_string,
        "--journal", str(journal), "--block-size", "4", "--threads", "2",
        "--delete-destination",
    ]  # fmt: skip

    real_write = Journal._write

    def disk_full_at_the_first_ack(self: Journal, ops: list[tuple[str, Any]]) -> None:
        # what Journal._write raises for SQLITE_FULL, at the first group commit holding acks
        if any(sql == _SQL_ACK for sql, _ in ops):
            raise JournalError(self.path, "cannot write journal: database or disk is full")
        real_write(self, ops)

    monkeypatch.setattr(Journal, "_write", disk_full_at_the_first_ack)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {journal}: cannot write journal: database or disk is full"], err
    assert "orphan.dcm" in blobs(azurite, container)  # no deletion after a failed journal
    with Journal.open(journal) as j:
        (job,) = j.list_jobs()
    assert job.status == "running"  # resumable

    monkeypatch.setattr(Journal, "_write", real_write)
    assert cli.main(argv) == 0, capsys.readouterr().err
    got = blobs(azurite, container)
    assert {k: v for k, v in got.items() if k != "orphan.dcm"} == files
    with Journal.open(journal) as j:
        (again,) = j.list_jobs()
    assert again.job_id == job.job_id and again.status == "completed"


@pytest.mark.integration
def test_a_failed_group_commit_aborts_the_copy_with_journal_error_even_if_later_ones_work(
    tmp_path: Path, azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_tree(src, small=20)
    # the periodic flush commits first, long before the job's last flush
    monkeypatch.setattr(engine_job, "JOURNAL_FLUSH_S", 0.01)
    real_write = Journal._write
    failures = 0

    def first_group_commit_fails(self: Journal, ops: list[tuple[str, Any]]) -> None:
        nonlocal failures
        if failures == 0 and not any(" jobs " in sql for sql, _ in ops):  # not a job row
            failures += 1
            raise JournalError(self.path, "cannot write journal: disk I/O error")
        real_write(self, ops)

    async def main() -> None:
        # The lost batch held acks and state changes: the job must end with the error, not
        # finish as if they had been recorded (the periodic flush's error was dropped).
        with pytest.raises(JournalError, match="disk I/O error"):
            await asyncio.wait_for(pyengine.copy(src, container, options(tmp_path, azurite)), 30)

    monkeypatch.setattr(Journal, "_write", first_group_commit_fails)
    run_leaving_nothing(main)
    assert failures == 1


# --- a listener that raises -----------------------------------------------------------------


@pytest.mark.integration
def test_listener_errors_are_counted_logged_once_and_the_job_completes(
    tmp_path: Path, azurite: Any, container: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    calls = 0

    def broken_listener(ev: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("listener bug")

    async def main() -> Any:
        # a lost completion would hang the job: a time limit turns that into a failure
        return await asyncio.wait_for(
            pyengine.copy(src, container, options(tmp_path, azurite), on_event=broken_listener),
            30,
        )

    with caplog.at_level(logging.WARNING, logger="pyengine"):
        report = run_leaving_nothing(main)
    assert report.files_copied == len(files) and report.files_failed == 0
    assert calls > len(files)  # every event was delivered (and raised)
    assert report.listener_errors == calls
    warnings = [r for r in caplog.records if "event listener raised" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is not None
    assert blobs(azurite, container) == files


# --- an abort while blocks are in flight ----------------------------------------------------


@pytest.mark.integration
def test_cancelling_a_copy_mid_upload_cancels_blocks_in_flight_and_leaves_nothing_running(
    tmp_path: Path, azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    files = make_tree(src, small=3, big_bytes=24 * MiB)
    real_put_block = BlobStore.put_block
    in_flight: list[int] = []

    async def slow_put_block(self: BlobStore, *args: Any, **kw: Any) -> Any:
        in_flight.append(1)
        await asyncio.sleep(30)  # held until the job is cancelled
        return await real_put_block(self, *args, **kw)

    async def main() -> None:
        job = asyncio.ensure_future(pyengine.copy(src, container, options(tmp_path, azurite)))
        deadline = time.monotonic() + 20
        while len(in_flight) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(in_flight) >= 2, "no block reached Put Block"
        job.cancel()
        done, _ = await asyncio.wait({job}, timeout=10)
        assert job in done and job.cancelled()

    monkeypatch.setattr(BlobStore, "put_block", slow_put_block)
    run_leaving_nothing(main)
    assert "big.dcm" not in blobs(azurite, container)

    # the aborted job is resumable: a re-run completes it
    monkeypatch.setattr(BlobStore, "put_block", real_put_block)
    report = asyncio.run(pyengine.copy(src, container, options(tmp_path, azurite)))
    assert report.ok and report.files_copied == len(files)
    assert blobs(azurite, container) == files


# --- a slow commit never stalls the loop ----------------------------------------------------


@pytest.mark.integration
def test_a_slow_journal_commit_never_stalls_transfers(
    tmp_path: Path, azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    files = make_tree(src, small=40)
    commit_s = 0.5
    real_write = Journal._write
    commits = 0

    def slow_write(self: Journal, ops: list[tuple[str, Any]]) -> None:
        nonlocal commits
        commits += 1
        time.sleep(commit_s)  # an fsync on a busy disk
        real_write(self, ops)

    monkeypatch.setattr(Journal, "_write", slow_write)
    monkeypatch.setattr(engine_job, "JOURNAL_FLUSH_S", 0.05)  # commits back to back
    worst_lag_s = 0.0

    async def main() -> Any:
        nonlocal worst_lag_s
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal worst_lag_s
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                worst_lag_s = max(worst_lag_s, now - last - 0.01)
                last = now

        beat = asyncio.ensure_future(heartbeat())
        try:
            return await pyengine.copy(src, container, options(tmp_path, azurite))
        finally:
            stop.set()
            await beat

    report = run_leaving_nothing(main)
    assert report.ok and report.files_copied == len(files)
    assert commits >= 3
    # the loop never waited for a commit (one would stall it for commit_s)
    assert worst_lag_s < commit_s / 2, worst_lag_s


# --- TaskOwner (pure asyncio) ---------------------------------------------------------------


def test_task_owner_first_failure_cancels_the_rest_and_the_body_and_is_raised() -> None:
    cancelled: list[str] = []

    async def sleeper(name: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def boom() -> None:
        await asyncio.sleep(0.01)
        raise JournalError("jobs.sqlite", "cannot write journal: disk full")

    async def main() -> None:
        with pytest.raises(JournalError, match="disk full"):
            async with TaskOwner() as owner:
                owner.spawn(sleeper("a"))
                owner.spawn(sleeper("b"))
                owner.spawn(boom())
                await asyncio.sleep(30)  # the body is interrupted too
                cancelled.append("body not interrupted")
        assert sorted(cancelled) == ["a", "b"]
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_task_owner_waits_for_every_task_when_its_body_is_cancelled() -> None:
    finished: list[str] = []

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while must still be awaited
            finished.append("cleanup")

    async def body() -> None:
        async with TaskOwner() as owner:
            owner.spawn(slow_cleanup())
            await asyncio.sleep(30)

    async def main() -> None:
        t = asyncio.ensure_future(body())
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert finished == ["cleanup"]
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_task_owner_failure_after_the_body_is_still_raised() -> None:
    async def late_boom() -> None:
        await asyncio.sleep(0.02)
        raise ValueError("late")

    async def main() -> None:
        with pytest.raises(ValueError, match="late"):
            async with TaskOwner() as owner:
                owner.spawn(late_boom())

    asyncio.run(main())
