"""The online delta's unchanged files, decided and recorded a scan batch at a time.

A re-run of a tree that barely changed spends almost all its time on files the listing already
shows unchanged (engine/delta.py). Taken one by one (copy_file: plan, begin_file, the up-to-date
check, mark_skipped, outcome, a manifest write) each cost ~60 µs of the loop, three times what
the scan, the listing and the join cost together (``pyengine bench delta``). Here a batch of
them gets one journal append, one manifest write and one report update.

Only the verdict the per-file path would reach without a request or a key is taken here: an
unencrypted run, a blob stored unencrypted, not written by this job (that is a commit the
journal missed: decide.py checks it), its size, mtime, ctime and a digest recorded, and a path
this job has certainly not begun. Anything else goes back to the per-file path, whose answer is
then the same as it always was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyengine.engine import metadata_names as mn
from pyengine.engine.delta import ListedBlob
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.plan import blob_name, read_plan
from pyengine.engine.scan import SourceFile
from pyengine.errors import SourceError
from pyengine.state.manifest import ManifestEntry
from pyengine.state.records import UnbegunSkip
from pyengine.targets.open import name_limit

if TYPE_CHECKING:
    from pyengine.engine.context import JobContext

#: the reason decide.py gives for the same verdict (--check=metadata, same version)
WHY = "unchanged (size, mtime, ctime and digest recorded at the destination)"

Pairs = list[tuple[SourceFile, ListedBlob]]


def takes(ctx: JobContext, listed: ListedBlob) -> bool:
    """Whether the verdict on a file whose entry ``listed`` already passed
    delta.listed_unchanged (job.py delta_inline) can be taken here: see the module's
    docstring."""
    if ctx.options.encrypt or ctx.resumed or ctx.options.check != "metadata":
        return False
    md = listed.metadata
    return mn.ENCRYPTION_DATA not in md and meta_get(md, mn.JOB_ID) != ctx.report.job_id


def record_unchanged(ctx: JobContext, profile: Any, files: Pairs) -> tuple[Pairs, bool]:
    """Skips ``files`` (each passed delta.listed_unchanged and :func:`takes`) as copy_file
    would: journaled skipped, counted, a manifest line and an event each. ``profile``: the
    destination's limits (targets/profile.py). Returns the files left to copy_file (a name or
    a size the destination refuses: copy_file refuses it with the reason; a path the journal
    may have begun), and whether the manifest is due for a flush. Never awaits: a job being
    stopped still records what it decided (the lines wait in the manifest's buffer)."""
    assert ctx.journal is not None
    opts, prefix = ctx.options, ctx.dest.prefix
    max_len = min(name_limit(ctx.dest), profile.max_name_chars)
    left: Pairs = []
    planned: Pairs = []
    rows: list[UnbegunSkip] = []
    for src, listed in files:
        try:
            name = blob_name(prefix, src.rel_path, max_len=max_len)
            chunk_bytes, _ = read_plan(
                src.size_bytes,
                single_put_max_bytes=opts.single_put_max_bytes,
                block_bytes=opts.block_bytes,
                encrypt=False,
                path=src.rel_path,
                max_block_bytes=profile.max_block_bytes,
                max_blob_bytes=profile.max_blob_bytes,
            )
        except SourceError:
            left.append((src, listed))
            continue
        planned.append((src, listed))
        rows.append(
            UnbegunSkip(
                src.rel_path,
                src.size_bytes,
                src.mtime_ns,
                src.ctime_ns,
                src.inode,
                src.device,
                name,
                chunk_bytes,
            )
        )
    journaled = ctx.journal.record_skipped(ctx.report.job_id, rows, WHY, encrypted=False)
    report, entries = ctx.report, []
    for (src, listed), done in zip(planned, journaled, strict=True):
        if not done:
            left.append((src, listed))
            continue
        report.files_skipped += 1
        report.bytes_skipped += src.size_bytes
        if ctx.on_event is not None:
            size = src.size_bytes
            ctx.emit("file_skipped", path=src.rel_path, blob=listed.name, bytes=size, reason=WHY)
        entries.append(
            ManifestEntry(
                path=src.rel_path,
                size_bytes=src.size_bytes,
                mtime_ns=src.mtime_ns,
                status="skipped",
                job_id=report.job_id,
                blob_url=ctx.dest.blob_url(listed.name),
                blake3=meta_get(listed.metadata, mn.BLAKE3),
                etag=listed.etag,
                encrypted=False,
                **ctx.manifest_extra(src.rel_path),
            )
        )
    due = ctx.manifest is not None and ctx.manifest.add_many(entries)
    return left, due
