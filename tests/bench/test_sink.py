"""The nginx discard sink and the SDK peer, against a real nginx (skipped only without nginx)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from azure.storage.blob.aio import BlobServiceClient

from pyengine.bench.peers import (
    container_name_from_url,
    sdk_upload_large,
    sdk_upload_small_files,
)
from pyengine.bench.sink import (
    SINK_CPUS_ENV,
    DiscardSink,
    SinkCount,
    find_nginx,
    sink_cpus_prefix,
)
from pyengine.errors import ConfigError, IntegrityError

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
    reason="nginx is not installed (`make bench` installs it)",
)


@pytest.fixture(scope="module")
def sink():
    with DiscardSink() as running:
        yield running


@pytest.fixture
def fresh_sink(sink: DiscardSink) -> DiscardSink:
    sink.reset_counts()
    return sink


async def _put_all(url: str, sizes_bytes: list[int]) -> list[int]:
    async with aiohttp.ClientSession() as session:
        statuses = []
        for index, size_bytes in enumerate(sizes_bytes):
            # zeros: the sink counts bytes, their values do not matter, and urandom is slow
            async with session.put(f"{url}/raw-{index}", data=bytes(size_bytes)) as resp:
                await resp.read()
                statuses.append(resp.status)
        return statuses


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the ppid is the 2nd field after the parenthesised command name
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _workers_of(master_pid: int, expected: int) -> list[int]:
    """nginx's workers: the sink answers once its master listens, the workers may still be
    starting on a loaded machine."""
    deadline = time.monotonic() + 5
    while len(workers := _children_of(master_pid)) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return workers


def test_sink_cpu_seconds_grow_while_it_reads_bodies(sink: DiscardSink) -> None:
    before_s = sink.cpu_seconds()
    asyncio.run(_put_all(sink.url, [32 * MiB] * 4))
    assert sink.cpu_seconds() > before_s


def test_sink_counts_exact_body_bytes_of_raw_puts(fresh_sink: DiscardSink) -> None:
    sizes_bytes = [0, 1, 4096, MiB + 7, 20 * MiB]
    statuses = asyncio.run(_put_all(fresh_sink.url, sizes_bytes))
    assert statuses == [201] * len(sizes_bytes)
    count = fresh_sink.counted()
    assert (count.requests, count.body_bytes, count.failed_requests) == (
        len(sizes_bytes),
        sum(sizes_bytes),
        0,
    )


def test_sink_counts_bodies_spooled_to_a_temp_file_beyond_its_buffer() -> None:
    with DiscardSink(body_buffer_bytes=MiB) as small_buffer_sink:
        assert asyncio.run(_put_all(small_buffer_sink.url, [3 * MiB + 1])) == [201]
        assert small_buffer_sink.counted().body_bytes == 3 * MiB + 1
        error_log = (small_buffer_sink.tmpdir / "error.log").read_text()
        assert "buffered to a temporary file" in error_log


def test_sink_counts_decoded_length_of_chunked_body(fresh_sink: DiscardSink) -> None:
    async def put_chunked() -> int:
        async def body():
            for _ in range(3):
                yield b"z" * 70_000

        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{fresh_sink.url}/chunked", data=body()) as resp,
        ):
            assert resp.headers.get("Transfer-Encoding") is None
            return resp.status

    assert asyncio.run(put_chunked()) == 201
    assert fresh_sink.counted().body_bytes == 210_000


def test_sink_does_not_count_body_of_request_cut_mid_body(fresh_sink: DiscardSink) -> None:
    with socket.create_connection(("127.0.0.1", fresh_sink.port)) as conn:
        conn.sendall(
            b"PUT /devstoreaccount1/bench/cut HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"a" * 1000
        )
        time.sleep(0.05)  # let nginx read the partial body before the close
    deadline_s = time.monotonic() + 5
    while (count := fresh_sink.counted()).requests == 0 and time.monotonic() < deadline_s:
        pass
    assert (count.requests, count.failed_requests, count.body_bytes) == (1, 1, 0)


def test_sdk_single_put_upload_succeeds_against_sink(fresh_sink: DiscardSink) -> None:
    data = os.urandom(3 * MiB + 5)

    async def upload() -> dict:
        async with BlobServiceClient.from_connection_string(fresh_sink.connection_string) as svc:
            return await svc.get_blob_client("bench", "single").upload_blob(data, overwrite=True)

    result = asyncio.run(upload())
    assert result["etag"] and result["request_server_encrypted"] is True
    count = fresh_sink.counted()
    assert (count.requests, count.body_bytes) == (1, len(data))


def test_sdk_chunked_upload_stages_blocks_and_commits_against_sink(
    fresh_sink: DiscardSink,
) -> None:
    data = os.urandom(3 * MiB + MiB // 2)

    async def upload() -> dict:
        async with BlobServiceClient.from_connection_string(
            fresh_sink.connection_string, max_single_put_size=MiB, max_block_size=MiB
        ) as svc:
            blob = svc.get_blob_client("bench", "chunked")
            return await blob.upload_blob(data, overwrite=True, max_concurrency=2)

    result = asyncio.run(upload())
    assert result["etag"]
    count = fresh_sink.counted()
    # 4 Put Block + 1 Put Block List, whose XML body is the few bytes above the payload
    assert count.requests == 5
    assert len(data) < count.body_bytes < len(data) + 1000


def test_sdk_container_create_and_exists_are_answered(fresh_sink: DiscardSink) -> None:
    async def create_then_exists() -> bool:
        async with BlobServiceClient.from_connection_string(fresh_sink.connection_string) as svc:
            container = svc.get_container_client("bench")
            await container.create_container()
            return await container.exists()

    assert asyncio.run(create_then_exists()) is True


def test_reset_counts_starts_counting_from_zero(fresh_sink: DiscardSink) -> None:
    asyncio.run(_put_all(fresh_sink.url, [1000]))
    assert fresh_sink.counted().requests == 1
    fresh_sink.reset_counts()
    assert fresh_sink.counted() == SinkCount(requests=0, body_bytes=0)
    asyncio.run(_put_all(fresh_sink.url, [10]))
    assert (fresh_sink.counted().requests, fresh_sink.counted().body_bytes) == (1, 10)


def test_sink_urls_point_at_its_port_in_account_path_form(sink: DiscardSink) -> None:
    assert sink.url == f"http://127.0.0.1:{sink.port}/devstoreaccount1/bench"
    assert f"BlobEndpoint=http://127.0.0.1:{sink.port}/devstoreaccount1;" in sink.connection_string


def test_stop_leaves_no_nginx_process_and_no_temp_dir() -> None:
    sink = DiscardSink(worker_processes=2).start()
    master_pid = sink.pid
    assert master_pid is not None
    tmpdir = sink.tmpdir
    workers = _workers_of(master_pid, 2)
    assert len(workers) == 2
    sink.stop()
    alive = [pid for pid in [master_pid, *workers] if Path(f"/proc/{pid}").exists()]
    assert alive == []
    assert tmpdir is not None and not tmpdir.exists()
    with pytest.raises(ConfigError):
        _ = sink.url


def test_missing_nginx_binary_raises_one_line_error_naming_make_bench(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        DiscardSink(nginx_path=str(tmp_path / "nginx"))
    assert "make bench" in info.value.one_line() and "\n" not in str(info.value)


def test_sink_works_as_async_context_manager() -> None:
    async def run() -> SinkCount:
        async with DiscardSink() as sink:
            async with (
                aiohttp.ClientSession() as session,
                session.put(f"{sink.url}/a", data=b"abc") as resp,
            ):
                assert resp.status == 201
            return await sink.acounted()

    assert asyncio.run(run()).body_bytes == 3


def test_container_name_from_url_reads_account_style_and_service_urls() -> None:
    assert container_name_from_url("http://127.0.0.1:1/devstoreaccount1/bench") == "bench"
    assert container_name_from_url("https://acct.blob.core.windows.net/bench?sv=x") == "bench"


def test_sdk_upload_large_reports_best_trial_verified_by_sink(
    fresh_sink: DiscardSink, tmp_path: Path
) -> None:
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(2 * MiB + 3))
    result = asyncio.run(
        sdk_upload_large(
            fresh_sink.url,
            fresh_sink.connection_string,
            path,
            concurrency_candidates=(1, 2),
            block_bytes=MiB,
            repeats=2,
            sink=fresh_sink,
        )
    )
    assert result.bytes == 2 * MiB + 3 and result.files == 1
    assert result.concurrency in (1, 2) and [c for c, _ in result.trials] == [1, 1, 2, 2]
    assert result.seconds == min(s for _, s in result.trials)
    assert result.sink_bytes_verified is not None and result.sink_bytes_verified >= result.bytes
    # every trial really went through the sink
    assert fresh_sink.counted().body_bytes >= 4 * result.bytes


def test_sdk_upload_small_files_counts_every_file(fresh_sink: DiscardSink, tmp_path: Path) -> None:
    paths = []
    for index in range(12):
        path = tmp_path / f"f{index}.dcm"
        path.write_bytes(os.urandom(1000 + index))
        paths.append(path)
    result = asyncio.run(
        sdk_upload_small_files(
            fresh_sink.url, fresh_sink.connection_string, paths, concurrency=4, sink=fresh_sink
        )
    )
    payload_bytes = sum(1000 + i for i in range(12))
    assert (result.files, result.bytes) == (12, payload_bytes)
    assert [c for c, _ in result.trials] == [1, 2, 4]
    assert result.sink_bytes_verified == payload_bytes
    assert result.files_per_s == pytest.approx(12 / result.seconds)


def test_peer_raises_integrity_error_when_sink_did_not_read_the_payload(
    fresh_sink: DiscardSink, tmp_path: Path
) -> None:
    # Uploading to another sink while checking this one: this sink reads nothing.
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    with DiscardSink() as other, pytest.raises(IntegrityError):
        asyncio.run(
            sdk_upload_small_files(
                other.url, other.connection_string, [path], concurrency=1, sink=fresh_sink
            )
        )


def test_sink_cpus_prefix_is_taskset_when_the_variable_is_set() -> None:
    assert sink_cpus_prefix({}) == []
    assert sink_cpus_prefix({SINK_CPUS_ENV: " "}) == []
    prefix = sink_cpus_prefix({SINK_CPUS_ENV: "2-15"})
    assert prefix[1:] == ["-c", "2-15"] and os.path.basename(prefix[0]) == "taskset"
    assert sink_cpus_prefix({SINK_CPUS_ENV: "0,2,4-5"})[1:] == ["-c", "0,2,4-5"]


@pytest.mark.parametrize("cpus", ["2-", "a", "0;reboot", "1 2"])
def test_sink_cpus_that_are_not_a_cpu_list_raise_one_line_error(cpus: str) -> None:
    with pytest.raises(ConfigError) as info:
        sink_cpus_prefix({SINK_CPUS_ENV: cpus})
    assert SINK_CPUS_ENV in info.value.one_line()


def _cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_sink_master_and_workers_run_on_the_cpus_the_variable_names(monkeypatch) -> None:
    monkeypatch.setenv(SINK_CPUS_ENV, "0")
    with DiscardSink(worker_processes=3) as sink:
        assert sink.pid is not None
        workers = _workers_of(sink.pid, 3)
        assert len(workers) == 3
        assert {_cpus_allowed(pid) for pid in [sink.pid, *workers]} == {"0"}


def test_nginx_first_on_path_is_the_one_used(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert find_nginx() == str(fake)
