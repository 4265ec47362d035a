"""One file of a copy job, start to end: planned (name, blocks, the destination's limits),
journaled, decided (already there, up to date, resume, send), sent, and its outcome counted
exactly once. Mixed into the job (job.py), whose ``ctx``, ``profile``, ``decide`` and
``sender`` it uses; a policy lane (policy_job.py) overrides ``copy_file``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyengine.engine.delta import UNKNOWN
from pyengine.engine.dryrun import plan_file
from pyengine.engine.plan import blob_name, read_plan
from pyengine.engine.scan import SourceFile, display_path
from pyengine.errors import PyEngineError, SourceError
from pyengine.targets.auth import redact
from pyengine.targets.open import name_limit

if TYPE_CHECKING:
    from pyengine.engine.context import JobContext

log = logging.getLogger("pyengine")


class FileSteps:
    """The per-file half of the job."""

    ctx: JobContext
    profile: Any
    decide: Any
    sender: Any

    async def copy_file(self, src: SourceFile, *, listed: object = UNKNOWN) -> None:
        """Plans, decides and sends one file; its outcome is counted exactly once. ``listed``:
        its blob as the online delta listed it (engine/delta.py); UNKNOWN: HEAD it."""
        ctx, opts = self.ctx, self.ctx.options
        try:
            # the destination's limits, checked before any byte of the file is sent
            max_len = min(name_limit(ctx.dest), self.profile.max_name_chars)
            name = blob_name(ctx.dest.prefix, src.rel_path, max_len=max_len)
            chunk_bytes, single_put = read_plan(
                src.size_bytes,
                single_put_max_bytes=opts.single_put_max_bytes,
                block_bytes=opts.block_bytes,
                encrypt=opts.encrypt,
                path=src.rel_path,
                max_block_bytes=self.profile.max_block_bytes,
                max_blob_bytes=self.profile.max_blob_bytes,
            )
        except SourceError as e:
            await self.refuse(src.rel_path, e.reason, size_bytes=src.size_bytes)
            return

        if opts.dry_run:
            await plan_file(ctx, self.decide, src, name)
            return

        assert ctx.journal is not None and ctx.store is not None
        record = ctx.journal.begin_file(
            ctx.report.job_id,
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
        if record.state in ("committed", "skipped"):
            # done by an earlier run of this job: counted again so the summary covers the source
            status = "copied" if record.state == "committed" else "skipped"
            await ctx.outcome(
                src.rel_path,
                status,
                etag=record.etag,
                blake3_hex=record.blake3_hex,
                reason=record.error,
                size_bytes=src.size_bytes,
                mtime_ns=src.mtime_ns,
                blob=name,
                record=record,
            )
            return
        try:
            verdict = None
            if self.decide.may_be_there():  # else no need to await an answer known to be None
                verdict = await self.decide.already_there(src, record, listed=listed)
            if verdict is not None:
                status, why, props, plain_hex = verdict
                await ctx.outcome(
                    src.rel_path,
                    status,
                    reason=why if status == "skipped" else None,
                    etag=props.etag,
                    blake3_hex=plain_hex,
                    size_bytes=src.size_bytes,
                    mtime_ns=src.mtime_ns,
                    blob=name,
                    record=record,
                )
                return
            await self.sender.send_file(
                src, record, chunk_bytes, single_put, prepare=self.decide.prepare
            )
        except PyEngineError as e:
            await ctx.file_failed(src, record, e.reason)
        except (OSError, ValueError, RuntimeError) as e:
            # Not an anticipated failure: this file fails with one line, the job goes on, and
            # the traceback goes to the log (-vv) for the bug report.
            log.debug("unexpected error on %s", display_path(src.rel_path), exc_info=True)
            reason = f"unexpected error: {type(e).__name__}: {redact(str(e))}"
            await ctx.file_failed(src, record, reason)

    async def refuse(self, rel_path: str, reason: str, *, size_bytes: int) -> None:
        """A file that cannot be planned (the scan could not read it, its name is rejected or
        taken by another file): failed once in the report, and journaled like any other
        failure, so `jobs show` counts what the run's summary and manifest count."""
        ctx = self.ctx
        record = None
        if ctx.journal is not None:
            record = ctx.journal.begin_file(
                ctx.report.job_id,
                rel_path,
                size_bytes=size_bytes,
                mtime_ns=0,
                inode=0,
                device=0,
                blob_name="",
                block_bytes=0,
                encrypted=ctx.options.encrypt,
            )
        await ctx.outcome(rel_path, "failed", size_bytes=size_bytes, reason=reason, record=record)
