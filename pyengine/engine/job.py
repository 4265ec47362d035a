"""One copy job, start to end: the lock, the target, the journal and the manifest; the scan
streamed in batches; a bounded window of files in flight; the report.

The stages it drives, each in its own module:
- decide.py: per file, nothing / resume / send (already there, --check, content keys);
- send.py: the native pipeline's completions sent to the target, and the commit, under the
  ordering rules that keep "nothing mismatching its source is ever committed";
- mirror.py: the deletion pass that runs after every copy of the run is durable.
They share one JobContext (context.py): options, destination, target, journal, manifest, report,
and the one place a file's outcome is counted and an event sent.

Every acknowledged block and every commit is journaled, so a killed job resumes block by block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyengine import _core
from pyengine.engine.collections_paused import fewer_collections
from pyengine.engine.context import EventCallback, JobContext
from pyengine.engine.decide import Decider, check_same_encryption
from pyengine.engine.delta import NOT_READY, UNKNOWN, ListingJoin, listed_unchanged
from pyengine.engine.dryrun import DryRunDecider, dry_run
from pyengine.engine.mirror import DeletionPass
from pyengine.engine.one_file import FileSteps
from pyengine.engine.plan import check_block_bytes
from pyengine.engine.report import CopyReport
from pyengine.engine.scan import ScanProblem, SourceFile, display_path, scan_batches
from pyengine.engine.send import Routing, Sender
from pyengine.engine.taskowner import TaskOwner
from pyengine.engine.unchanged import record_unchanged
from pyengine.engine.unchanged import takes as unchanged_here
from pyengine.errors import (
    ConfigError,
    JournalError,
)
from pyengine.options import CopyOptions
from pyengine.state.joblock import JobLock, job_lock_path
from pyengine.state.journal import Journal, default_journal_path
from pyengine.state.manifest import ManifestWriter, default_manifest_path
from pyengine.state.pending import ensure_table, files_pending
from pyengine.targets.azure_blob import Destination, redact, resolve_credential
from pyengine.targets.base import Target
from pyengine.targets.open import check_options, destination, is_share, open_target
from pyengine.targets.profile import choose_profile

if TYPE_CHECKING:
    from pyengine.policy import Policy

log = logging.getLogger("pyengine")

#: how often acknowledged blocks are group-committed to the journal
JOURNAL_FLUSH_S = 0.5


class _Job(FileSteps):
    def __init__(
        self,
        source: str,
        dest: Destination,
        options: CopyOptions,
        on_event: EventCallback | None,
        *,
        ctx: JobContext | None = None,
        routing: Routing | None = None,
    ) -> None:
        # ctx and routing are given by a policy job (policy_job.py): one lane per tenant
        self.ctx = ctx = ctx or JobContext(
            source=source, dest=dest, options=options, on_event=on_event
        )
        self.sender = Sender(ctx, routing)
        self.decide = (DryRunDecider if options.dry_run else Decider)(ctx, self.sender)
        self.mirror = DeletionPass(ctx)
        #: the online delta's listing join, when this run uses one (start_delta)
        self.delta: ListingJoin | None = None
        # Azure or a Data Box (--target, else the host name): REST version and plan-time limits
        self.profile = choose_profile(options.target, urlsplit(dest.account_url).hostname or "")
        self.sender.profile = self.profile

    # --- the job ---------------------------------------------------------------------------

    async def run(self) -> CopyReport:
        try:
            with fewer_collections():
                return await self._run()
        finally:
            self.mirror.close()
            if self.delta is not None:
                await self.delta.aclose()
                self.delta.close()

    async def _run(self) -> CopyReport:
        ctx, opts = self.ctx, self.ctx.options
        start = time.monotonic()
        check_options(ctx.dest, opts)  # a share refuses --encrypt (open.py says why)
        if opts.encrypt and opts.kek is None:
            raise ConfigError("--encrypt", "a key-encryption key is required (--kek-file)")
        if not os.path.exists(ctx.source):  # the job cannot start: a usage error (exit 2)
            raise ConfigError(ctx.source, "no such file or directory")
        credential = (
            None if is_share(ctx.dest) else resolve_credential(ctx.dest, opts.connection_string)
        )
        # A job runs at most once at a time: a second run fails here, before it touches the
        # destination or the journal (see joblock.py for why the lock is per job).
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if not opts.dry_run:
            journal_path = opts.journal_path or default_journal_path()
            lock = JobLock(
                job_lock_path(journal_path, ctx.source, ctx.dest.redacted()),
                subject=f"{display_path(ctx.source)} -> {ctx.dest.redacted()}",
            )
        with lock:
            await self._run_locked(credential)
        ctx.report.elapsed_s = time.monotonic() - start
        ctx.report.dry_run = opts.dry_run
        ctx.emit("job_finished", extra=ctx.report.to_json())
        return ctx.report

    async def _run_locked(self, credential: Any) -> None:
        """The job, under its lock: the store, the journal, the manifest."""
        ctx, opts = self.ctx, self.ctx.options
        # a blob store or a mounted share (targets/open.py); the rest of the engine sees the
        # interface only (targets/base.py)
        async with open_target(ctx.dest, credential, opts, profile=self.profile) as target:
            ctx.store = target
            if opts.dry_run:
                await dry_run(self, target)
            else:
                await target.ensure_container(create=opts.create_container)
                with Journal.open(opts.journal_path) as journal:
                    await self._run_journaled(target, journal)
            stats = target.stats
            r = ctx.report
            r.retries, r.throttled_s, r.stalls = stats.retries, stats.throttled_s, stats.stalls
            r.concurrency_min, r.concurrency_max = stats.concurrency_min, stats.concurrency_max

    async def prefix_is_empty(self, target: Target) -> bool:
        listing = target.list_blobs(self.ctx.dest.prefix, metadata=False, page_size=1)
        try:
            return await anext(listing, None) is None
        finally:
            await listing.aclose()

    # --- online delta (issue 11 item 4): one streamed listing instead of a HEAD per file ---

    def start_delta(self, target: Target) -> None:
        """A new job of a tree into a prefix that holds blobs compares the scan with one
        streamed List Blobs (engine/delta.py) instead of one HEAD per file. Always, not only
        past some size: the deletion report lists the whole prefix at the end of every tree
        copy anyway, and reuses this listing instead (mirror.py), so a HEAD per file would
        come on top of the same listing. A single file keeps its one HEAD."""
        ctx = self.ctx
        if ctx.dest_was_empty or not os.path.isdir(ctx.source):
            return
        self.delta = ListingJoin(target.list_blobs(ctx.dest.prefix, metadata=True))
        self.mirror.listing = self.delta

    async def delta_lookup(self, src: SourceFile) -> object:
        """The listing entry of this file's blob (None: no such blob), or UNKNOWN: HEAD it.
        Called in scan order, from the scan loop only."""
        if self.delta is None:
            return UNKNOWN
        name = self.ctx.dest.prefix + src.rel_path
        found = self.delta.lookup_now(name)
        return await self.delta.lookup(name) if found is NOT_READY else found

    def delta_inline(self, src: SourceFile, listed: object) -> bool:
        """Whether the listing already shows this file unchanged (--check=metadata): then it
        is decided in the scan loop, no task of its own. Measured on 100,000 unchanged files
        (bench delta): a task per file was a fifth of the time per file; a file decided here
        sends no request but a rare key re-wrap."""
        return (
            self.delta is not None
            and self.ctx.options.check == "metadata"
            and listed_unchanged(src, listed)
        )

    async def _run_journaled(self, target: Target, journal: Journal) -> None:
        """A real run: resume the unfinished job of this source and destination or start one,
        copy with its manifest, then record how it ended."""
        ctx, opts = self.ctx, self.ctx.options
        ctx.journal = journal
        ensure_table(journal)  # properties the destination cannot store (state/pending.py)
        job_id = journal.find_unfinished_job(ctx.source, ctx.dest.redacted())
        ctx.resumed = job_id is not None
        if job_id is not None:
            check_same_encryption(journal.get_job(job_id), opts)
        if not ctx.resumed and opts.check != "none":
            ctx.dest_was_empty = await self.prefix_is_empty(target)
            self.start_delta(target)
        if job_id is None:
            # durable at once (one commit): off the loop like every journal write
            job_id = await asyncio.to_thread(
                journal.create_job, ctx.source, ctx.dest.redacted(), self._job_options()
            )
        ctx.report.job_id = job_id
        manifest_path = opts.manifest_path or default_manifest_path(job_id, journal.path)
        ctx.report.manifest_path = str(manifest_path)
        ctx.emit(
            "job_started",
            extra={"job_id": job_id, "resumed": ctx.resumed, "manifest": str(manifest_path)},
        )
        # Group commits run in the journal's writer thread from here on: the loop never waits
        # for an fsync while blocks are in flight.
        journal.start_writer()
        try:
            async with ManifestWriter(manifest_path, redact=redact) as manifest:
                ctx.manifest = manifest
                # A journal failure raises out of copy_all: no deletion runs, and the job stays
                # "running" in the journal, so a re-run resumes it.
                await self.copy_all()
                await self.mirror.report_deletions()
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Stopped (SIGINT/SIGTERM in the CLI, a cancelled task in a library): copy_all has
            # cancelled the requests in flight; what was acknowledged is made durable and the
            # job marked interrupted, so `jobs` says so and a re-run resumes it block by block.
            await _shielded(self._mark_interrupted(journal, job_id))
            raise
        # the writer's last commit and the job row, off the loop (a listener's progress display
        # or a library's other tasks keep running)
        await asyncio.to_thread(journal.stop_writer)
        ctx.report.files_pending_finalize = await asyncio.to_thread(files_pending, journal, job_id)
        await asyncio.to_thread(
            journal.finish_job, job_id, "completed" if ctx.report.ok else "failed"
        )

    async def _mark_interrupted(self, journal: Journal, job_id: str) -> None:
        try:
            await asyncio.to_thread(journal.stop_writer)
            await asyncio.to_thread(journal.finish_job, job_id, "interrupted")
        except JournalError as e:
            # the journal cannot be written: the job stays "running", which `jobs` shows as
            # "interrupted (holder gone)" once this process is gone; a re-run resumes it alike
            log.warning("%s: cannot mark the job interrupted: %s", job_id, e.reason)

    def _job_options(self) -> dict[str, Any]:
        """The options worth keeping with the job: no key, no connection string."""
        o = self.ctx.options
        return {
            "threads": o.threads,
            "memory_cap_bytes": o.memory_cap_bytes,
            "block_bytes": o.block_bytes,
            "encrypt": o.encrypt,
            "kek_id": o.kek.get_kid() if o.kek is not None else None,
            "tier": o.tier,
            "tags": dict(o.tags),
            "include": list(o.include),
            "exclude": list(o.exclude),
            "check": o.check,
            "delete_destination": o.delete_destination,
            "target": self.profile.name,
            "put_md5": o.put_md5,
            # a file path, not a secret: a resumed Data Box job trusts the device again
            "ca_cert_file": os.path.abspath(o.ca_cert_file) if o.ca_cert_file else None,
            "content_type": o.content_type,
        }

    # --- the scan and the files in flight --------------------------------------------------

    async def copy_all(self) -> None:
        """Scan, copy every file, and make the journal durable. Every task it starts (files,
        blocks, the periodic journal flush) is owned by one TaskOwner: the first failure
        (a JournalError, a bug) cancels the others and is raised here; a cancellation of the
        job cancels the blocks in flight; nothing of the copy runs after this returns."""
        ctx, opts = self.ctx, self.ctx.options
        loop = asyncio.get_running_loop()
        # Files in flight: enough to keep the request window full with small files; large files
        # are bounded by the native memory cap (readers wait for buffers).
        window = asyncio.Semaphore(self.files_window())
        files: set[asyncio.Task[None]] = set()

        async def one(src: SourceFile, listed: object) -> None:
            try:
                if listed is UNKNOWN:
                    await self.copy_file(src)
                else:  # the online delta's entry (or None): no HEAD for this file
                    await self.copy_file(src, listed=listed)
            finally:
                window.release()

        async def start_file(src: SourceFile, listed: object) -> None:
            await window.acquire()
            t = owner.spawn(one(src, listed))
            files.add(t)
            t.add_done_callback(files.discard)

        with _core.Pipeline(opts.threads, opts.memory_cap_bytes, opts.direct_io) as pipeline:
            self.attach(pipeline, None)
            loop.add_reader(pipeline.fileno(), self.sender.on_pipeline_ready)
            try:
                # The owner is left (its tasks all ended) before the pipeline closes: no upload
                # holds a pooled buffer of a closed pipeline.
                async with TaskOwner() as owner:
                    self.attach(pipeline, owner)
                    flusher = None
                    if ctx.journal is not None:
                        flusher = owner.spawn(
                            self._flush_journal_periodically(), name="pyengine-journal-flush"
                        )
                    batches = scan_batches(ctx.source, opts.include, opts.exclude)
                    async with contextlib.aclosing(batches):
                        async for batch in batches:
                            await self.copy_batch(batch, start_file)
                    if self.delta is not None:
                        await self.delta.finish()  # the rest of the listing: gone at source
                    while files:
                        # a failed file task aborts the job through the owner, not through here
                        await asyncio.wait(set(files))
                    if flusher is not None:
                        flusher.cancel()
                    if ctx.journal is not None:
                        # every ack and state of the run durable before deletions are decided;
                        # a journal that cannot be written fails the job here
                        await ctx.journal.aflush()
            finally:
                self.attach(pipeline, None)
                loop.remove_reader(pipeline.fileno())

    async def copy_batch(
        self, batch: list[SourceFile | ScanProblem], start_file: Callable[..., Awaitable[None]]
    ) -> None:
        """One scan batch: each file decided in this loop (refused, or shown unchanged by the
        delta's listing) or handed to ``start_file`` for a task of its own."""
        ctx = self.ctx
        self.mirror.claim_names(batch)
        unchanged: list[tuple[SourceFile, Any]] = []
        try:
            for item in batch:
                if isinstance(item, ScanProblem):
                    if self.mirror.scan_problem(item):  # a file: it fails
                        await self.refuse(item.rel_path or item.path, item.reason, size_bytes=0)
                    continue
                listed = await self.delta_lookup(item)
                if not self.delta_inline(item, listed):
                    await start_file(item, listed)
                elif unchanged_here(ctx, listed):  # type: ignore[arg-type]
                    unchanged.append((item, listed))
                else:
                    await self.copy_file(item, listed=listed)
        except asyncio.CancelledError:
            # stopped mid-batch: what was decided is recorded, as the per-file path would have
            # recorded it already
            record_unchanged(ctx, self.profile, unchanged)
            raise
        if unchanged:  # the delta's unchanged files, a batch at once
            left, due = record_unchanged(ctx, self.profile, unchanged)
            if due and ctx.manifest is not None:
                await ctx.manifest.flush()
            for item, listed in left:
                await self.copy_file(item, listed=listed)

    def files_window(self) -> int:
        """Files in flight at once (a distributed job: per worker, distributed/driver.py)."""
        return max(8, self.ctx.options.max_concurrency * 2)

    def attach(self, pipeline: Any, owner: TaskOwner | None) -> None:
        """Hands the open pipeline and the task owner to the stages (a policy job: to every
        tenant's lane)."""
        self.sender.pipeline = pipeline
        self.ctx.owner = owner

    async def _flush_journal_periodically(self) -> None:
        """Group commits at least every JOURNAL_FLUSH_S; a failure ends this task, and the task
        owner fails the job with it."""
        while self.ctx.journal is not None:
            await asyncio.sleep(JOURNAL_FLUSH_S)
            await self.ctx.journal.aflush()


async def _shielded(coro: Any) -> None:
    """Runs coro to its end even if the task awaiting it is cancelled again meanwhile."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def copy(
    source: str | os.PathLike[str],
    dest: str | None = None,
    options: CopyOptions | None = None,
    on_event: EventCallback | None = None,
    *,
    policy: Policy | None = None,
) -> CopyReport:
    """Copy a file or a tree into a block-blob container; see README "Library". With a
    migration ``policy`` (pyengine.policy.load_policy) dest is None: each file goes to its
    tenant's destination (engine/policy_job.py).

    Raises ConfigError (bad destination, missing source, no key), AuthError or
    DestinationError when the job cannot start, ClusterError when a distributed job's cluster
    is gone (resumable); per-file problems are counted in the report.
    """
    options = options or CopyOptions()
    source_path = os.path.abspath(os.fspath(source))
    check_block_bytes(options.block_bytes, encrypt=options.encrypt)
    if policy is not None:
        from pyengine.engine.policy_job import copy_with_policy

        if options.workers or options.scheduler:  # one lane per tenant, in this process
            raise ConfigError("--workers", "not with --policy: a policy copy runs in one process")

        if dest is not None:
            raise ConfigError("--policy", "the policy names the destinations: give no DEST")
        return await copy_with_policy(source_path, policy, options, on_event)
    if dest is None:
        raise ConfigError("copy", "a destination is required (or a policy)")
    if (options.workers or options.scheduler) and not options.dry_run:
        # --- scale-out: the same job with its files sent by Dask workers (issue 13) ---
        from pyengine.distributed.driver import copy_distributed

        return await copy_distributed(source_path, dest, options, on_event)
    job = _Job(source_path, destination(dest), options, on_event)
    return await job.run()
