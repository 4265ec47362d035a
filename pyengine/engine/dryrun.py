"""`--dry-run`: the same scan and decisions as a real run (a HEAD or a listing per file, as
--check asks), with no journal, no manifest and no request that changes anything. Every file is
counted once: to copy, up to date, or failed with its reason (CopyReport.files_to_copy,
files_up_to_date, files_failed), and the deletion pass says what it would delete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyengine.engine.decide import Decider
from pyengine.engine.scan import SourceFile
from pyengine.errors import ContainerNotFoundError, PyEngineError
from pyengine.state.records import FileRecord

if TYPE_CHECKING:
    from pyengine.engine.context import JobContext
    from pyengine.engine.job import _Job
    from pyengine.targets.base import Target


class DryRunDecider(Decider):
    """The real run's decisions, minus the one that writes: a blob whose content key an old KEK
    wraps is counted as up to date (a real run re-wraps it in place, sending no bytes) and left
    as it is."""

    async def rewrap(self, props: Any, content_key: bytes) -> None:
        self.ctx.report.files_rewrapped += 1


async def dry_run(job: _Job, target: Target) -> None:
    """The dry run of a job, its target open."""
    ctx, opts = job.ctx, job.ctx.options
    try:
        await target.ensure_container(create=False)
    except ContainerNotFoundError:
        if not opts.create_container:
            raise  # a real run would stop here too (exit 2)
        # nothing is there: every file is to copy, and there is nothing to delete
        ctx.report.container_to_create = ctx.dest.container
        ctx.dest_was_empty = True
        await job.copy_all()
        return
    if opts.check != "none":
        ctx.dest_was_empty = await job.prefix_is_empty(target)
    await job.copy_all()
    await job.mirror.report_deletions()


async def plan_file(ctx: JobContext, decide: Decider, src: SourceFile, name: str) -> None:
    """The decision a real run would make for this file, counted once."""
    r = ctx.report
    # a record no blob can claim as its own upload: only --check decides "up to date"
    record = FileRecord(
        file_id=0,
        job_id="",
        rel_path=src.rel_path,
        size_bytes=src.size_bytes,
        mtime_ns=src.mtime_ns,
        inode=src.inode,
        device=src.device,
        blob_name=name,
        upload_id="",
        block_bytes=0,
        encrypted=ctx.options.encrypt,
        state="planned",
    )
    try:
        verdict = await decide.already_there(src, record)
    except PyEngineError as e:
        await ctx.outcome(src.rel_path, "failed", size_bytes=src.size_bytes, reason=e.reason)
        return
    if verdict is None:
        r.files_to_copy += 1
        r.bytes_to_copy += src.size_bytes
        ctx.emit("file_planned", path=src.rel_path, blob=name, bytes=src.size_bytes)
        return
    r.files_up_to_date += 1
    r.bytes_up_to_date += src.size_bytes
    ctx.emit(
        "file_planned",
        path=src.rel_path,
        blob=name,
        bytes=src.size_bytes,
        reason=f"up to date: {verdict[1]}",
        extra={"up_to_date": True},
    )
