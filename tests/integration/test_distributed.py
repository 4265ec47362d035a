"""Scale-out on Dask (issue 13): a job whose files are sent by Dask worker processes, against the
real Azurite; every blob read back with the official SDK, the journal and the summary exact.

One LocalCluster of two worker processes is shared by the module (it starts in a few seconds)
and reached through ``scheduler=`` (the --scheduler path); the --workers path (an embedded
LocalCluster) runs once through the CLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions, Event
from pyengine.options import MiB
from pyengine.state.journal import Journal

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
