"""Scale-out on Dask (issue 13): a job whose files are sent by Dask worker processes, against the
real Azurite; every blob read back with the official SDK, the journal and the summary exact.

One LocalCluster of two worker processes is shared by the module (it starts in a few seconds)
and reached through ``scheduler=`` (the --scheduler path); the --workers path (an embedded
LocalCluster) runs once through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import blake3
import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions, CopyReport, Event, LocalKeyWrapper
from pyengine.distributed.cluster import _allowed_failures, open_client
from pyengine.distributed.shard import SetUp, Shard
from pyengine.distributed.worker import close_engine, open_engine, run_shard
from pyengine.options import MiB
from pyengine.state.journal import Journal
from pyengine.targets.auth import parse_destination

pytestmark = pytest.mark.integration

KiB = 1024


def content(size_bytes: int, seed: int) -> bytes:
    period = bytes(range(251))
    reps = (size_bytes + seed) // 251 + 1
    return (period * reps)[seed % 251 : seed % 251 + size_bytes]


def make_tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for seed, (rel, size_bytes) in enumerate(sorted(sizes.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content(size_bytes, seed)
        path.write_bytes(data)
        files[rel] = data
    return files


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two worker processes, one thread each; the test's own (synchronous) client."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # not :8787, which another cluster on this host may hold (a warning: an error here)
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            memory_limit=0,
            silence_logs=logging.ERROR,
        ) as local,
        Client(local) as client,
    ):
        yield client


def options(azurite: Any, tmp_path: Path, **kw: Any) -> CopyOptions:
    base: dict[str, Any] = {
        "threads": 2,
        "memory_cap_bytes": 32 * MiB,
        "connection_string": azurite.connection_string,
        "journal_path": str(tmp_path / "journal.sqlite"),
        "block_bytes": 1 * MiB,
        "single_put_max_bytes": 1 * MiB,
    }
    base.update(kw)
    return CopyOptions(**base)


def blocks_of(files: dict[str, bytes], block_bytes: int = MiB, single_max: int = MiB) -> int:
    return sum(-(-len(d) // block_bytes) for d in files.values() if len(d) > single_max)


def assert_destination_holds(azurite: Any, container_url: str, files: dict[str, bytes]) -> None:
    name = container_url.rstrip("/").rsplit("/", 1)[1]
    with ContainerClient.from_connection_string(azurite.connection_string, name) as cc:
        blobs = {b.name: b for b in cc.list_blobs(include=["metadata"])}
        assert sorted(blobs) == sorted(files)
        for rel, data in files.items():
            got = cc.download_blob(rel).readall()
            assert got == data, rel
            assert blobs[rel].metadata["pyengineblake3"] == blake3.blake3(data).hexdigest()


def journal_states(journal_path: str, job_id: str) -> Counter[str]:
    with Journal.open_existing(journal_path) as journal:
        return Counter(r.state for r in journal.iter_files(job_id))


def test_two_workers_copy_every_file_with_an_exact_summary(
    azurite, container, cluster, tmp_path: Path
) -> None:
    sizes = {f"study/{i:02d}.dcm": 3 * KiB + i for i in range(30)}
    sizes.update({f"big/{i}.bin": 3 * MiB + 17 * i for i in range(4)})
    sizes["empty.dcm"] = 0
    files = make_tree(tmp_path / "src", sizes)
    opts = options(azurite, tmp_path, scheduler=cluster.scheduler.address)
    events: list[Event] = []
    report = asyncio.run(pyengine.copy(tmp_path / "src", container, opts, on_event=events.append))

    assert report.ok, report.failures
    assert report.files_copied == len(files) and report.files_failed == 0
    assert report.bytes_copied == sum(len(d) for d in files.values())
    assert report.blocks_sent == blocks_of(files) and report.blocks_resumed == 0
    assert report.workers_cpu_s > 0  # the workers' engines read and sent every file
    assert_destination_holds(azurite, container, files)
    assert journal_states(opts.journal_path, report.job_id) == {"committed": len(files)}
    copied = [e for e in events if e.kind == "file_copied"]
    assert len(copied) == len(files)
    # progress aggregated across the workers: every byte of every file, once
    assert sum(e.bytes or 0 for e in events if e.kind == "progress") == report.bytes_copied
    manifest = Path(report.manifest_path).read_text().splitlines()
    assert len(manifest) == len(files)
    # the shards really went to both workers
    assert len(cluster.run(lambda: 1)) == 2


def commits_by_blob(forwarded: list[list[Any]]) -> dict[str, list[tuple[int | None, bool]]]:
    """Put Blob and Put Block List requests whose body reached the service, by blob name, in
    order: (status, None when no answer came back; whether it carried a precondition)."""
    commits: dict[str, list[tuple[int | None, bool]]] = {}
    for method, path_qs, status, headers in forwarded:
        parts = urlsplit(path_qs)
        query = parse_qs(parts.query)
        is_commit = query.get("comp") == ["blocklist"] or (method == "PUT" and not query)
        if method == "PUT" and is_commit:
            conditional = "if-match" in headers or "if-none-match" in headers
            name = unquote(parts.path.split("/", 3)[3])  # as the source names it
            commits.setdefault(name, []).append((status, conditional))
    return commits


def assert_committed_once(forwarded: list[list[Any]], names: Iterable[str]) -> None:
    """Each blob was committed once: one commit accepted (2xx), or one sent by a worker that
    died waiting for the answer (it may have landed); every commit after that one carried a
    precondition (If-Match / If-None-Match), so it could not land on top of it."""
    commits = commits_by_blob(forwarded)
    assert sorted(commits) == sorted(names)
    for name, tries in commits.items():
        may_have_landed = [i for i, (status, _) in enumerate(tries) if status is None]
        accepted = [i for i, (status, _) in enumerate(tries) if status and 200 <= status < 300]
        assert len(accepted) <= 1, (name, tries)
        assert accepted or may_have_landed, (name, tries)
        if may_have_landed:
            later = tries[may_have_landed[0] + 1 :]
            assert all(conditional for _, conditional in later), (name, tries)


def kill_senders_at_first_block(cluster: Any, killed: list[str]) -> Any:
    """An event listener that SIGKILLs every worker running a shard once the first block of a
    large file (big/...) is journaled; the killed workers' addresses go into ``killed``."""
    cluster.wait_for_workers(2)
    pids = cluster.run(os.getpid)

    def on_event(e: Event) -> None:
        if e.kind == "progress" and (e.path or "").startswith("big/") and not killed:
            for addr, keys in cluster.processing().items():
                if keys and addr in pids:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)

    return on_event


