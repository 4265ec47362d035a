"""How a file's bytes go from the native pipeline to the target: completions routed to their
files, each chunk a Put Block as it completes (or held for one Put Blob), and the commit.

Ordering rules that keep "nothing mismatching its source is ever committed":
- a single-request file (Put Blob) is held until the core's FileDone, which comes after the final
  size/mtime check and carries the whole-file BLAKE3 that goes into the metadata;
- Put Block List is sent only after FileDone and after every block of 0..n-1 was acknowledged;
- every acknowledged block is journaled before the commit is sent (a kill during Put Block List
  then resumes with nothing lost), and a journal that cannot record an acknowledgement aborts
  the job rather than let a commit follow it.

What to send (skip, resume which blocks, under which content key) is decide.py's answer; this
module asks it once per read through the `prepare` callable that send_file takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pyengine import _core
from pyengine.engine.commit import Commits
from pyengine.engine.content_type import SNIFF_BYTES
from pyengine.engine.context import FileTask, JobContext
from pyengine.engine.plan import block_id, choose_block_bytes, read_plan
from pyengine.engine.scan import ScanProblem, SourceFile, display_path, restat
from pyengine.errors import PyEngineError, SourceError
from pyengine.state.journal import FileRecord
from pyengine.targets.auth import redact
from pyengine.targets.base import ForeignBlocksError
from pyengine.targets.profile import AZURE

log = logging.getLogger("pyengine")

#: reads of a file that keeps changing while it is read before it fails with CHANGED_REASON
CHANGED_TRIES = 3
#: leading plaintext bytes the core hands back with a file under a policy (its placement reads
#: the DICOM header: the usual groups fit). Without a policy only the Content-Type sniff reads
#: the head (SNIFF_BYTES): 64 KiB copied into bytes per small file, twice, cost the event loop
#: ~18 us of its ~300 a 256 KiB file.
HEAD_BYTES = 64 * 1024
CHANGED_REASON = "changed while being read"
#: a Put Block refused for another writer's staged blocks again, after they were discarded
FOREIGN_AGAIN_REASON = (
    "uncommitted blocks of another tool were staged on the blob again after being discarded; "
    "is another tool still writing it?"
)

#: decide.py's answer for one read of a file (src, record, chunk_bytes, single_put, resume): the
#: task to send, or None when its staged blocks changed and it must be read as a new version
Prepare = Callable[[SourceFile, FileRecord, int, bool, bool], Awaitable[FileTask | None]]


def matches_journal(task: FileTask, chunk: Any) -> bool:
    """Whether a chunk just read is the block an earlier run acknowledged (length and digests)."""
    ack = (task.record.acked_blocks or {}).get(chunk.index)
    return (
        ack is not None
        and ack.length_bytes == chunk.payload_bytes
        and ack.crc64 == chunk.crc64
        and ack.xxh3_128 == chunk.xxh3_128
    )


class Routing:
    """Which sender a completion belongs to, by the file id given to the core. One per
    pipeline: senders of several destinations (a policy's tenants) share it, since the
    journal's file ids are unique across its jobs and aside reads draw from one range."""

    def __init__(self) -> None:
        #: files the core is reading, by file id: (the sender that submitted it, its task)
        self.tasks: dict[int, tuple[Sender, FileTask]] = {}
        # the core's file ids are uint64: reads that send nothing use a range no journal id reaches
        self.aside_ids = iter(range(1 << 62, 1 << 63))


#: a file's placement as commit headers: (tier, tags, extra headers), or None for the
#: job's own --tier/--tag (engine/policy_job.py sets it for a policy's tenants)
PlaceFn = Callable[[FileTask], tuple[str | None, dict[str, str] | None, dict[str, str]] | None]


class Sender(Commits):
    """Routes the pipeline's completions and sends what they carry to the job's target."""

    def __init__(self, ctx: JobContext, routing: Routing | None = None) -> None:
        self.ctx = ctx
        #: the open _core.Pipeline while the job copies (the job sets it when it opens one)
        self.pipeline: Any = None
        self.routing = routing if routing is not None else Routing()
        #: the policy's placement of a file at commit; None without a policy
        self.place: PlaceFn | None = None
        #: journal file ids whose Put Block met another writer's staged blocks (ForeignBlocksError)
        self._foreign: set[int] = set()
        #: what the destination accepts (the job sets it: pyengine.targets.profile)
        self.profile = AZURE

    # --- the native pipeline's completions -------------------------------------------------

    def on_pipeline_ready(self) -> None:
        """add_reader callback: route completions to their files without blocking the loop.

        An exception escaping a reader callback would only be logged by the loop, and the job
        would wait forever for the completions it dropped: it aborts the job instead."""
        try:
            self._route_completions()
        except Exception as e:
            if self.ctx.owner is None:
                raise
            self.ctx.owner.fail(e)

    def _route_completions(self) -> None:
        tasks = self.routing.tasks
        for ev in self.pipeline.poll():
            routed = tasks.get(ev.file_id)
            if routed is None:  # a file abandoned after a failure: drop what is left of it
                if isinstance(ev, _core.Chunk):
                    ev.release()
                continue
            sender, task = routed
            if isinstance(ev, _core.Chunk):
                sender.on_chunk(task, ev)
            elif isinstance(ev, _core.FileDone):
                task.done = ev
                sender.finish_when_sent(task)
            else:
                task.failure = ev.reason
                task.changed = ev.changed
                if task.held is not None:
                    task.held.release()
                    task.held = None
                sender.finish_when_sent(task)

    def on_chunk(self, task: FileTask, chunk: Any) -> None:
        owner = self.ctx.owner
        if task.verify_only:
            if chunk.index in task.resumable and not matches_journal(task, chunk):
                task.mismatch = True
            chunk.release()
        elif task.failure is not None or task.hash_only:
            chunk.release()
        elif task.single_put:
            task.held = chunk
        elif chunk.index in task.resumable and matches_journal(task, chunk):
            # Acknowledged in an earlier run and still staged at the service; its bytes were just
            # re-read and re-hashed, and they match what was sent then.
            task.acked.add(chunk.index)
            self.ctx.report.blocks_resumed += 1
            chunk.release()
            self.ctx.emit("progress", path=task.src.rel_path, bytes=chunk.plain_bytes)
        elif owner is None or owner.aborting:
            chunk.release()  # the job is ending: nothing more is sent
        else:
            t = owner.spawn(self.put_block(task, chunk))
            task.uploads.add(t)
            t.add_done_callback(lambda t, task=task: self._upload_done(task, t))

    async def put_block(self, task: FileTask, chunk: Any) -> None:
        """One Put Block. A refused block fails its file (the job goes on); a journal error
        escapes to the task owner and aborts the job (an acknowledgement that cannot be
        recorded must not be followed by a commit)."""
        ctx = self.ctx
        assert ctx.store is not None
        with chunk:
            try:
                bid = block_id(task.record.upload_id, chunk.index)
                await ctx.store.put_block(task.record.blob_name, bid, chunk.data, crc64=chunk.crc64)
            except ForeignBlocksError as e:
                self._foreign.add(task.record.file_id)  # _send_version answers "foreign"
                if task.failure is None:
                    task.failure = e.reason
                return
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
            ctx.report.blocks_sent += 1
            if ctx.journal is not None:
                ctx.journal.ack_block(
                    task.record.file_id,
                    chunk.index,
                    length_bytes=chunk.payload_bytes,
                    crc64=chunk.crc64,
                    xxh3_128=chunk.xxh3_128,
                )
            ctx.emit("progress", path=task.src.rel_path, bytes=chunk.plain_bytes)

    def finish_when_sent(self, task: FileTask) -> None:
        """The core is done with the file: it is finished when its last upload ends (the
        uploads' done callbacks check again), so no task waits on another."""
        task.reading_done = True
        self._finish_if_sent(task)

    def _upload_done(self, task: FileTask, upload: asyncio.Task[None]) -> None:
        task.uploads.discard(upload)
        self._finish_if_sent(task)

    @staticmethod
    def _finish_if_sent(task: FileTask) -> None:
        assert task.finished is not None
        if task.reading_done and not task.uploads and not task.finished.done():
            task.finished.set_result(None)

    # --- reads -----------------------------------------------------------------------------

    async def _read(self, file_id: int, task: FileTask, path: str, **submit: Any) -> None:
        """Has the core read `path` as `task` and waits until the file is finished (read, and
        every upload it started ended)."""
        task.finished = asyncio.get_running_loop().create_future()
        self.routing.tasks[file_id] = (self, task)
        try:
            self.pipeline.submit(file_id, path, **submit)
            await task.finished
        finally:
            del self.routing.tasks[file_id]

    async def read_aside(self, task: FileTask, **submit: Any) -> None:
        """A read that sends nothing (a hash, a check pass), under an id of its own: it may run
        while the file's journal id is not in flight, and never collides with one."""
        await self._read(next(self.routing.aside_ids), task, task.src.path, **submit)

    async def hash_file(self, src: SourceFile) -> bytes | None:
        """The whole-file BLAKE3 of the source as it reads now; SourceError if it cannot."""
        task = FileTask(
            src=src,
            record=None,
            chunk_bytes=0,
            single_put=False,  # type: ignore[arg-type]
            content_key=None,
            encryptiondata=None,
            hash_only=True,
        )
        # large chunks (fewer completions), within the 50,000 of any plan: the block rule's own
        chunk_bytes = choose_block_bytes(src.size_bytes, path=src.rel_path)
        await self.read_aside(
            task,
            size_bytes=src.size_bytes,
            chunk_bytes=chunk_bytes,
            stages=_core.STAGE_BLAKE3,
        )
        if task.failure is not None:
            raise SourceError(src.rel_path, task.failure)
        return task.done.blake3

    # --- one file --------------------------------------------------------------------------

    async def send_file(
        self,
        src: SourceFile,
        record: FileRecord,
        chunk_bytes: int,
        single_put: bool,
        prepare: Prepare,
    ) -> None:
        """Reads, sends and commits one file, or counts it failed.

        A file that changed while it was read (the core's FileFailed kind "changed"), or whose
        identity at open is not the scanned one, is read again from scratch: a fresh stat, a new
        file version in the journal (new upload id, no resumed block) and, when encrypting, a new
        content key, since a (key, nonce) pair must never cover two plaintexts. A file that
        changed during each of CHANGED_TRIES reads fails with one line, CHANGED_REASON.
        """
        changed_reads = 0
        foreign_discarded = False
        fresh = False  # read as a new file version: after a change, or after foreign blocks
        while True:
            if fresh:
                again = self._new_version_to_read(src, record)
                if isinstance(again, str):
                    await self.ctx.file_failed(src, record, again)
                    return
                src, record, chunk_bytes, single_put = again
            # only the first read resumes: a new version sends every block again
            task = await prepare(src, record, chunk_bytes, single_put, not fresh)
            then = "changed" if task is None else await self._send_version(task)
            if then is None:
                return
            fresh = True
            if then == "foreign":
                if foreign_discarded:  # never a loop: once per file
                    await self.ctx.file_failed(src, record, FOREIGN_AGAIN_REASON)
                    return
                foreign_discarded = True
                problem = await self._discard_foreign(src, record)
                if problem is not None:
                    await self.ctx.file_failed(src, record, problem)
                    return
                continue
            changed_reads += 1
            log.info(
                "%s: %s (read %d of %d)",
                display_path(src.rel_path),
                CHANGED_REASON,
                changed_reads,
                CHANGED_TRIES,
            )
            if changed_reads >= CHANGED_TRIES:
                await self.ctx.file_failed(src, record, CHANGED_REASON)
                return

    async def _discard_foreign(self, src: SourceFile, record: FileRecord) -> str | None:
        """Discards the blocks another tool staged on the file's blob, saying so once (a log
        line, a `foreign_blocks_discarded` event, a report count); the one-line reason the file
        fails when they cannot be discarded."""
        ctx = self.ctx
        assert ctx.store is not None
        try:
            await ctx.store.discard_uncommitted(record.blob_name)
        except PyEngineError as e:
            return e.reason
        log.warning(
            "%s: uncommitted blocks of another tool were staged on its blob: discarded them "
            "and started the file over",
            display_path(src.rel_path),
        )
        ctx.report.foreign_blocks_discarded += 1
        ctx.emit("foreign_blocks_discarded", path=src.rel_path, blob=record.blob_name)
        return None

    def _new_version_to_read(
        self, src: SourceFile, record: FileRecord
    ) -> tuple[SourceFile, FileRecord, int, bool] | str:
        """The file as it is now, its chunk plan and its new journal version, for a read from
        scratch after a change; or the one-line reason it cannot be read again."""
        ctx = self.ctx
        assert ctx.journal is not None
        now = restat(src)
        if isinstance(now, ScanProblem):
            return now.reason
        # The plan rule of copy_file; a size change may move the file across single_put_max_bytes.
        opts = ctx.options
        try:
            chunk_bytes, single_put = read_plan(
                now.size_bytes,
                single_put_max_bytes=opts.single_put_max_bytes,
                block_bytes=opts.block_bytes,
                encrypt=opts.encrypt,
                path=now.rel_path,
                max_block_bytes=self.profile.max_block_bytes,
                max_blob_bytes=self.profile.max_blob_bytes,
            )
        except SourceError as e:
            return e.reason
        fresh = ctx.journal.begin_file(
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

    async def _send_version(self, task: FileTask) -> str | None:
        """One read of the file, sent and committed unless it cannot be yet: "changed" (nothing
        committed, read it again), "foreign" (a Put Block met another tool's staged blocks:
        discard them, then read it again); None when the outcome (copied or failed) is counted."""
        ctx = self.ctx
        assert ctx.journal is not None
        src, record = task.src, task.record
        ctx.journal.mark_uploading(record.file_id)
        if ctx.on_event is not None:  # no event (nor its arguments) built for no listener
            ctx.emit("file_started", path=src.rel_path, blob=record.blob_name, bytes=src.size_bytes)
        await self._read(
            record.file_id,
            task,
            src.path,
            size_bytes=src.size_bytes,
            chunk_bytes=task.chunk_bytes,
            content_key=task.content_key,
            head_bytes=HEAD_BYTES if self.place is not None else SNIFF_BYTES,
            # --put-md5: the MD5 of the stored bytes, in the same read (FileDone.md5)
            stages=_core.STAGE_ALL | (_core.STAGE_MD5 if ctx.options.put_md5 else 0),
        )
        if task.failure is not None:
            if record.file_id in self._foreign:
                self._foreign.discard(record.file_id)
                return "foreign"
            if task.changed:
                log.debug("%s: %s", display_path(src.rel_path), task.failure)
                return "changed"
            await self.ctx.file_failed(src, record, task.failure)
            return None
        done = task.done
        read = (done.file_size_bytes, done.mtime_ns, done.ctime_ns, done.inode, done.device)
        if read != record.identity:
            # Changed between the scan and the open: what was read is consistent, but it is not
            # the version the journal holds. Read again under the identity it has now.
            if task.held is not None:
                task.held.release()
                task.held = None
            return "changed"
        try:
            etag = await self.commit(task)
        finally:
            if task.held is not None:
                task.held.release()
        await ctx.outcome(
            src.rel_path,
            "copied",
            etag=etag,
            blake3_hex=done.blake3.hex(),
            size_bytes=src.size_bytes,
            mtime_ns=src.mtime_ns,
            blob=record.blob_name,
            record=record,
        )
        return None
