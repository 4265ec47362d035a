"""The asyncio scheduler joining the native pipeline to the blob store, journal and manifest.

One job: scan the source (a producer thread, streamed in batches), plan each file, read, hash and
encrypt it in the native core, send its chunks as Put Block (or Put Blob for small files) as they
complete, and commit with Put Block List once the core has proved the file did not change while
read. Every acknowledged block and every commit is journaled, so a killed job resumes block by
block.

Ordering rules that keep "nothing mismatching its source is ever committed":
- a single-request file (Put Blob) is held until the core's FileDone, which comes after the final
  size/mtime check and carries the whole-file BLAKE3 that goes into the metadata;
- Put Block List is sent only after FileDone and after every block of 0..n-1 was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .blob import BlobProps, BlobStore, Destination, parse_destination, redact, resolve_credential
from .crypto import content_key_from_metadata, encryption_metadata, new_content_key
from .errors import ConfigError, PyEngineError, SourceError
from .journal import FileRecord, Journal
from .manifest import ManifestEntry, ManifestWriter, default_manifest_path
from .options import CopyOptions, MiB
from .plan import blob_metadata, blob_name, block_id, choose_block_bytes
from .report import CopyReport, Event
from .source import PathFilter, ScanProblem, SourceFile, display_path, scan

log = logging.getLogger("pyengine")

EventCallback = Callable[[Event], None]

#: scan entries handed from the scanner thread to the loop at once (one thread hop per batch)
SCAN_BATCH = 256
#: how often acknowledged blocks are group-committed to the journal
JOURNAL_FLUSH_S = 0.5
MIN_CHUNK_BYTES = 64 * 1024


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class _FileTask:
    """One file in flight."""

    src: SourceFile
    record: FileRecord
    chunk_bytes: int
    single_put: bool
    content_key: bytes | None
    encryptiondata: str | None
    #: block indexes the service already holds from an earlier run (journal ∩ Get Block List)
    resumable: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    uploads: set[asyncio.Task[None]] = field(default_factory=set)
    held: Any = None  # the single chunk of a Put Blob file, kept until FileDone
    failure: str | None = None
    done: Any = None  # _core.FileDone
    finished: asyncio.Future[None] | None = None
    hash_only: bool = False  # --check=hash: read to compare BLAKE3, send nothing


class _Job:
    def __init__(
        self,
        source: str,
        dest: Destination,
        options: CopyOptions,
        on_event: EventCallback | None,
    ) -> None:
        self.source = source
        self.dest = dest
        self.options = options
        self.on_event = on_event
        self.report = CopyReport()
        self.store: BlobStore | None = None
        self.journal: Journal | None = None
        self.manifest: ManifestWriter | None = None
        self.pipeline: Any = None
        self.tasks: dict[int, _FileTask] = {}
        self.resumed = False
        #: nothing under the prefix when a new job started: no blob can be up to date, so the
        #: per-file HEAD of --check is skipped (it halves the requests of a first migration)
        self.dest_was_empty = False
        self.problem_dirs: list[str] = []
        self.filter = PathFilter(options.include, options.exclude)
        # the core's file ids are uint64: hash-only reads use a range no journal id reaches
        self._hash_ids = iter(range(1 << 62, 1 << 63))

    # --- events and outcomes ---------------------------------------------------------------

    def emit(self, kind: str, path: str | None = None, **kw: Any) -> None:
        """Sends an event to the listener, if any. `path` is the raw relative path: shown here
        with undecodable bytes escaped, so every event prints and serialises as JSON."""
        if self.on_event is not None:
            shown = display_path(path) if path is not None else None
            self.on_event(Event(kind=kind, path=shown, **kw))  # type: ignore[arg-type]

    async def outcome(
        self,
        rel_path: str,
        status: str,
        *,
        size_bytes: int,
        mtime_ns: int = 0,
        blob: str | None = None,
        reason: str | None = None,
        record: FileRecord | None = None,
        etag: str | None = None,
        blake3_hex: str | None = None,
    ) -> None:
        """Counts a file once, journals it, writes its manifest line and emits its event."""
        r = self.report
        shown = display_path(rel_path)
        if status == "copied":
            r.files_copied += 1
            r.bytes_copied += size_bytes
            if record is not None and self.journal is not None:
                self.journal.mark_committed(
                    record.file_id, etag=etag or "", blake3_hex=blake3_hex or ""
                )
            self.emit("file_copied", path=rel_path, blob=blob, bytes=size_bytes)
        elif status == "skipped":
            r.files_skipped += 1
            r.bytes_skipped += size_bytes
            if record is not None and self.journal is not None:
                self.journal.mark_skipped(record.file_id, reason or "")
            self.emit("file_skipped", path=rel_path, blob=blob, bytes=size_bytes, reason=reason)
        else:
            r.files_failed += 1
            r.bytes_failed += size_bytes
            r.failures.append((shown, reason or "failed"))
            if record is not None and self.journal is not None:
                self.journal.mark_failed(record.file_id, reason or "failed")
            log.warning("%s: %s", shown, reason)
            self.emit("file_failed", path=rel_path, blob=blob, bytes=size_bytes, reason=reason)
        if self.manifest is not None:
            await self.manifest.write(
                ManifestEntry(
                    path=rel_path,
                    size_bytes=size_bytes,
                    mtime_ns=mtime_ns,
                    status=status,  # type: ignore[arg-type]
                    job_id=r.job_id,
                    blob_url=self.dest.blob_url(blob) if blob else None,
                    blake3=blake3_hex,
                    etag=etag,
                    error=reason if status == "failed" else None,
                    encrypted=self.options.encrypt,
                )
            )

    # --- the native pipeline ---------------------------------------------------------------

    def on_pipeline_ready(self) -> None:
        """add_reader callback: route completions to their files without blocking the loop."""
        for ev in self.pipeline.poll():
            task = self.tasks.get(ev.file_id)
            if task is None:  # a file abandoned after a failure: drop what is left of it
                if isinstance(ev, _core.Chunk):
                    ev.release()
                continue
            if isinstance(ev, _core.Chunk):
                self.on_chunk(task, ev)
            elif isinstance(ev, _core.FileDone):
                task.done = ev
                self.finish_when_sent(task)
            else:
                task.failure = ev.reason
                if task.held is not None:
                    task.held.release()
                    task.held = None
                self.finish_when_sent(task)

    def on_chunk(self, task: _FileTask, chunk: Any) -> None:
        if task.failure is not None or task.hash_only:
            chunk.release()
        elif task.single_put:
            task.held = chunk
        elif chunk.index in task.resumable and self._matches_journal(task, chunk):
            # Acknowledged in an earlier run and still staged at the service; its bytes were just
            # re-read and re-hashed, and they match what was sent then.
            task.acked.add(chunk.index)
            self.report.blocks_resumed += 1
            chunk.release()
            self.emit("progress", path=task.src.rel_path, bytes=chunk.plain_bytes)
        else:
            t = asyncio.get_running_loop().create_task(self.put_block(task, chunk))
            task.uploads.add(t)
            t.add_done_callback(task.uploads.discard)

    @staticmethod
    def _matches_journal(task: _FileTask, chunk: Any) -> bool:
        ack = (task.record.acked_blocks or {}).get(chunk.index)
        return (
            ack is not None
            and ack.length_bytes == chunk.payload_bytes
            and ack.crc64 == chunk.crc64
            and ack.xxh3_128 == chunk.xxh3_128
        )

    async def put_block(self, task: _FileTask, chunk: Any) -> None:
        assert self.store is not None
        with chunk:
            try:
                bid = block_id(task.record.upload_id, chunk.index)
                await self.store.put_block(
                    task.record.blob_name, bid, chunk.data, crc64=chunk.crc64
                )
            except PyEngineError as e:
                if task.failure is None:
                    task.failure = e.reason
                return
            task.acked.add(chunk.index)
            self.report.blocks_sent += 1
            if self.journal is not None:
                self.journal.ack_block(
                    task.record.file_id,
                    chunk.index,
                    length_bytes=chunk.payload_bytes,
                    crc64=chunk.crc64,
                    xxh3_128=chunk.xxh3_128,
                )
            self.emit("progress", path=task.src.rel_path, bytes=chunk.plain_bytes)

    def finish_when_sent(self, task: _FileTask) -> None:
        assert task.finished is not None
        if not task.uploads:  # the common case for small files: no task needed
            if not task.finished.done():
                task.finished.set_result(None)
            return

        async def wait_then_finish() -> None:
            while task.uploads:
                await asyncio.gather(*list(task.uploads), return_exceptions=True)
            assert task.finished is not None
            if not task.finished.done():
                task.finished.set_result(None)

        asyncio.get_running_loop().create_task(wait_then_finish())

    # --- one file --------------------------------------------------------------------------

    async def copy_file(self, src: SourceFile) -> None:
        opts = self.options
        try:
            name = blob_name(self.dest.prefix, src.rel_path)
            single_put = src.size_bytes <= opts.single_put_max_bytes
            if single_put:
                floor = _core.REGION_BYTES if opts.encrypt else MIN_CHUNK_BYTES
                chunk_bytes = max(floor, _next_pow2(src.size_bytes))
            elif opts.block_bytes:
                chunk_bytes = opts.block_bytes
            else:
                chunk_bytes = choose_block_bytes(
                    src.size_bytes, encrypt=opts.encrypt, path=src.rel_path
                )
        except SourceError as e:
            await self.outcome(src.rel_path, "failed", size_bytes=src.size_bytes, reason=e.reason)
            return

        if opts.dry_run:
            self.emit("file_planned", path=src.rel_path, blob=name, bytes=src.size_bytes)
            self.report.files_skipped += 1
            self.report.bytes_skipped += src.size_bytes
            return

        assert self.journal is not None and self.store is not None
        record = self.journal.begin_file(
            self.report.job_id,
            src.rel_path,
            size_bytes=src.size_bytes,
            mtime_ns=src.mtime_ns,
            inode=src.inode,
            device=src.device,
            blob_name=name,
            block_bytes=chunk_bytes,
            encrypted=opts.encrypt,
        )
        common = {
            "size_bytes": src.size_bytes,
            "mtime_ns": src.mtime_ns,
            "blob": name,
            "record": record,
        }
        if record.state in ("committed", "skipped"):
            # done by an earlier run of this job: counted again so the summary covers the source
            status = "copied" if record.state == "committed" else "skipped"
            await self.outcome(
                src.rel_path,
                status,
                etag=record.etag,
                blake3_hex=record.blake3_hex,
                reason=record.error,
                **common,
            )
            return
        try:
            verdict = await self.already_there(src, record)
            if verdict is not None:
                status, why, props = verdict
                if status == "copied":
                    await self.outcome(
                        src.rel_path,
                        "copied",
                        etag=props.etag,
                        blake3_hex=props.metadata.get("pyengine_blake3"),
                        **common,
                    )
                else:
                    await self.outcome(
                        src.rel_path,
                        "skipped",
                        reason=why,
                        etag=props.etag,
                        blake3_hex=props.metadata.get("pyengine_blake3"),
                        **common,
                    )
                return
            await self.send_file(src, record, chunk_bytes, single_put)
        except PyEngineError as e:
            await self.outcome(src.rel_path, "failed", reason=e.reason, **common)
        except (OSError, ValueError, RuntimeError) as e:
            # Not an anticipated failure: this file fails with one line, the job goes on, and
            # the traceback goes to the log (-vv) for the bug report.
            log.debug("unexpected error on %s", display_path(src.rel_path), exc_info=True)
            reason = f"unexpected error: {type(e).__name__}: {redact(str(e))}"
            await self.outcome(src.rel_path, "failed", reason=reason, **common)

    async def already_there(
        self, src: SourceFile, record: FileRecord
    ) -> tuple[str, str, BlobProps] | None:
        """Whether the destination already holds this version: ("copied", ...) when it is this
        job's own commit (a kill between commit and journal), ("skipped", ...) when --check says
        the blob is up to date, None when the file must be sent."""
        assert self.store is not None
        if not self.resumed and (self.options.check == "none" or self.dest_was_empty):
            return None
        props = await self.store.get_properties(record.blob_name)
        if props is None:
            return None
        md = props.metadata
        same_meta = (
            md.get("pyengine_size") == str(src.size_bytes)
            and md.get("pyengine_mtime_ns") == str(src.mtime_ns)
            and bool(md.get("pyengine_blake3"))
        )
        ours = md.get("pyengine_upload_id") == record.upload_id or (
            same_meta and md.get("pyengine_job_id") == self.report.job_id
        )
        if ours:  # a kill came between the commit and its journal record
            return ("copied", "committed by an earlier run of this job", props)
        if self.options.check == "metadata" and same_meta:
            return (
                "skipped",
                "unchanged (size, mtime and BLAKE3 recorded at the destination)",
                props,
            )
        if self.options.check == "hash" and md.get("pyengine_size") == str(src.size_bytes):
            digest = await self.hash_file(src)
            if digest is not None and digest.hex() == md.get("pyengine_blake3"):
                return (
                    "skipped",
                    "unchanged (BLAKE3 of the source equals the destination's)",
                    props,
                )
        return None

    async def hash_file(self, src: SourceFile) -> bytes | None:
        task = _FileTask(
            src=src,
            record=None,
            chunk_bytes=0,
            single_put=False,  # type: ignore[arg-type]
            content_key=None,
            encryptiondata=None,
            hash_only=True,
        )
        file_id = next(self._hash_ids)
        task.finished = asyncio.get_running_loop().create_future()
        self.tasks[file_id] = task
        try:
            chunk_bytes = max(8 * MiB, _next_pow2(-(-src.size_bytes // 50_000)))
            self.pipeline.submit(
                file_id,
                src.path,
                size_bytes=src.size_bytes,
                chunk_bytes=chunk_bytes,
                stages=_core.STAGE_BLAKE3,
            )
            await task.finished
        finally:
            del self.tasks[file_id]
        if task.failure is not None:
            raise SourceError(src.rel_path, task.failure)
        return task.done.blake3

    async def resumable_blocks(self, record: FileRecord) -> set[int]:
        """Blocks acknowledged in an earlier run that the service still holds uncommitted."""
        acked = record.acked_blocks or {}
        if not acked:
            return set()
        assert self.store is not None
        staged = {bid for bid, _ in await self.store.get_block_list(record.blob_name)}
        return {i for i in acked if block_id(record.upload_id, i) in staged}

    def content_key_for(self, record: FileRecord) -> tuple[bytes | None, str | None]:
        """The content key of an encrypted file version: the journaled one when this KEK unwraps
        it (the resumed blocks were encrypted with it), else a new one, journaled before any
        block is acknowledged. Only the wrapped form is stored: it is the blob's own metadata."""
        if not self.options.encrypt:
            return None, None
        kek = self.options.kek
        if record.encryptiondata:
            key = content_key_from_metadata(record.encryptiondata, kek)
            if key is not None:
                return key, record.encryptiondata
        key = new_content_key()
        encryptiondata = encryption_metadata(key, kek)
        assert self.journal is not None
        self.journal.set_encryption(record.file_id, encryptiondata)
        record.encryptiondata = None  # the blocks of any earlier key no longer count
        return key, encryptiondata

    async def send_file(
        self, src: SourceFile, record: FileRecord, chunk_bytes: int, single_put: bool
    ) -> None:
        assert self.journal is not None and self.store is not None
        opts = self.options
        content_key, encryptiondata = self.content_key_for(record)
        task = _FileTask(
            src=src,
            record=record,
            chunk_bytes=chunk_bytes,
            single_put=single_put,
            content_key=content_key,
            encryptiondata=encryptiondata,
        )
        if not single_put and (content_key is None or encryptiondata == record.encryptiondata):
            task.resumable = await self.resumable_blocks(record)
        task.finished = asyncio.get_running_loop().create_future()
        self.journal.mark_uploading(record.file_id)
        self.emit(
            "file_started",
            path=src.rel_path,
            blob=record.blob_name,
            bytes=src.size_bytes,
        )
        self.tasks[record.file_id] = task
        try:
            self.pipeline.submit(
                record.file_id,
                src.path,
                size_bytes=src.size_bytes,
                chunk_bytes=chunk_bytes,
                content_key=content_key,
            )
            await task.finished
        finally:
            del self.tasks[record.file_id]
        common = {
            "size_bytes": src.size_bytes,
            "mtime_ns": src.mtime_ns,
            "blob": record.blob_name,
            "record": record,
        }
        if task.failure is not None:
            await self.outcome(src.rel_path, "failed", reason=task.failure, **common)
            return
        done = task.done
        blake3_hex = done.blake3.hex()
        metadata = blob_metadata(
            size_bytes=src.size_bytes,
            mtime_ns=done.mtime_ns,
            blake3_hex=blake3_hex,
            upload_id=record.upload_id,
            job_id=self.report.job_id,
            encryptiondata=task.encryptiondata,
            content_key=task.content_key,
        )
        tags = dict(opts.tags) or None
        try:
            if single_put:
                held = task.held
                if held is None:  # an empty file has no chunk
                    etag = await self.store.put_blob(
                        record.blob_name, b"", crc64=0, metadata=metadata, tier=opts.tier, tags=tags
                    )
                else:
                    with held:
                        etag = await self.store.put_blob(
                            record.blob_name,
                            held.data,
                            crc64=held.crc64,
                            metadata=metadata,
                            tier=opts.tier,
                            tags=tags,
                        )
                    self.emit("progress", path=src.rel_path, bytes=held.plain_bytes)
            else:
                if task.acked != set(range(done.chunks)):  # complete and gap-free, or no commit
                    missing = sorted(set(range(done.chunks)) - task.acked)
                    raise SourceError(src.rel_path, f"blocks never acknowledged: {missing[:5]}")
                ids = [block_id(record.upload_id, i) for i in range(done.chunks)]
                self.journal.mark_committing(record.file_id, flush=False)
                # Durable before the commit request: a kill during Put Block List then resumes
                # with every acknowledged block journaled (one fsync per multi-block file).
                await self.journal.aflush()
                etag = await self.store.put_block_list(
                    record.blob_name, ids, metadata=metadata, tier=opts.tier, tags=tags
                )
        finally:
            if task.held is not None:
                task.held.release()
        await self.outcome(src.rel_path, "copied", etag=etag, blake3_hex=blake3_hex, **common)

    # --- the job ---------------------------------------------------------------------------

    async def scan_batches(self, root: str):  # -> AsyncIterator[list[SourceFile | ScanProblem]]
        """The scan runs in a thread (one lstat per entry blocks); a bounded queue of batches
        keeps memory flat on a million-file tree."""
        q: queue.Queue[Any] = queue.Queue(maxsize=8)
        stop = threading.Event()
        end = object()

        def produce() -> None:
            batch: list[Any] = []
            try:
                for item in scan(root, include=self.options.include, exclude=self.options.exclude):
                    batch.append(item)
                    if len(batch) >= SCAN_BATCH:
                        q.put(batch)
                        batch = []
                    if stop.is_set():
                        return
                q.put(batch)
            except BaseException as e:  # handed to the loop, raised there
                q.put(e)
            q.put(end)

        thread = threading.Thread(target=produce, name="pyengine-scan", daemon=True)
        thread.start()
        try:
            while True:
                item = await asyncio.to_thread(q.get)
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()

    async def run(self) -> CopyReport:
        opts = self.options
        start = time.monotonic()
        if opts.encrypt and opts.kek is None:
            raise ConfigError("--encrypt", "a key-encryption key is required (--kek-file)")
        if not os.path.exists(self.source):  # the job cannot start: a usage error (exit 2)
            raise ConfigError(self.source, "no such file or directory")
        credential = resolve_credential(self.dest, opts.connection_string)
        async with BlobStore(
            self.dest,
            credential,
            retry=opts.retry,
            max_connections=opts.max_concurrency,
            max_requests_per_s=opts.max_requests_per_s,
            cap_bytes_per_s=opts.cap_mbps * 1e6 / 8 if opts.cap_mbps else None,
        ) as store:
            self.store = store
            await store.ensure_container(create=opts.create_container and not opts.dry_run)
            if opts.dry_run:
                await self.copy_all()
            else:
                with Journal.open(opts.journal_path) as journal:
                    self.journal = journal
                    job_id = journal.find_unfinished_job(self.source, self.dest.redacted())
                    self.resumed = job_id is not None
                    if not self.resumed and opts.check != "none":
                        listing = store.list_blobs(self.dest.prefix, metadata=False, page_size=1)
                        try:
                            self.dest_was_empty = await anext(listing, None) is None
                        finally:
                            await listing.aclose()
                    if job_id is None:
                        job_id = journal.create_job(
                            self.source, self.dest.redacted(), self._job_options()
                        )
                    self.report.job_id = job_id
                    manifest_path = opts.manifest_path or default_manifest_path(
                        job_id, journal.path
                    )
                    self.report.manifest_path = str(manifest_path)
                    self.emit(
                        "job_started",
                        extra={
                            "job_id": job_id,
                            "resumed": self.resumed,
                            "manifest": str(manifest_path),
                        },
                    )
                    async with ManifestWriter(manifest_path, redact=redact) as manifest:
                        self.manifest = manifest
                        await self.copy_all()
                        await self.report_deletions()
                    journal.finish_job(job_id, "completed" if self.report.ok else "failed")
            stats = store.stats
            r = self.report
            r.retries, r.throttled_s, r.stalls = stats.retries, stats.throttled_s, stats.stalls
            r.concurrency_min, r.concurrency_max = stats.concurrency_min, stats.concurrency_max
        self.report.elapsed_s = time.monotonic() - start
        self.report.dry_run = opts.dry_run
        self.emit("job_finished", extra=self.report.to_json())
        return self.report

    def _job_options(self) -> dict[str, Any]:
        """The options worth keeping with the job: no key, no connection string."""
        o = self.options
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
        }

    async def copy_all(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        # Files in flight: enough to keep the request window full with small files; large files
        # are bounded by the native memory cap (readers wait for buffers).
        window = asyncio.Semaphore(max(8, opts.max_concurrency * 2))
        running: set[asyncio.Task[None]] = set()
        flusher = loop.create_task(self._flush_journal_periodically())

        async def one(src: SourceFile) -> None:
            try:
                await self.copy_file(src)
            finally:
                window.release()

        with _core.Pipeline(opts.threads, opts.memory_cap_bytes, opts.direct_io) as pipeline:
            self.pipeline = pipeline
            loop.add_reader(pipeline.fileno(), self.on_pipeline_ready)
            try:
                async for batch in self.scan_batches(self.source):
                    for item in batch:
                        if isinstance(item, ScanProblem):
                            if not item.rel_path or item.reason.startswith(
                                ("symlink loop", "directory")
                            ):
                                self.problem_dirs.append(item.rel_path)
                            await self.outcome(
                                item.rel_path or item.path,
                                "failed",
                                size_bytes=0,
                                reason=item.reason,
                            )
                            continue
                        await window.acquire()
                        t = loop.create_task(one(item))
                        running.add(t)
                        t.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running)
            finally:
                for t in running:
                    t.cancel()
                loop.remove_reader(pipeline.fileno())
                flusher.cancel()
                if self.journal is not None:
                    self.journal.flush()

    async def _flush_journal_periodically(self) -> None:
        while self.journal is not None:
            await asyncio.sleep(JOURNAL_FLUSH_S)
            await self.journal.aflush()

    async def report_deletions(self) -> None:
        """Blobs under the prefix whose source file is gone: reported; deleted only on request."""
        assert self.store is not None and self.journal is not None
        prefix = self.dest.prefix
        async for props in self.store.list_blobs(prefix, metadata=False):
            rel = props.name[len(prefix) :]
            if not self.filter.accepts(rel) or any(
                rel.startswith(d.rstrip("/") + "/") for d in self.problem_dirs if d
            ):
                continue
            if self.journal.file_record(self.report.job_id, rel) is not None:
                continue
            if os.path.isfile(self.source):
                continue  # a single-file copy says nothing about its neighbours
            self.report.deleted_at_source.append(rel)
            if self.options.delete_destination:
                await self.store.delete_blob(props.name)
            self.emit(
                "file_deleted" if self.options.delete_destination else "deleted_at_source",
                path=rel,
                blob=props.name,
            )
            if self.manifest is not None:
                await self.manifest.write(
                    ManifestEntry(
                        path=rel,
                        size_bytes=props.size_bytes,
                        mtime_ns=0,
                        status="deleted_at_source",
                        job_id=self.report.job_id,
                        blob_url=self.dest.blob_url(props.name),
                    )
                )


async def copy(
    source: str | os.PathLike[str],
    dest: str,
    options: CopyOptions | None = None,
    on_event: EventCallback | None = None,
) -> CopyReport:
    """Copy a file or a tree into a block-blob container; see README "Library".

    Raises ConfigError (bad destination, missing source, no key), AuthError or
    DestinationError when the job cannot start; per-file problems are counted in the report.
    """
    options = options or CopyOptions()
    source_path = os.path.abspath(os.fspath(source))
    job = _Job(source_path, parse_destination(dest), options, on_event)
    return await job.run()
