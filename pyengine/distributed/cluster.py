"""The Dask cluster a distributed job runs on: an embedded LocalCluster (``workers``) or an
existing scheduler (``scheduler``), with an asynchronous client on the job's event loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pyengine.distributed.worker import warm_up
from pyengine.errors import ConfigError
from pyengine.options import CopyOptions

#: how long a job waits for an existing cluster to show its first worker
WORKERS_WAIT_S = 60.0


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own INFO and WARNING lines (a scheduler or nannies in this process, a worker
    that died and was replaced) would fill the CLI's stderr; the job says what matters in its
    own words (a lost shard, a failed file). Restored after the job."""
    import distributed  # noqa: F401  (its import sets the logger's level from Dask's config)

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.asynccontextmanager
async def open_client(options: CopyOptions) -> AsyncIterator[tuple[Any, int]]:
    """(client, number of workers) for the job; the LocalCluster, if one was started, and the
    client are closed on the way out, whatever ends the job (a signal cancels it here too)."""
    with _quiet_dask():
        async with _open_client(options) as opened:
            yield opened


@contextlib.asynccontextmanager
async def _open_client(options: CopyOptions) -> AsyncIterator[tuple[Any, int]]:
    from distributed import Client, LocalCluster

    if options.scheduler:
        try:
            client = await Client(options.scheduler, asynchronous=True, timeout=WORKERS_WAIT_S)
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: an unknown scheme (http://)
            raise ConfigError(options.scheduler, f"cannot reach the Dask scheduler: {e}") from None
        try:
            await client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
            workers = len(client.scheduler_info()["workers"]) or 1
            await client.run(warm_up)
            yield client, workers
        finally:
            await client.close()
        return
    n_workers = options.workers or 1
    if n_workers < 1:
        raise ConfigError("--workers", "must be at least 1")
    # processes: one engine (native pipeline, event loop, connections) per worker process.
    # Two threads each, so a worker starts its next shard while the last files of one finish
    # (both share the worker's engine and its memory cap). memory_limit=0: the pipeline's
    # memory_cap_bytes is the hard cap per worker; Dask's nanny need not police it.
    # silence_logs: the workers' INFO lines would mix with --json output.
    cluster = await LocalCluster(
        n_workers=n_workers,
        threads_per_worker=2,
        processes=True,
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.ERROR,
        asynchronous=True,
    )
    try:
        client = await Client(cluster, asynchronous=True)
        try:
            await client.run(warm_up)
            yield client, n_workers
        finally:
            await client.close()
    finally:
        await cluster.close()
