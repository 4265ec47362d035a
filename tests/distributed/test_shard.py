"""What travels to a worker (pyengine.distributed.shard) and the flags that ask for a cluster."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest
from cli_harness import assert_one_line_error
from cli_harness import pyengine as run_cli

import pyengine
from pyengine import CopyOptions
from pyengine.distributed.shard import Shard, WorkItem, ack_of, file_result
from pyengine.engine.context import FileTask
from pyengine.engine.scan import SourceFile
from pyengine.errors import ConfigError
from pyengine.state.records import BlockAck, FileRecord


def _task(acked: dict[int, BlockAck], resumable: set[int]) -> FileTask:
    src = SourceFile("/s/a.dcm", "a.dcm", 3 << 20, 1, 2, 3, 4)
    record = FileRecord(
        file_id=7, job_id="j", rel_path="a.dcm", size_bytes=3 << 20, mtime_ns=1, inode=2,
        device=3, blob_name="p/a.dcm", upload_id="u" * 32, block_bytes=1 << 20, encrypted=False,
        state="uploading", acked_blocks=acked, ctime_ns=4,
    )  # fmt: skip
    return FileTask(src, record, 1 << 20, False, None, None, resumable=resumable)


def test_work_item_carries_only_the_acks_of_blocks_it_may_resume() -> None:
    acks = {i: BlockAck(i, 1 << 20, i, bytes(16)) for i in range(3)}
    task = _task(acks, resumable={0, 2})
    item = WorkItem.from_task(task)
    assert set(item.record.acked_blocks or {}) == {0, 2}
    assert set(task.record.acked_blocks or {}) == {0, 1, 2}  # the driver's record untouched
    again = item.to_task()
    assert again.resumable == {0, 2} and again.acked == set()
    assert again.record.upload_id == task.record.upload_id


def test_work_item_repr_shows_no_content_key() -> None:
    task = _task({}, set())
    task.content_key = b"K" * 32
    assert "KKKK" not in repr(WorkItem.from_task(task))


def test_ack_events_and_results_read_back_as_journal_acks() -> None:
    event = ("ack", 7, 3, 1 << 20, 99, b"x" * 16)
    assert ack_of(event) == (3, BlockAck(3, 1 << 20, 99, b"x" * 16))
    result = file_result(7, "lost", reason="KilledWorker")
    assert result["status"] == "lost" and result["acks"] == [] and result["blocks_resumed"] == 0


def test_workers_and_scheduler_together_are_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(
        "copy", str(tmp_path), "http://127.0.0.1:1/acct/c", "--workers", "2",
        "--scheduler", "tcp://127.0.0.1:1",
    )  # fmt: skip
    assert_one_line_error(proc, 2, "--workers", "not with --scheduler")


def test_workers_below_one_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("copy", str(tmp_path), "http://127.0.0.1:1/acct/c", "--workers", "0")
    assert_one_line_error(proc, 2, "--workers", "at least 1")


def test_a_policy_copy_refuses_workers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        asyncio.run(pyengine.copy(tmp_path, options=CopyOptions(workers=2), policy=object()))  # type: ignore[arg-type]
    assert e.value.subject == "--workers"


def test_work_item_travels_to_a_worker_unchanged() -> None:
    task = _task({1: BlockAck(1, 1 << 20, 5, b"x" * 16)}, resumable={1})
    task.content_key = b"K" * 32
    item = WorkItem.from_task(task, {"if-none-match": "*"})
    back = pickle.loads(pickle.dumps(item, protocol=5))
    assert back == item
    assert back.src == task.src and back.record.acked_blocks == item.record.acked_blocks


def test_a_shard_is_pickled_once_and_decoded_only_where_its_files_are_read() -> None:
    items = [WorkItem.from_task(_task({}, resumable=set())) for _ in range(3)]
    for i, item in enumerate(items):
        item.record.file_id = i
        item.content_key = bytes([i]) * 32
    shard = Shard("pyengine-shard-x", items)
    wire = pickle.dumps(shard, protocol=5)
    at_scheduler = pickle.loads(wire)
    assert at_scheduler._items is None  # the scheduler only passes the payload on
    again = pickle.dumps(at_scheduler, protocol=5)
    assert at_scheduler._items is None and again == wire  # the same bytes, not pickled anew
    at_worker = pickle.loads(again)
    assert at_worker.key == shard.key and len(at_worker) == 3
    assert at_worker.items == items  # content keys included: what the driver decided
    # the payload holds content keys: a shard's repr names its key only
    assert repr(at_worker) == "Shard('pyengine-shard-x')"
    for bad in ({}, {"items": items, "payload": wire}):
        with pytest.raises(ValueError):
            Shard("k", **bad)  # type: ignore[arg-type]
