"""A copy job whose files are sent by Dask workers: the driver side.

The driver is the in-process job (engine/job.py) in everything but the sending: it holds the
lock, the journal and the manifest, scans, plans, journals each file version, decides whether it
is already there and what it may resume (decide.py), and counts every outcome. Only a file's
read-send-commit (send.py's `_send_version`) runs in a worker, gathered with others into shards
(dispatch.py); the worker's acks and commit points come back as events and go into this
journal as they would in one process, so `jobs`, `resume`, `verify` and the manifest read a
distributed job like any other, and either mode resumes the other's jobs.

A file whose worker died (or whose shard failed) is decided again from the journal: committed
already (the blob holds its upload id: counted, not committed again), else sent again resuming
every block the journal holds acknowledged, at most MAX_ATTEMPTS times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from typing import Any
from urllib.parse import urlsplit

from pyengine.crypto import keyed_digest_hex
from pyengine.distributed.cluster import Cluster, open_client
from pyengine.distributed.dispatch import Dispatcher
from pyengine.distributed.shard import SetUp, WorkItem
from pyengine.distributed.worker import close_engine, open_engine
from pyengine.engine import metadata_names as mn
from pyengine.engine.context import EventCallback, FileTask
from pyengine.engine.decide import Decider
from pyengine.engine.job import _Job, _shielded
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.report import CopyReport
from pyengine.engine.send import Sender
from pyengine.errors import ConfigError
from pyengine.options import CopyOptions
from pyengine.targets.auth import redact
from pyengine.targets.open import destination, is_share
from pyengine.targets.profile import AZURE, choose_profile

log = logging.getLogger("pyengine")

#: sends of one file version whose worker died before it answered; then the file fails
MAX_ATTEMPTS = 4
#: files in flight per worker, in units of the in-process window (see files_window)
FILES_WINDOW_FACTOR = 3
#: environment variables that carry the credential; shipped so remote workers resolve the same
CREDENTIAL_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY")


class DistributedSender(Sender):
    """A Sender whose `_send_version` hands the file to a worker and journals its answer."""

    dispatcher: Dispatcher
    decide: Decider

    async def _send_version(self, task: FileTask) -> str | None:
        ctx = self.ctx
        assert ctx.journal is not None
        src, record = task.src, task.record
        ctx.journal.mark_uploading(record.file_id)
        ctx.emit("file_started", path=src.rel_path, blob=record.blob_name, bytes=src.size_bytes)
        common = {
            "size_bytes": src.size_bytes,
            "mtime_ns": src.mtime_ns,
            "blob": record.blob_name,
            "record": record,
        }
        why = ""
        commit_if: dict[str, str] | None = None
        for _ in range(MAX_ATTEMPTS):
            result = await self.dispatcher.send(WorkItem.from_task(task, commit_if))
            status = result["status"]
            ctx.report.blocks_resumed += result["blocks_resumed"]
            if status in ("changed", "foreign"):  # send_file reads it again, as in one process
                return status
            if status in ("copied", "failed"):
                await ctx.outcome(
                    src.rel_path,
                    status,
                    reason=result["reason"],
                    etag=result["etag"],
                    blake3_hex=result["blake3_hex"],
                    **common,
                )
                return None
            why = result["reason"] or ""
            committed, etag_now = await self._committed_before_loss(task)
            if committed is not None:
                etag, blake3_hex = committed
                await ctx.outcome(
                    src.rel_path, "copied", etag=etag, blake3_hex=blake3_hex, **common
                )
                return None
            # the blob as seen now, or none: a commit of the dead worker still in flight that
            # lands first makes the next commit fail its precondition (then found as ours)
            commit_if = {"if-match": etag_now} if etag_now else {"if-none-match": "*"}
            again = await self._resume_after_loss(task)
            if again is None:
                return "changed"
            task = again
        reason = f"its worker was lost {MAX_ATTEMPTS} times ({why})"
        await ctx.outcome(src.rel_path, "failed", reason=reason, **common)
        return None

    async def _committed_before_loss(
        self, task: FileTask
    ) -> tuple[tuple[str, str] | None, str | None]:
        """((etag, plaintext BLAKE3 hex) when the lost worker committed this file version
        before it died: the blob carries its upload id, as after a kill in one process; the
        blob's ETag now, None when there is no blob)."""
        assert self.ctx.store is not None
        props = await self.ctx.store.get_properties(task.record.blob_name)
        if props is None:
            return None, None
        if meta_get(props.metadata, mn.UPLOAD_ID) != task.record.upload_id:
            return None, props.etag
        plain_hex = meta_get(props.metadata, mn.BLAKE3)
        if plain_hex:
            return (props.etag, plain_hex), props.etag
        keyed_hex = meta_get(props.metadata, mn.KEYED_BLAKE3)
        if task.content_key is None or keyed_hex is None:
            return None, props.etag
        digest = await self.hash_file(task.src)  # encrypted: prove it holds these bytes
        if digest is not None and keyed_digest_hex(task.content_key, digest.hex()) == keyed_hex:
            return (props.etag, digest.hex()), props.etag
        return None, props.etag

    async def _resume_after_loss(self, task: FileTask) -> FileTask | None:
        """The file's next send: every block the journal now holds acknowledged and the service
        still stages is resumed, under the content key those blocks were encrypted with."""
        journal = self.ctx.journal
        assert journal is not None
        await journal.aflush()
        record = task.record
        record.acked_blocks = journal.acked_blocks(record.file_id)
        record.encryptiondata = task.encryptiondata
        return await self.decide.prepare(task.src, record, task.chunk_bytes, task.single_put, True)


class DistributedJob(_Job):
    def __init__(
        self,
        source: str,
        dest: Any,
        options: CopyOptions,
        on_event: EventCallback | None,
        *,
        cluster: Cluster,
    ) -> None:
        super().__init__(source, dest, options, on_event)
        sender = DistributedSender(self.ctx, self.sender.routing)
        sender.profile = self.profile
        self.sender = sender
        self.decide = sender.decide = Decider(self.ctx, sender)
        self.cluster = cluster
        self.client = cluster.client
        self.workers = cluster.workers
        self.worker_stats: list[dict[str, float]] = []

    def files_window(self) -> int:
        # every worker keeps its own request window full, with as many files again on their
        # way (in shards, or answered but not yet heard of: events come in batches)
        return super().files_window() * self.workers * FILES_WINDOW_FACTOR

    async def _run_locked(self, credential: Any) -> None:
        await super()._run_locked(credential)
        r = self.ctx.report  # the workers' retries beside the driver's (HEADs, listings); CPU
        for stats in self.worker_stats:
            r.retries += int(stats.get("retries", 0))
            r.throttled_s += stats.get("throttled_s", 0.0)
            r.stalls += int(stats.get("stalls", 0))
            r.workers_cpu_s += stats.get("cpu_s", 0.0)

    async def copy_all(self) -> None:
        ctx, opts = self.ctx, self.ctx.options
        setup = SetUp(
            token=uuid.uuid4().hex,
            job_id=ctx.report.job_id,
            dest=ctx.dest,
            # a worker needs content keys only, never a key-encryption key
            options=dataclasses.replace(opts, kek=None, old_keks=()),
            env={k: os.environ[k] for k in CREDENTIAL_ENV if k in os.environ},
            reruns=self.cluster.reruns,
            progress=ctx.on_event is not None,
        )
        dispatcher = Dispatcher(self.client, setup, ctx, self.workers)
        self.sender.dispatcher = dispatcher  # type: ignore[attr-defined]
        dispatcher.start()
        # the workers' engines open while this process scans and decides the first files
        opening = asyncio.ensure_future(self.client.run(open_engine, setup, on_error="ignore"))
        try:
            await super().copy_all()
        except BaseException:
            # stopped or failed: the shards in flight are abandoned (the journal holds what
            # was acknowledged), not waited for
            await _shielded(self._close(setup, dispatcher, opening, finished=False))
            raise
        await self._close(setup, dispatcher, opening, finished=True)

    async def _close(
        self, setup: SetUp, dispatcher: Dispatcher, opening: asyncio.Future[Any], *, finished: bool
    ) -> None:
        """The job's engines closed on every worker; a worker or a scheduler gone by now costs
        its retry and CPU figures only (the files' outcomes are all journaled already)."""
        await dispatcher.stop(wait=finished)
        # an engine still opening is closed after it opened, not left behind
        await asyncio.wait([opening])
        if not opening.cancelled() and opening.exception() is not None:
            log.info("cannot open the job's engines ahead: %s", redact(str(opening.exception())))
        elif not opening.cancelled():
            opened = opening.result()
            log.debug(
                "engines opened ahead: %d of %d",
                sum(v is True for v in opened.values()),
                len(opened),
            )
        if self.client.status != "running":  # the scheduler is gone: nothing to reach
            log.info("cannot close the job's engines: the client is %s", self.client.status)
            return
        try:
            stats = await self.client.run(close_engine, setup.token, on_error="ignore")
            self.worker_stats = [s for s in stats.values() if isinstance(s, dict)]
            await self.client.set_metadata([setup.topic], 0)  # the job's shard marks
        except Exception as e:  # a cluster gone (ClosedClientError, OSError, a timeout)
            log.info("cannot close the job's engines on the cluster: %s", redact(str(e)))


async def copy_distributed(
    source_path: str, dest: str, options: CopyOptions, on_event: EventCallback | None
) -> CopyReport:
    """engine.job.copy on a Dask cluster (options.workers or options.scheduler)."""
    target = destination(dest)
    if is_share(target):
        raise ConfigError("--workers", "a mounted share is copied in one process")
    host = urlsplit(target.account_url).hostname or ""
    if choose_profile(options.target, host).name != AZURE.name:
        # what a Data Box cannot store is journaled pending per file (send.py): not relayed
        raise ConfigError("--workers", "a Data Box is copied in one process")
    async with open_client(options) as cluster:
        job = DistributedJob(source_path, target, options, on_event, cluster=cluster)
        return await job.run()
