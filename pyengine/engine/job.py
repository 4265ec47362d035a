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

from pyengine import _core
from pyengine.crypto import (
    KEYED_DIGEST_METADATA,
    content_key_from_metadata,
    encryption_metadata,
    keyed_digest_hex,
    new_content_key,
)
from pyengine.engine.mirror import ClaimedNames, refusal
from pyengine.engine.plan import (
    CTIME_METADATA,
    blob_metadata,
    blob_name,
    block_id,
    choose_block_bytes,
    names_claimed,
)
from pyengine.engine.report import CopyReport, Event
from pyengine.engine.scan import PathFilter, ScanProblem, SourceFile, display_path, restat, scan
from pyengine.engine.taskowner import TaskOwner
from pyengine.errors import ConfigError, PyEngineError, SourceError
from pyengine.options import CopyOptions, MiB
from pyengine.state.joblock import JobLock, job_lock_path
from pyengine.state.journal import FileRecord, Journal, default_journal_path
from pyengine.state.manifest import ManifestEntry, ManifestWriter, default_manifest_path
from pyengine.targets.azure_blob import (
    BlobProps,
    BlobStore,
    Destination,
    parse_destination,
    redact,
    resolve_credential,
)

log = logging.getLogger("pyengine")

EventCallback = Callable[[Event], None]

