"""pytest-benchmark suites of the hot paths, one benchmark per path.

- each native stage over 64 MiB (the public functions a caller pays for, GIL released);
- the combined pipeline (read + xxh3 + crc64 + blake3 + AES-GCM) over a page-cached file of
  ``PYENGINE_BENCH_PIPELINE_BYTES`` (default 512 MiB), 2 threads;
- the journal: 10,000 ``ack_block`` calls and the group commit that makes them durable;
- ``blob.shared_key_signature`` for a Put Block request;
- an end-to-end ``pyengine.copy`` of 200 × 256 KiB files into the nginx discard sink.

Each records its throughput in ``extra_info`` (GB/s = 1e9 bytes/s, or files/s).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyengine import _core, bench
from pyengine.bench.sink import DiscardSink
from pyengine.engine.job import copy
from pyengine.options import CopyOptions
from pyengine.state.journal import Journal
from pyengine.targets.azure_blob import crc64_header, shared_key_signature

MiB = 1024 * 1024
GB = 1_000_000_000
STAGE_BYTES = 64 * MiB
ACKS = 10_000
SMALL_FILES = 200
SMALL_FILE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def stage_buffer() -> bytearray:
    return bytearray(os.urandom(STAGE_BYTES))


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    size_bytes = int(os.environ.get("PYENGINE_BENCH_PIPELINE_BYTES") or 512 * MiB)
    path = tmp_path_factory.mktemp("bench-pipeline") / "pipeline.bin"
    bench.write_random_file(path, size_bytes)
    return path


_STAGE_CALLS = {
    "xxh3": lambda data: _core.xxh3_128(data),
    "crc64": lambda data: _core.crc64(data),
    "blake3": lambda data: _core.blake3(data),
    # encrypt_regions returns a fresh bytes object: the allocation is part of what it costs
    "aes_gcm": lambda data: _core.encrypt_regions(data, b"\x07" * 32),
}


@pytest.mark.parametrize("stage", sorted(_STAGE_CALLS))
def test_native_stage_64mib(benchmark: Any, stage_buffer: bytearray, stage: str) -> None:
    call = _STAGE_CALLS[stage]
    result = benchmark.pedantic(call, args=(stage_buffer,), rounds=5, warmup_rounds=1)
    assert result is not None
    benchmark.extra_info["gbps"] = STAGE_BYTES / benchmark.stats.stats.min / GB


def test_native_pipeline_all_stages_2_threads(benchmark: Any, pipeline_file: Path) -> None:
    size_bytes = pipeline_file.stat().st_size
    key = os.urandom(32)

    def run() -> float:
        return bench.pipeline_seconds(
            pipeline_file, size_bytes, threads=2, stages=_core.STAGE_ALL, content_key=key
        )

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    benchmark.extra_info["gbps"] = size_bytes / benchmark.stats.stats.min / GB


def test_journal_ack_10k_blocks_and_flush(benchmark: Any, tmp_path: Path) -> None:
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        job_id = journal.create_job("/src", "http://127.0.0.1/acct/c", {})
        names = (f"file-{i}" for i in itertools.count())
        xxh3 = b"\x01" * 16

        def new_file() -> tuple[tuple[int], dict[str, Any]]:
            record = journal.begin_file(
                job_id,
                next(names),
                size_bytes=ACKS * 8 * MiB,
                mtime_ns=1,
                inode=1,
                device=1,
                blob_name="b",
                block_bytes=8 * MiB,
                encrypted=False,
            )
            journal.flush()
            return (record.file_id,), {}

        def ack_all(file_id: int) -> None:
            for index in range(ACKS):
                journal.ack_block(file_id, index, length_bytes=8 * MiB, crc64=index, xxh3_128=xxh3)
            journal.flush()

        benchmark.pedantic(ack_all, setup=new_file, rounds=5)
        assert len(journal.acked_blocks(journal.file_record(job_id, "file-0").file_id)) == ACKS
    benchmark.extra_info["acks_per_s"] = ACKS / benchmark.stats.stats.min


def test_shared_key_signature_put_block(benchmark: Any) -> None:
    key = os.urandom(64)
    headers = {
        "content-length": str(8 * MiB),
        "x-ms-date": "Mon, 01 Jan 2024 00:00:00 GMT",
        "x-ms-version": "2021-08-06",
        "x-ms-content-crc64": crc64_header(0x1234567890ABCDEF),
        "x-ms-client-request-id": "00000000-0000-0000-0000-000000000000",
    }
    query = {"comp": "block", "blockid": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
    signature = benchmark(
        shared_key_signature,
        "devstoreaccount1",
        key,
        "PUT",
        "/devstoreaccount1/bench/study/series/instance.dcm",
        query,
        headers,
    )
    assert signature.startswith("SharedKey devstoreaccount1:")


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-hot-small")
    bench.write_small_files(root, SMALL_FILES, SMALL_FILE_BYTES)
    return root


@pytest.fixture(scope="module")
def hot_sink() -> Iterator[DiscardSink]:
    with DiscardSink() as running:
        yield running


def test_copy_200_small_files_into_sink(
    benchmark: Any, small_tree: Path, hot_sink: DiscardSink, tmp_path: Path
) -> None:
    runs = itertools.count()

    def one_copy() -> Any:
        # a fresh journal per round: a finished job would otherwise be found and counted again
        options = CopyOptions(
            check="none",
            journal_path=str(tmp_path / f"journal-{next(runs)}.sqlite"),
            connection_string=hot_sink.connection_string,
            create_container=True,
        )
        return asyncio.run(copy(small_tree, f"{hot_sink.url}/hot", options))

    before = hot_sink.counted()
    report = benchmark.pedantic(one_copy, rounds=3, warmup_rounds=0)
    assert report.files_copied == SMALL_FILES and report.files_failed == 0
    delta = hot_sink.counted() - before
    assert delta.body_bytes >= 3 * SMALL_FILES * SMALL_FILE_BYTES
    benchmark.extra_info["files_per_s"] = SMALL_FILES / benchmark.stats.stats.min
