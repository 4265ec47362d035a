"""The peer measured side by side with pyengine: the official azure-storage-blob SDK (aio).

Benchmarks run these against the same :class:`~pyengine.bench.sink.DiscardSink` as our
uploader, in the same process and run, so the figures compare like with like. The SDK is used as
its docs show:
``upload_blob(..., max_concurrency=c, overwrite=True)``, no content validation (no MD5/CRC64),
no encryption. Each function tries a few concurrency values and keeps the best, so the peer is
not handicapped by one unlucky setting.

When a sink is passed, every trial is checked against what the sink read
(``sink.counted()`` delta ≥ payload bytes); the smallest delta seen is returned as
``sink_bytes_verified`` for the report.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from pyengine.bench.sink import DiscardSink, SinkCount
from pyengine.errors import IntegrityError

GB = 1_000_000_000


@dataclass(frozen=True)
class PeerResult:
    """The best trial of a peer run.

    ``gbps`` is decimal gigaBYTES per second (1.25 = a 10 Gbit/s line), like every GB/s figure
    our benches report.
    """

    gbps: float
    files_per_s: float
    #: payload bytes uploaded in the best trial
    bytes: int
    files: int
    seconds: float
    #: the concurrency of the best trial
    concurrency: int
    #: body bytes the sink counted for the best trial (None when no sink was passed)
    sink_bytes_verified: int | None = None
    #: every trial as (concurrency, seconds), in the order run
    trials: tuple[tuple[int, float], ...] = ()


def container_name_from_url(url: str) -> str:
    """Container of an account-style (``http://host/account/container``) or service URL."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if not parts:
        raise ValueError("container URL has no container in its path")
    # account-style path (Azurite, the sink): /account/container; service URL: /container
    return parts[1] if len(parts) >= 2 else parts[0]


async def _verify(
    sink: DiscardSink | None, before: SinkCount | None, payload_bytes: int, what: str
) -> int | None:
    """Body bytes the sink read since ``before``; IntegrityError if fewer than the payload."""
    if sink is None or before is None:
        return None
    delta = (await sink.acounted()) - before
    if delta.body_bytes < payload_bytes or delta.failed_requests:
        raise IntegrityError(
            what,
            f"sink read {delta.body_bytes} body bytes ({delta.failed_requests} failed requests),"
            f" expected at least {payload_bytes}",
        )
    return delta.body_bytes


async def sdk_upload_large(
    url: str,
    connection_string: str,
    path: str | os.PathLike[str],
    *,
    concurrency_candidates: Sequence[int] = (4, 8, 16),
    block_bytes: int | None = None,
    repeats: int = 1,
    sink: DiscardSink | None = None,
    blob_name: str = "peer/large.bin",
) -> PeerResult:
    """Upload one file with the SDK ``repeats`` times per candidate concurrency; return the
    fastest trial.

    ``block_bytes`` sets the SDK's ``max_block_size`` (None: the SDK default, 4 MiB; measured
    here, 8 MiB blocks were slower: the SDK then switches to its sub-stream path).
    """
    size_bytes = os.path.getsize(path)
    container = container_name_from_url(url)
    client_kwargs = {} if block_bytes is None else {"max_block_size": block_bytes}
    best: PeerResult | None = None
    trials: list[tuple[int, float]] = []
    async with BlobServiceClient.from_connection_string(
        connection_string, **client_kwargs
    ) as service:
        blob = service.get_blob_client(container, blob_name)
        for concurrency in [c for c in concurrency_candidates for _ in range(repeats)]:
            before = await sink.acounted() if sink is not None else None
            with open(path, "rb") as f:
                start_s = time.perf_counter()
                await blob.upload_blob(
                    f, length=size_bytes, max_concurrency=concurrency, overwrite=True
                )
                seconds = time.perf_counter() - start_s
            trials.append((concurrency, seconds))
            verified = await _verify(sink, before, size_bytes, f"sdk_upload_large c={concurrency}")
            if best is None or seconds < best.seconds:
                best = PeerResult(
                    gbps=size_bytes / seconds / GB,
                    files_per_s=1 / seconds,
                    bytes=size_bytes,
                    files=1,
                    seconds=seconds,
                    concurrency=concurrency,
                    sink_bytes_verified=verified,
                )
    if best is None:
        raise ValueError("concurrency_candidates is empty")
    return _with_trials(best, trials)


async def _upload_files_once(
    container: ContainerClient, paths: Sequence[str | os.PathLike[str]], concurrency: int
) -> int:
    """Upload every file with ``concurrency`` tasks pulling from one shared queue."""
    total_bytes = 0
    next_index = 0

    async def worker() -> None:
        nonlocal total_bytes, next_index
        while next_index < len(paths):
            index = next_index
            next_index += 1
            # A plain blocking read, as an SDK user would write it: small files in page cache.
            with open(paths[index], "rb") as f:
                data = f.read()
            await container.upload_blob(
                f"peer/small/{index:08d}-{os.path.basename(paths[index])}", data, overwrite=True
            )
            total_bytes += len(data)

    # A fixed pool of workers is the bounded set of tasks (the same bound as a semaphore over
    # one task per file, without creating a million tasks for a million files).
    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(paths)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        # on the first failure, stop the siblings before the client closes under them
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return total_bytes


async def sdk_upload_small_files(
    url: str,
    connection_string: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    concurrency: int = 64,
    concurrency_candidates: Sequence[int] | None = None,
    repeats: int = 1,
    sink: DiscardSink | None = None,
) -> PeerResult:
    """Upload every file with ``ContainerClient.upload_blob``; return the best trial's files/s.

    Tries ``concurrency_candidates`` (default: concurrency / 4, / 2 and itself), each
    ``repeats`` times, and keeps the fastest trial. azure-core's aiohttp transport pools at most
    100 connections, so values above 100 only queue.
    """
    if concurrency_candidates is None:
        concurrency_candidates = sorted(
            {max(1, concurrency // 4), max(1, concurrency // 2), concurrency}
        )
    container_name = container_name_from_url(url)
    best: PeerResult | None = None
    trials: list[tuple[int, float]] = []
    async with BlobServiceClient.from_connection_string(connection_string) as service:
        container = service.get_container_client(container_name)
        for candidate in [c for c in concurrency_candidates for _ in range(repeats)]:
            before = await sink.acounted() if sink is not None else None
            start_s = time.perf_counter()
            total_bytes = await _upload_files_once(container, paths, candidate)
            seconds = time.perf_counter() - start_s
            trials.append((candidate, seconds))
            verified = await _verify(
                sink, before, total_bytes, f"sdk_upload_small_files c={candidate}"
            )
            if best is None or seconds < best.seconds:
                best = PeerResult(
                    gbps=total_bytes / seconds / GB,
                    files_per_s=len(paths) / seconds,
                    bytes=total_bytes,
                    files=len(paths),
                    seconds=seconds,
                    concurrency=candidate,
                    sink_bytes_verified=verified,
                )
    if best is None:
        raise ValueError("concurrency_candidates is empty")
    return _with_trials(best, trials)


def _with_trials(result: PeerResult, trials: list[tuple[int, float]]) -> PeerResult:
    return PeerResult(**{**result.__dict__, "trials": tuple(trials)})