def test_a_copy_without_a_listener_sends_no_progress_events(
    azurite, container, cluster, tmp_path: Path
) -> None:
    sizes = {f"study/{i:02d}.dcm": 3 * KiB + i for i in range(10)}
    sizes["big/0.bin"] = 3 * MiB
    files = make_tree(tmp_path / "src", sizes)
    topics_before = set(cluster.get_events())
    opts = options(azurite, tmp_path, scheduler=cluster.scheduler.address)
    report = asyncio.run(pyengine.copy(tmp_path / "src", container, opts))

    assert report.ok and report.files_copied == len(files), report.failures
    assert_destination_holds(azurite, container, files)
    topics = [t for t in cluster.get_events() if t.startswith("pyengine-")]
    (topic,) = [t for t in topics if t not in topics_before]
    kinds = Counter(e[0] for _, batch in cluster.get_events(topic) for e in batch)
    # every answer and every block ack travelled; no progress, which nobody would have read
    assert kinds["done"] == len(files) and kinds["ack"] == blocks_of(files)
    assert kinds["progress"] == 0


@pytest.fixture(params=["reruns", "no-reruns"])
def scheduler_reruns(request: pytest.FixtureRequest, cluster: Any) -> Iterator[str]:
    """The shared scheduler as it comes (Dask runs a task again after its worker died: each
    shard checks it was not started before), or allowing no re-run, as the embedded cluster of
    ``--workers`` does (a lost shard fails at once, with no check)."""
    scheduler = cluster.cluster.scheduler
    allowed = scheduler.allowed_failures
    if request.param == "no-reruns":
        scheduler.allowed_failures = 0
    try:
        yield request.param
    finally:
        scheduler.allowed_failures = allowed