#: scan entries handed from the scanner thread to the loop at once (one thread hop per batch)
SCAN_BATCH = 256
#: how often acknowledged blocks are group-committed to the journal
JOURNAL_FLUSH_S = 0.5
MIN_CHUNK_BYTES = 64 * 1024
#: reads of a file that keeps changing while it is read before it fails with CHANGED_REASON
CHANGED_TRIES = 3
CHANGED_REASON = "changed while being read"


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
    #: the core is done with the file (FileDone or a failure): `finished` once no upload is left
    reading_done: bool = False
    finished: asyncio.Future[None] | None = None
    hash_only: bool = False  # --check=hash: read to compare BLAKE3, send nothing
    changed: bool = False  # the core's failure says the file changed while read: read it again
    #: an encrypted resume's check pass: compare the resumable blocks, send nothing
    verify_only: bool = False
    mismatch: bool = False  # set by the check pass: a resumable block no longer matches


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
        #: owns every task of the running copy (files, blocks, the journal flusher)
        self.owner: TaskOwner | None = None
        self.tasks: dict[int, _FileTask] = {}
        self.resumed = False
        #: nothing under the prefix when a new job started: no blob can be up to date, so the
        #: per-file HEAD of --check is skipped (it halves the requests of a first migration)
        self.dest_was_empty = False
        #: why this run cannot prove it saw the whole tree (any entry: no deletion)
        self.scan_errors: list[str] = []
        self.claimed = ClaimedNames()
        self.filter = PathFilter(options.include, options.exclude)
        # the core's file ids are uint64: hash-only reads use a range no journal id reaches
        self._hash_ids = iter(range(1 << 62, 1 << 63))

    # --- events and outcomes ---------------------------------------------------------------

    def emit(self, kind: str, path: str | None = None, **kw: Any) -> None:
        """Sends an event to the listener, if any. `path` is the raw relative path: shown here
        with undecodable bytes escaped, so every event prints and serialises as JSON."""
        if self.on_event is None:
            return
        shown = display_path(path) if path is not None else None
        event = Event(kind=kind, path=shown, **kw)  # type: ignore[arg-type]
        try:
            self.on_event(event)
        except Exception:
            # A listener's bug must not stop the job, nor (raised inside a loop callback) drop
            # the rest of a completion batch and leave a file unfinished forever. Counted in the
            # report; logged with its traceback the first time only (a listener failing on every
            # progress event would otherwise flood the log).
            self.report.listener_errors += 1
            first = self.report.listener_errors == 1
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "event listener raised on %s%s (the job goes on; counted in listener_errors)",
                kind,
                "" if first else f" (#{self.report.listener_errors})",
                exc_info=True,
            )

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
        """add_reader callback: route completions to their files without blocking the loop.

        An exception escaping a reader callback would only be logged by the loop, and the job
        would wait forever for the completions it dropped: it aborts the job instead."""
        try:
            self._route_completions()
        except Exception as e:
            if self.owner is None:
                raise
            self.owner.fail(e)

    def _route_completions(self) -> None:
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
                task.changed = ev.changed
                if task.held is not None:
                    task.held.release()
                    task.held = None
                self.finish_when_sent(task)

    def on_chunk(self, task: _FileTask, chunk: Any) -> None:
        if task.verify_only:
            if chunk.index in task.resumable and not self._matches_journal(task, chunk):
                task.mismatch = True
            chunk.release()
        elif task.failure is not None or task.hash_only:
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
        elif self.owner is None or self.owner.aborting:
            chunk.release()  # the job is ending: nothing more is sent
        else:
            t = self.owner.spawn(self.put_block(task, chunk))
            task.uploads.add(t)
            t.add_done_callback(lambda t, task=task: self._upload_done(task, t))

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
        """One Put Block. A refused block fails its file (the job goes on); a journal error
        escapes to the task owner and aborts the job (an acknowledgement that cannot be
        recorded must not be followed by a commit)."""
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
            except (OSError, ValueError, RuntimeError) as e:  # as copy_file: this file fails
                log.debug(
                    "unexpected error sending a block of %s",
                    display_path(task.src.rel_path),
                    exc_info=True,
                )
                if task.failure is None:
                    task.failure = f"unexpected error: {type(e).__name__}: {redact(str(e))}"
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
        """The core is done with the file: it is finished when its last upload ends (the
        uploads' done callbacks check again), so no task waits on another."""
        task.reading_done = True
        self._finish_if_sent(task)

    def _upload_done(self, task: _FileTask, upload: asyncio.Task[None]) -> None:
        task.uploads.discard(upload)
        self._finish_if_sent(task)

    @staticmethod
    def _finish_if_sent(task: _FileTask) -> None:
        assert task.finished is not None
        if task.reading_done and not task.uploads and not task.finished.done():
            task.finished.set_result(None)

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
            ctime_ns=src.ctime_ns,
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
                status, why, props, plain_hex = verdict
                await self.outcome(
                    src.rel_path,
                    status,
                    reason=why if status == "skipped" else None,
                    etag=props.etag,
                    blake3_hex=plain_hex,
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
    ) -> tuple[str, str, BlobProps, str | None] | None:
        """Whether the destination already holds this version, as (status, why, props, plain
        BLAKE3 hex): ("copied", ...) when it is this job's own commit (a kill between commit and
        journal), ("skipped", ...) when --check says the blob is up to date; None when the file
        must be sent.

        Up to date means the same source version (size, mtime and ctime as read) stored the way
        this run asks: the same encryption mode, and for encrypted blobs a content key this
        run's KEK unwraps. A blob wrapped by an old KEK (``old_keks``) is re-wrapped in place;
        one in the other mode, or wrapped by a key this run cannot unwrap, is sent again."""
        assert self.store is not None
        opts = self.options
        if not self.resumed and (opts.check == "none" or self.dest_was_empty):
            return None
        props = await self.store.get_properties(record.blob_name)
        if props is None:
            return None
        md = props.metadata
        plain_hex = md.get("pyengine_blake3")
        keyed_hex = md.get(KEYED_DIGEST_METADATA)
        same_version = (
            md.get("pyengine_size") == str(src.size_bytes)
            and md.get("pyengine_mtime_ns") == str(src.mtime_ns)
            and md.get(CTIME_METADATA) == str(src.ctime_ns)
            and bool(plain_hex or keyed_hex)
        )
        stored_encrypted = "encryptiondata" in md
        ours = md.get("pyengine_upload_id") == record.upload_id or (
            same_version and md.get("pyengine_job_id") == self.report.job_id
        )
        if ours and stored_encrypted == opts.encrypt:  # a kill came between commit and journal
            if plain_hex is not None:
                return ("copied", "committed by an earlier run of this job", props, plain_hex)
            # an encrypted blob keeps no plaintext digest: re-hash to journal one, and to prove
            # the commit holds this file's bytes
            digest = await self.hash_file(src)
            cek = content_key_from_metadata(md["encryptiondata"], opts.kek)
            if (
                digest is not None
                and cek is not None
                and keyed_digest_hex(cek, digest.hex()) == keyed_hex
            ):
                return ("copied", "committed by an earlier run of this job", props, digest.hex())
            return None
        if opts.check == "none":
            return None
        if stored_encrypted != opts.encrypt:
            if same_version:  # up to date but for the mode: what was asked for is what counts
                self.report.files_resent_for_encryption += 1
            return None
        cek: bytes | None = None
        rewrap_from: Any = None
        if opts.encrypt:
            cek = content_key_from_metadata(md["encryptiondata"], opts.kek)
            if cek is None:
                for old in opts.old_keks:
                    cek = content_key_from_metadata(md["encryptiondata"], old)
                    if cek is not None:
                        rewrap_from = old
                        break
            if cek is None:  # wrapped by a key this run cannot unwrap: send under this one
                if same_version:
                    self.report.files_resent_for_encryption += 1
                return None
        if opts.check == "metadata" and same_version:
            why = "unchanged (size, mtime, ctime and digest recorded at the destination)"
        elif opts.check == "hash" and md.get("pyengine_size") == str(src.size_bytes):
            digest = await self.hash_file(src)
            if digest is None:
                return None
            if cek is not None and keyed_hex is not None:
                match = keyed_digest_hex(cek, digest.hex()) == keyed_hex
            else:
                match = digest.hex() == plain_hex
            if not match:
                return None
            plain_hex = digest.hex()
            why = "unchanged (BLAKE3 of the source equals the destination's)"
        else:
            return None
        if rewrap_from is not None:
            assert cek is not None
            await self.rewrap(props, cek)
            why += "; content key re-wrapped under the current KEK"
        return ("skipped", why, props, plain_hex)

    async def rewrap(self, props: BlobProps, content_key: bytes) -> None:
        """Key rotation in place: the same content key wrapped by this run's KEK, written with
        Set Blob Metadata (If-Match: a blob changed meanwhile is not touched). No byte is sent."""
        assert self.store is not None
        metadata = dict(props.metadata)
        metadata["encryptiondata"] = encryption_metadata(content_key, self.options.kek)
        await self.store.set_metadata(props.name, metadata, if_match=props.etag)
        self.report.files_rewrapped += 1

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

    async def _staged_blocks_still_match(self, task: _FileTask) -> bool:
        """Before an encrypted file resumes under its journaled content key: are the bytes of
        every staged block still what was encrypted and sent then?

        Region nonces are the region index, so re-encrypting changed bytes under the same key
        would use one (key, nonce) pair for two plaintexts. A change normally shows in the
        file's ctime (a new version, new key), but network file systems can keep attributes
        stale; this pass re-reads and re-encrypts the staged range once, sending nothing, and
        any mismatch starts the file over under a new key. Only resumed encrypted files pay it.
        """
        check = _FileTask(
            src=task.src,
            record=task.record,
            chunk_bytes=task.chunk_bytes,
            single_put=False,
            content_key=task.content_key,
            encryptiondata=None,
            resumable=set(task.resumable),
            verify_only=True,
        )
        file_id = next(self._hash_ids)
        check.finished = asyncio.get_running_loop().create_future()
        self.tasks[file_id] = check
        try:
            length_bytes = min(task.src.size_bytes, (max(task.resumable) + 1) * task.chunk_bytes)
            self.pipeline.submit(
                file_id,
                task.src.path,
                size_bytes=task.src.size_bytes,
                chunk_bytes=task.chunk_bytes,
                length_bytes=length_bytes,
                content_key=task.content_key,
            )
            await check.finished
        finally:
            del self.tasks[file_id]
        return check.failure is None and not check.mismatch

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
        """Reads, sends and commits one file, or counts it failed.

        A file that changed while it was read (the core's FileFailed kind "changed"), or whose
        identity at open is not the scanned one, is read again from scratch: a fresh stat, a new
        file version in the journal (new upload id, no resumed block) and, when encrypting, a new
        content key, since a (key, nonce) pair must never cover two plaintexts. A file that
        changed during each of CHANGED_TRIES reads fails with one line, CHANGED_REASON.
        """
        for attempt in range(1, CHANGED_TRIES + 1):
            if attempt > 1:
                again = self._new_version_to_read(src, record)
                if isinstance(again, str):
                    await self.outcome(
                        src.rel_path,
                        "failed",
                        reason=again,
                        size_bytes=src.size_bytes,
                        mtime_ns=src.mtime_ns,
                        blob=record.blob_name,
                        record=record,
                    )
                    return
                src, record, chunk_bytes, single_put = again
            if not await self._send_version(
                src, record, chunk_bytes, single_put, resume=attempt == 1
            ):
                return
            log.info(
                "%s: %s (read %d of %d)",
                display_path(src.rel_path),
                CHANGED_REASON,
                attempt,
                CHANGED_TRIES,
            )
        await self.outcome(
            src.rel_path,
            "failed",
            reason=CHANGED_REASON,
            size_bytes=src.size_bytes,
            mtime_ns=src.mtime_ns,
            blob=record.blob_name,
            record=record,
        )

    def _new_version_to_read(
        self, src: SourceFile, record: FileRecord
    ) -> tuple[SourceFile, FileRecord, int, bool] | str:
        """The file as it is now, its chunk plan and its new journal version, for a read from
        scratch after a change; or the one-line reason it cannot be read again."""
        assert self.journal is not None
        now = restat(src)
        if isinstance(now, ScanProblem):
            return now.reason
        # The plan rule of copy_file; a size change may move the file across single_put_max_bytes.
        opts = self.options
        single_put = now.size_bytes <= opts.single_put_max_bytes
        try:
            if single_put:
                floor = _core.REGION_BYTES if opts.encrypt else MIN_CHUNK_BYTES
                chunk_bytes = max(floor, _next_pow2(now.size_bytes))
            elif opts.block_bytes:
                chunk_bytes = opts.block_bytes
            else:
                chunk_bytes = choose_block_bytes(
                    now.size_bytes, encrypt=opts.encrypt, path=now.rel_path
                )
        except SourceError as e:
            return e.reason
        fresh = self.journal.begin_file(
            record.job_id,
            now.rel_path,
            force_new=True,
            size_bytes=now.size_bytes,
            mtime_ns=now.mtime_ns,
            ctime_ns=now.ctime_ns,
            inode=now.inode,
            device=now.device,
            blob_name=record.blob_name,
            block_bytes=chunk_bytes,
            encrypted=opts.encrypt,
        )
        # The stat may not show the change (the same identity returns the same record): the
        # earlier key then still must not cover the new bytes.
        fresh.encryptiondata = None
        return now, fresh, chunk_bytes, single_put

    async def _send_version(
        self,
        src: SourceFile,
        record: FileRecord,
        chunk_bytes: int,
        single_put: bool,
        *,
        resume: bool,
    ) -> bool:
        """One read of the file, sent and committed unless the file changed. True when it changed
        (nothing committed, read it again); False when the outcome (copied or failed) is counted.
        resume=False sends every block again, whatever an earlier run acknowledged."""
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
        if (
            resume
            and not single_put
            and (content_key is None or encryptiondata == record.encryptiondata)
        ):
            task.resumable = await self.resumable_blocks(record)
            staged_changed = (
                content_key is not None
                and task.resumable
                and not await self._staged_blocks_still_match(task)
            )
            if staged_changed:
                log.info(
                    "%s: an acknowledged block no longer matches its bytes: starting the file "
                    "over under a new content key",
                    display_path(src.rel_path),
                )
                return True  # read again as a new version: new upload id, new key
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
            if task.changed:
                log.debug("%s: %s", display_path(src.rel_path), task.failure)
                return True
            await self.outcome(src.rel_path, "failed", reason=task.failure, **common)
            return False
        done = task.done
        read = (done.file_size_bytes, done.mtime_ns, done.ctime_ns, done.inode, done.device)
        if read != record.identity:
            # Changed between the scan and the open: what was read is consistent, but it is not
            # the version the journal holds. Read again under the identity it has now.
            if task.held is not None:
                task.held.release()
                task.held = None
            return True
        blake3_hex = done.blake3.hex()
        # Size, mtime and ctime as the core saw them before its first read and again after its
        # last: the metadata describes exactly the bytes that were read.
        metadata = blob_metadata(
            size_bytes=done.file_size_bytes,
            mtime_ns=done.mtime_ns,
            ctime_ns=done.ctime_ns,
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
        return False

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
            # A cancellation during `await to_thread(q.get)` leaves that worker thread waiting on
            # a producer that has stopped: hand it the end mark so it returns.
            with contextlib.suppress(queue.Full):
                q.put_nowait(end)

    async def run(self) -> CopyReport:
        try:
            return await self._run()
        finally:
            self.claimed.close()

    async def _run(self) -> CopyReport:
        opts = self.options
        start = time.monotonic()
        if opts.encrypt and opts.kek is None:
            raise ConfigError("--encrypt", "a key-encryption key is required (--kek-file)")
        if not os.path.exists(self.source):  # the job cannot start: a usage error (exit 2)
            raise ConfigError(self.source, "no such file or directory")
        credential = resolve_credential(self.dest, opts.connection_string)
        # A job runs at most once at a time: a second run fails here, before it touches the
        # destination or the journal (see joblock.py for why the lock is per job).
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if not opts.dry_run:
            journal_path = opts.journal_path or default_journal_path()
            lock = JobLock(
                job_lock_path(journal_path, self.source, self.dest.redacted()),
                subject=f"{display_path(self.source)} -> {self.dest.redacted()}",
            )
        with lock:
            await self._run_locked(credential)
        self.report.elapsed_s = time.monotonic() - start
        self.report.dry_run = opts.dry_run
        self.emit("job_finished", extra=self.report.to_json())
        return self.report

    async def _run_locked(self, credential: Any) -> None:
        """The job, under its lock: the store, the journal, the manifest."""
        opts = self.options
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
                await self.report_deletions()
            else:
                with Journal.open(opts.journal_path) as journal:
                    self.journal = journal
                    job_id = journal.find_unfinished_job(self.source, self.dest.redacted())
                    self.resumed = job_id is not None
                    if job_id is not None:
                        self.check_same_encryption(journal.get_job(job_id))
                    if not self.resumed and opts.check != "none":
                        listing = store.list_blobs(self.dest.prefix, metadata=False, page_size=1)
                        try:
                            self.dest_was_empty = await anext(listing, None) is None
                        finally:
                            await listing.aclose()
                    if job_id is None:
                        # durable at once (one commit): off the loop like every journal write
                        job_id = await asyncio.to_thread(
                            journal.create_job,
                            self.source,
                            self.dest.redacted(),
                            self._job_options(),
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
                    # Group commits run in the journal's writer thread from here on: the loop
                    # never waits for an fsync while blocks are in flight.
                    journal.start_writer()
                    async with ManifestWriter(manifest_path, redact=redact) as manifest:
                        self.manifest = manifest
                        # A journal failure raises out of copy_all: no deletion runs, and the
                        # job stays "running" in the journal, so a re-run resumes it.
                        await self.copy_all()
                        await self.report_deletions()
                    # the writer's last commit and the job row, off the loop (a listener's
                    # progress display or a library's other tasks keep running)
                    await asyncio.to_thread(journal.stop_writer)
                    await asyncio.to_thread(
                        journal.finish_job, job_id, "completed" if self.report.ok else "failed"
                    )
            stats = store.stats
            r = self.report
            r.retries, r.throttled_s, r.stalls = stats.retries, stats.throttled_s, stats.stalls
            r.concurrency_min, r.concurrency_max = stats.concurrency_min, stats.concurrency_max

    def check_same_encryption(self, job: Any) -> None:
        """A resumed job keeps the encryption it started with: one job never mixes modes or
        keys (exit 2 naming the option)."""
        started = job.options
        opts = self.options
        if bool(started.get("encrypt")) != opts.encrypt:
            was = "with" if started.get("encrypt") else "without"
            raise ConfigError(
                "--encrypt",
                f"job {job.job_id} was started {was} --encrypt; resume it with the same "
                "options, or start a new job (another --journal)",
            )
        kek_id = opts.kek.get_kid() if opts.kek is not None else None
        if opts.encrypt and started.get("kek_id") != kek_id:
            raise ConfigError(
                "--kek-file",
                f"job {job.job_id} was started with another key-encryption key; resume it with "
                "that key, or start a new job (another --journal)",
            )

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
        """Scan, copy every file, and make the journal durable. Every task it starts (files,
        blocks, the periodic journal flush) is owned by one TaskOwner: the first failure
        (a JournalError, a bug) cancels the others and is raised here; a cancellation of the
        job cancels the blocks in flight; nothing of the copy runs after this returns."""
        opts = self.options
        loop = asyncio.get_running_loop()
        # Files in flight: enough to keep the request window full with small files; large files
        # are bounded by the native memory cap (readers wait for buffers).
        window = asyncio.Semaphore(max(8, opts.max_concurrency * 2))
        files: set[asyncio.Task[None]] = set()

        async def one(src: SourceFile) -> None:
            try:
                await self.copy_file(src)
            finally:
                window.release()

        with _core.Pipeline(opts.threads, opts.memory_cap_bytes, opts.direct_io) as pipeline:
            self.pipeline = pipeline
            loop.add_reader(pipeline.fileno(), self.on_pipeline_ready)
            try:
                # The owner is left (its tasks all ended) before the pipeline closes: no upload
                # holds a pooled buffer of a closed pipeline.
                async with TaskOwner() as owner:
                    self.owner = owner
                    flusher = None
                    if self.journal is not None:
                        flusher = owner.spawn(
                            self._flush_journal_periodically(), name="pyengine-journal-flush"
                        )
                    batches = self.scan_batches(self.source)
                    async with contextlib.aclosing(batches):
                        async for batch in batches:
                            self.claim_names(batch)
                            for item in batch:
                                if isinstance(item, ScanProblem):
                                    await self.scan_problem(item)
                                    continue
                                await window.acquire()
                                t = owner.spawn(one(item))
                                files.add(t)
                                t.add_done_callback(files.discard)
                    while files:
                        # a failed file task aborts the job through the owner, not through here
                        await asyncio.wait(set(files))
                    if flusher is not None:
                        flusher.cancel()
                    if self.journal is not None:
                        # every ack and state of the run durable before deletions are decided;
                        # a journal that cannot be written fails the job here
                        await self.journal.aflush()
            finally:
                self.owner = None
                loop.remove_reader(pipeline.fileno())

    async def _flush_journal_periodically(self) -> None:
        """Group commits at least every JOURNAL_FLUSH_S; a failure ends this task, and the task
        owner fails the job with it."""
        while self.journal is not None:
            await asyncio.sleep(JOURNAL_FLUSH_S)
            await self.journal.aflush()

    def claim_names(self, batch: list[SourceFile | ScanProblem]) -> None:
        """Records the blob names this batch's source entries claim (deletion spares them)."""
        prefix = self.dest.prefix
        names = [n for item in batch if item.rel_path for n in names_claimed(prefix, item.rel_path)]
        self.claimed.add(names, files=sum(isinstance(item, SourceFile) for item in batch))

    async def scan_problem(self, item: ScanProblem) -> None:
        """An entry the scan could not take: a failed file (counted), and in any case proof
        that this run did not see the whole tree, so it deletes nothing."""
        self.scan_errors.append(f"{item.rel_path or item.path}: {item.reason}")
        if not item.counted:  # not a file the filters take: one log line, not a failure
            log.warning("%s: %s (the scan could not examine it)", item.rel_path, item.reason)
            return
        await self.outcome(item.rel_path or item.path, "failed", size_bytes=0, reason=item.reason)

    def deletion_blocked(self) -> str | None:
        """Why this run must not delete anything, or None."""
        if self.scan_errors:
            n = len(self.scan_errors)
            return f"the scan met {n} error{'s' if n > 1 else ''} (first: {self.scan_errors[0]})"
        if self.report.files_failed:
            return f"{self.report.files_failed} files failed"
        return None

    async def report_deletions(self) -> None:
        """Blobs under the prefix that no source file claims: reported, and deleted only on
        request, after a clean scan, within the limit. See pyengine.engine.mirror."""
        assert self.store is not None
        if os.path.isfile(self.source):
            return  # a single-file copy says nothing about its neighbours
        opts = self.options
        r = self.report
        blocked = self.deletion_blocked()
        if blocked is None and self.journal is not None:
            # every copy of the run is durable before the first deletion (raises on failure)
            await self.journal.aflush()
        prefix = self.dest.prefix
        candidates: list[BlobProps] = []
        blobs_under_prefix = 0
        async for props in self.store.list_blobs(prefix, metadata=False):
            blobs_under_prefix += 1
            rel = props.name[len(prefix) :]
            if props.name in self.claimed or not self.filter.accepts(rel):
                continue
            candidates.append(props)
        if blocked is not None:
            # the scan did not see the whole tree: these blobs may well have a source file, so
            # none is reported as deleted at source, let alone deleted
            if opts.delete_destination:
                r.deletion_refused = (
                    f"nothing deleted: {blocked}; kept {len(candidates)} blobs that no file "
                    "seen this run claims"
                )
            return
        r.deleted_at_source = [p.name[len(prefix) :] for p in candidates]
        if not opts.delete_destination or not candidates:
            for props in candidates:
                self.emit("deleted_at_source", path=props.name[len(prefix) :], blob=props.name)
            return
        why = refusal(
            candidates=len(candidates),
            blobs_under_prefix=blobs_under_prefix,
            files_in_source=self.claimed.files,
            limit=opts.max_delete,
        )
        if why is not None:
            r.deletion_refused = f"nothing deleted: {why}"
            return
        for props in candidates:
            rel = props.name[len(prefix) :]
            if opts.dry_run:
                r.blobs_to_delete += 1
                self.emit("delete_planned", path=rel, blob=props.name, bytes=props.size_bytes)
                continue
            await self.store.delete_blob(props.name)
            r.blobs_deleted += 1
            self.emit("file_deleted", path=rel, blob=props.name, bytes=props.size_bytes)
            if self.manifest is not None:
                await self.manifest.write(
                    ManifestEntry(
                        path=rel,
                        size_bytes=props.size_bytes,
                        mtime_ns=0,
                        status="deleted",
                        job_id=r.job_id,
                        blob_url=self.dest.blob_url(props.name),
                        etag=props.etag,
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
