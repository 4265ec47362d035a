"""The Dask cluster a distributed job runs on: an embedded LocalCluster (``workers``) or an
existing scheduler (``scheduler``), with an asynchronous client on the job's event loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from pyengine.distributed.worker import warm_up
from pyengine.errors import ConfigError
from pyengine.options import CopyOptions

log = logging.getLogger("pyengine")

#: how long a job waits for an existing cluster to show its first worker
WORKERS_WAIT_S = 60.0
#: Dask threads per embedded worker: shards running at once per worker. A shard is a coroutine
#: on the worker's event loop (worker.run_shard) that only waits for the worker's engine (one
#: pipeline, one memory cap), so more cost nothing but let the next shards' files join the
#: engine's window while the last file of a shard (a large one) is still being sent.
THREADS_PER_WORKER = 4


@dataclass(frozen=True)
class Cluster:
    client: Any
    workers: int
    #: whether the scheduler runs a task again after its worker died (Dask's allowed-failures
    #: > 0): then each shard checks it was not started before (worker.run_shard, one round trip
    #: to the scheduler per shard); the embedded cluster allows no re-run, a lost shard fails
    #: (KilledWorker) and the driver builds it anew from its journal
    reruns: bool


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own lines (a scheduler or nannies in this process, a worker that died and was
    replaced, at ERROR the tracebacks of a client whose scheduler went away) would fill the
    CLI's stderr; the job says what matters in its own words (a lost shard, a failed file, a
    lost scheduler: errors.ClusterError). Restored after the job."""
    import distributed  # noqa: F401  (its import sets the logger's level from Dask's config)

    # Dask's configuration gives some of its loggers levels of their own (distributed.client)
    names = ["distributed"] + [
        name
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("distributed.") and isinstance(logger, logging.Logger) and logger.level
    ]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.asynccontextmanager
async def open_client(options: CopyOptions) -> AsyncIterator[Cluster]:
    """The job's cluster; the LocalCluster, if one was started, and the client are closed on
    the way out, whatever ends the job (a signal cancels it here too)."""
    with _quiet_dask():
        async with _open_client(options) as opened:
            yield opened


@contextlib.asynccontextmanager
async def _open_client(options: CopyOptions) -> AsyncIterator[Cluster]:
    from distributed import Client, LocalCluster

    if options.scheduler:
        try:
            client = await Client(options.scheduler, asynchronous=True, timeout=WORKERS_WAIT_S)
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: an unknown scheme (http://)
            raise ConfigError(options.scheduler, f"cannot reach the Dask scheduler: {e}") from None
        try:
            await client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
            workers = worker_count(client.scheduler_info()) or 1
            await client.run(warm_up)
            yield Cluster(client, workers, await _reruns(client))
        finally:
            await client.close()
        return
    n_workers = options.workers or 1
    if n_workers < 1:
        raise ConfigError("--workers", "must be at least 1")
    # processes: one engine (native pipeline, event loop, connections) per worker process.
    # memory_limit=0: the pipeline's
    # memory_cap_bytes is the hard cap per worker; Dask's nanny need not police it.
    # silence_logs: the workers' Dask lines would mix with the job's output (at ERROR, a lost
    # shard's "Compute Failed" and its traceback; at shutdown, a heartbeat to a scheduler that
    # closed): the driver says why a shard was lost, in its own words (dispatch.py).
    cluster = await LocalCluster(
        n_workers=n_workers,
        threads_per_worker=THREADS_PER_WORKER,
        processes=True,
        dashboard_address=None,
        # the scheduler serves /health and /metrics whatever the dashboard: on a free loopback
        # port, not on :8787 of every interface (a second job's cluster warned on stderr)
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        memory_limit=0,
        silence_logs=logging.CRITICAL,
        asynchronous=True,
    )
    # the scheduler runs in this process: a shard whose worker died fails at once instead of
    # running again with the resume state it was given before (see Cluster.reruns). Dask
    # re-runs a task regardless after an *expected* worker removal (a retired worker), which
    # nothing does to the cluster of one job.
    cluster.scheduler.allowed_failures = 0
    try:
        client = await Client(cluster, asynchronous=True)
        try:
            await client.run(warm_up)
            yield Cluster(client, n_workers, reruns=False)
        finally:
            await client.close()
    finally:
        await cluster.close()


def worker_count(info: Any) -> int:
    """Workers in a client's view of the cluster (Client.scheduler_info(): an asynchronous
    client's holds the count only, refreshed every 2 s; older Dask, the workers themselves)."""
    if "n_workers" in info:
        return int(info["n_workers"])
    return len(info.get("workers") or {})


def _allowed_failures(dask_scheduler: Any = None) -> int:
    return int(dask_scheduler.allowed_failures)


async def _reruns(client: Any) -> bool:
    """Whether an existing scheduler runs a task again after its worker died; assumed so when
    it cannot say (a scheduler that refuses Client.run_on_scheduler)."""
    try:
        return bool(await client.run_on_scheduler(_allowed_failures))
    except Exception as e:  # any refusal: keep the per-shard check
        log.info("the scheduler did not say whether it re-runs tasks: %s", type(e).__name__)
        return True