def test_killed_worker_shard_is_retried_and_every_blob_committed_once(
    azurite, container, cluster, scheduler_reruns, fault_proxy, tmp_path: Path
) -> None:
    sizes = {f"big/{i}.bin": 4 * MiB + i for i in range(4)}
    sizes.update({f"small/{i:02d}.dcm": 2 * KiB + i for i in range(12)})
    files = make_tree(tmp_path / "src", sizes)
    killed: list[str] = []
    on_event = kill_senders_at_first_block(cluster, killed)
    fault_proxy.recording = True
    # 5 MB/s per worker: the 16 MiB of large files are still in flight when the kill comes
    opts = options(azurite, tmp_path, scheduler=cluster.scheduler.address, cap_mbps=40)
    report = asyncio.run(
        pyengine.copy(tmp_path / "src", fault_proxy.url(container), opts, on_event=on_event)
    )

    assert killed, "no worker was sending when the first block was acknowledged"
    assert report.ok, report.failures
    assert report.files_copied == len(files) and report.files_failed == 0
    # blocks the journal held acknowledged were resumed by the retry, not sent again
    assert report.blocks_resumed >= 1
    assert_committed_once(fault_proxy.forwarded, files)
    assert_destination_holds(azurite, container, files)
    assert journal_states(opts.journal_path, report.job_id) == {"committed": len(files)}
    verified = subprocess.run(
        [sys.executable, "-m", "pyengine", "verify", report.job_id, "--journal",
         opts.journal_path, "--connection-string", azurite.connection_string, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_engine_that_fails_mid_job_loses_its_shards_and_the_job_completes(
    azurite, container, cluster, fault_proxy, tmp_path: Path, caplog
) -> None:
    sizes = {f"big/{i}.bin": 4 * MiB + i for i in range(4)}
    sizes.update({f"small/{i:02d}.dcm": 2 * KiB + i for i in range(12)})
    files = make_tree(tmp_path / "src", sizes)
    cluster.wait_for_workers(2)

    async def fail_engines() -> int:
        from pyengine.distributed.worker import _ENGINES

        opened = [f.result() for f in _ENGINES.values() if f.done() and not f.exception()]
        for engine in opened:
            engine.owner.fail(KeyError("a bug in the engine"))
        return len(opened)

    failed: list[int] = []

    def on_event(e: Event) -> None:
        # the first block of a large file: its worker's engine is sending
        if e.kind == "progress" and (e.path or "").startswith("big/") and not failed:
            failed.append(sum(cluster.run(fail_engines).values()))

    fault_proxy.recording = True
    opts = options(azurite, tmp_path, scheduler=cluster.scheduler.address, cap_mbps=40)
    with caplog.at_level(logging.INFO, logger="pyengine"):
        report = asyncio.run(
            pyengine.copy(tmp_path / "src", fault_proxy.url(container), opts, on_event=on_event)
        )

    assert failed and failed[0] >= 1, "no engine was open when the first block was journaled"
    lost = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert lost and all(
        "EngineStopped: the worker's engine stopped (KeyError: 'a bug in the engine')" in m
        for m in lost
    ), lost
    # its files were sent again on engines opened anew: every one committed, once
    assert report.ok, report.failures
    assert report.files_copied == len(files) and report.files_failed == 0
    assert_committed_once(fault_proxy.forwarded, files)
    assert_destination_holds(azurite, container, files)
    assert journal_states(opts.journal_path, report.job_id) == {"committed": len(files)}


def test_a_scheduler_killed_mid_job_stops_it_resumably_with_one_reason(
    azurite, container, tmp_path: Path
) -> None:
    sizes = {f"big/{i}.bin": 4 * MiB + i for i in range(4)}
    sizes.update({f"small/{i:02d}.dcm": 2 * KiB + i for i in range(12)})
    files = make_tree(tmp_path / "src", sizes)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", "127.0.0.1:0"], **quiet,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
         "--no-dashboard"], **quiet,
    )  # fmt: skip
    try:

        def on_event(e: Event) -> None:  # a block of a large file is journaled: mid-job
            if e.kind == "progress" and (e.path or "").startswith("big/"):
                scheduler.kill()

        opts = options(azurite, tmp_path, scheduler=address, cap_mbps=40)
        started = time.monotonic()
        job = pyengine.copy(tmp_path / "src", container, opts, on_event=on_event)
        with pytest.raises(pyengine.PyEngineError) as stopped:  # a hang fails: TimeoutError
            asyncio.run(asyncio.wait_for(job, timeout=60))
        assert scheduler.poll() is not None, "the job ended before the scheduler was killed"
        # at once, not after Dask's 60 s of reconnecting, and in one line
        assert time.monotonic() - started < 30
        assert isinstance(stopped.value, pyengine.ClusterError)
        assert stopped.value.one_line().startswith(f"{address}: lost the Dask scheduler")
    finally:
        for p in (scheduler, worker):
            p.kill()
            p.wait(timeout=30)
    # the same job, in one process: resumed (the journal holds one job), every file there once
    report = asyncio.run(pyengine.copy(tmp_path / "src", container, options(azurite, tmp_path)))
    assert report.ok, report.failures
    with Journal.open_existing(opts.journal_path) as journal:
        assert [job.job_id for job in journal.list_jobs()] == [report.job_id]
    assert report.files_copied + report.files_skipped == len(files)
    assert_destination_holds(azurite, container, files)


def test_workers_flag_runs_an_embedded_cluster_with_clean_json_output(
    azurite, container, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src", {f"s/{i}.dcm": 1500 + i for i in range(6)})
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    done = subprocess.run(
        [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src"), container,
         "--workers", "2", "--threads", "1", "--json",
         "--journal", str(tmp_path / "j.sqlite")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # JSON only: no Dask noise
    assert "distributed." not in done.stderr  # nor Dask's log lines on stderr
    summary = [x for x in lines if x.get("kind") == "job_finished" or "files_copied" in x][-1]
    assert summary["files_copied"] == len(files)
    assert_destination_holds(azurite, container, files)


def _interrupt_after_first_copy(src: Path, dest: str, opts: CopyOptions) -> CopyReport | None:
    """Runs a job and cancels it (as SIGINT does) once its first large file is committed."""

    async def main() -> None:
        task: asyncio.Task[Any] | None = None

        def on_event(e: Event) -> None:
            if e.kind == "file_copied" and (e.path or "").startswith("big/") and task:
                task.cancel()

        task = asyncio.ensure_future(pyengine.copy(src, dest, opts, on_event=on_event))
        await task

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        return None
    pytest.fail("the job ended before it could be interrupted")


@pytest.mark.parametrize("first", ["distributed", "single"])
def test_interrupted_job_resumes_in_the_other_mode(
    azurite, container, cluster, tmp_path: Path, first: str
) -> None:
    sizes = {f"big/{i}.bin": 3 * MiB + i for i in range(4)}
    sizes.update({f"small/{i:02d}.dcm": 1 * KiB + i for i in range(8)})
    files = make_tree(tmp_path / "src", sizes)
    cluster.wait_for_workers(2)
    distributed = {"scheduler": cluster.scheduler.address}
    modes = [distributed, {}] if first == "distributed" else [{}, distributed]
    # throttled so the first run is still sending when it is interrupted
    opts1 = options(azurite, tmp_path, cap_mbps=40, **modes[0])
    assert _interrupt_after_first_copy(tmp_path / "src", container, opts1) is None
    with Journal.open_existing(opts1.journal_path) as journal:
        (job,) = journal.list_jobs()
        assert job.status == "interrupted"
        done_before = Counter(r.state for r in journal.iter_files(job.job_id))["committed"]
    assert done_before >= 1

    opts2 = options(azurite, tmp_path, **modes[1])
    report = asyncio.run(pyengine.copy(tmp_path / "src", container, opts2))
    assert report.ok, report.failures
    assert report.job_id == job.job_id  # the same job, resumed
    assert report.files_copied == len(files)  # the summary covers the whole source
    assert report.blocks_sent < blocks_of(files)  # what the first run sent was not sent again
    assert_destination_holds(azurite, container, files)
    assert journal_states(opts2.journal_path, report.job_id) == {"committed": len(files)}


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def test_sigint_stops_a_workers_copy_resumably_and_leaves_no_worker(
    azurite, container, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src", {f"big/{i}.bin": 3 * MiB + i for i in range(3)})
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    journal = str(tmp_path / "j.sqlite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src"), container,
         "--workers", "1", "--threads", "1", "--json", "--journal", journal,
         "--block-size", "1", "--cap-mbps", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    workers: list[int] = []
    for line in proc.stdout:  # the first block acknowledged: a worker is sending
        if json.loads(line).get("kind") == "progress":
            workers = _children(proc.pid)
            break
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    assert rc == 130, proc.stderr.read() if proc.stderr else ""
    assert workers, "the LocalCluster's processes were not found"
    deadline = time.monotonic() + 10  # a multiprocessing resource tracker exits right after
    while (alive := [p for p in workers if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes left behind: {[_cmdline(p) for p in alive]}"
    with Journal.open_existing(journal) as j:
        (job,) = j.list_jobs()
        assert job.status == "interrupted"


def test_encrypted_copy_with_a_killed_worker_decrypts_with_the_sdk(
    azurite, container, cluster, sdk_blob, tmp_path: Path
) -> None:
    sizes = {f"big/{i}.bin": 12 * MiB + i for i in range(2)}
    sizes.update({f"small/{i}.dcm": 5 * KiB + i for i in range(6)})
    files = make_tree(tmp_path / "src", sizes)
    key = os.urandom(32)
    killed: list[str] = []
    opts = options(
        azurite,
        tmp_path,
        scheduler=cluster.scheduler.address,
        encrypt=True,
        kek=LocalKeyWrapper(key),
        block_bytes=4 * MiB,
        cap_mbps=60,
    )
    report = asyncio.run(
        pyengine.copy(
            tmp_path / "src", container, opts, on_event=kill_senders_at_first_block(cluster, killed)
        )
    )
    assert killed
    assert report.ok, report.failures
    assert report.files_copied == len(files)
    # resumed under the journaled content key, after the driver's check pass of staged blocks
    assert report.blocks_resumed >= 1
    for rel, data in files.items():  # the content keys that travelled to the workers
        with sdk_blob(container, rel, key) as bc:
            assert bc.download_blob().readall() == data, rel


def test_dask_scheduler_address_env_sends_the_files_from_that_cluster(
    azurite, container, cluster, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src", {f"s/{i}.dcm": 700 + i for i in range(5)})
    env = {
        **os.environ,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "DASK_SCHEDULER_ADDRESS": cluster.scheduler.address,
    }
    before = set(cluster.get_events())
    done = subprocess.run(
        [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src"), container,
         "--json", "--journal", str(tmp_path / "j.sqlite")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the cluster's scheduler saw a new job's event topic: its workers sent the files
    assert [t for t in set(cluster.get_events()) - before if t.startswith("pyengine-")]
    assert_destination_holds(azurite, container, files)


def test_a_clusters_rerun_rule_decides_the_per_shard_check(cluster, scheduler_reruns) -> None:
    async def main() -> bool:
        async with open_client(CopyOptions(scheduler=cluster.scheduler.address)) as opened:
            return opened.reruns

    assert asyncio.run(main()) == (scheduler_reruns == "reruns")


def test_the_embedded_cluster_runs_no_shard_twice() -> None:
    async def main() -> tuple[bool, int]:
        async with open_client(CopyOptions(workers=1, threads=1)) as opened:
            return opened.reruns, await opened.client.run_on_scheduler(_allowed_failures)

    assert asyncio.run(main()) == (False, 0)


def engine_setup(azurite: Any, container: str, job_id: str, threads: int) -> SetUp:
    """A job's setup as the driver ships it, for the engine's own calls."""
    return SetUp(
        token=uuid.uuid4().hex,
        job_id=job_id,
        dest=parse_destination(container),
        options=CopyOptions(threads=threads, connection_string=azurite.connection_string),
        env={},
    )


def test_engines_open_on_every_worker_ahead_of_the_first_shard(azurite, container, cluster) -> None:
    setup = engine_setup(azurite, container, "ahead", threads=1)
    opened = cluster.run(open_engine, setup)
    assert list(opened.values()) == [True, True]
    # each worker closes the engine it opened (its target's retry figures come back)
    closed = cluster.run(close_engine, setup.token)
    assert all(isinstance(stats, dict) for stats in closed.values()), closed


def test_an_engine_that_cannot_open_fails_its_shard_and_is_opened_anew(
    azurite, container, cluster
) -> None:
    setup = engine_setup(azurite, container, "broken", threads=0)
    assert list(cluster.run(open_engine, setup).values()) == [False, False]
    # the first shard meets the reason (and the next open is tried again, not remembered)
    for attempt in range(2):
        future = cluster.submit(
            run_shard, setup, Shard(f"pyengine-shard-broken-{attempt}", []), pure=False
        )
        with pytest.raises(ValueError, match="threads must be at least 1"):
            future.result(timeout=30)
    # nothing opened, nothing to close
    assert list(cluster.run(close_engine, setup.token).values()) == [None, None]


class _EventLog:
    """A Dask worker as the engine sees it: where its event batches go."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def log_event(self, topic: str, batch: list[Any]) -> None:
        self.batches.append(batch)


def test_an_engine_that_fails_mid_shard_fails_the_shard_with_its_reason(
    azurite, container, tmp_path
) -> None:
    from pyengine.distributed.shard import WorkItem
    from pyengine.distributed.worker import EngineStopped, WorkerEngine
    from pyengine.engine.scan import SourceFile
    from pyengine.state.records import FileRecord

    path = tmp_path / "a.dcm"
    path.write_bytes(content(3 * MiB, 1))
    st = path.stat()
    src = SourceFile(str(path), "a.dcm", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev,
                     st.st_ctime_ns)  # fmt: skip
    record = FileRecord(
        file_id=1, job_id="mid", rel_path="a.dcm", size_bytes=st.st_size,
        mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev, blob_name="a.dcm",
        upload_id="u" * 32, block_bytes=MiB, encrypted=False, state="uploading", acked_blocks={},
        ctime_ns=st.st_ctime_ns,
    )  # fmt: skip
    item = WorkItem(src, record, MiB, False, None, None, set())
    setup = engine_setup(azurite, container, "mid", threads=1)

    async def main() -> tuple[str, bool]:
        engine = await WorkerEngine.open(setup, _EventLog())
        running = asyncio.ensure_future(engine.run(Shard("pyengine-shard-mid", [item])))
        await asyncio.sleep(0)  # the shard's task has started
        # a task of the engine failed (a bug, a relay that cannot send): every shard ends
        engine.owner.fail(KeyError("a bug in the engine"))
        with pytest.raises(EngineStopped) as stopped:
            await running
        await engine.close()
        return str(stopped.value), engine.broken

    reason, broken = asyncio.run(main())
    assert reason == "the worker's engine stopped (KeyError: 'a bug in the engine')"
    assert broken  # the next shard of the job opens the engine anew (worker._unusable)
