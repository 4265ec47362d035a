"""The commit half of the sender: what a fully read file's blob is made visible with, and how.

The metadata describes exactly the bytes the core read (its identity before the first read and
after the last); tier, tags and the other commit headers come from the run's options, the
policy's placement of the file, the Content-Type rule and --put-md5, fitted to what the
destination can store (a Data Box journals the rest pending for `pyengine finalize`).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from pyengine.engine.content_type import content_type_for
from pyengine.engine.context import FileTask
from pyengine.engine.plan import blob_metadata, block_id
from pyengine.errors import SourceError
from pyengine.state.pending import record_pending
from pyengine.targets.profile import fit_properties

if TYPE_CHECKING:
    from pyengine.engine.context import JobContext


class Commits:
    """Mixed into Sender (send.py), whose ``ctx``, ``place`` and ``profile`` it reads."""

    ctx: JobContext
    place: Any
    profile: Any

    async def commit(self, task: FileTask) -> str:
        """Makes a fully read file visible: one Put Blob with its held chunk, or Put Block List of
        blocks 0..n-1, each with the metadata describing the bytes read. Returns the ETag."""
        ctx = self.ctx
        assert ctx.journal is not None and ctx.store is not None
        src, record, done = task.src, task.record, task.done
        # Size, mtime and ctime as the core saw them before its first read and again after its
        # last: the metadata describes exactly the bytes that were read.
        metadata = blob_metadata(
            size_bytes=done.file_size_bytes,
            mtime_ns=done.mtime_ns,
            ctime_ns=done.ctime_ns,
            blake3_hex=done.blake3.hex(),
            upload_id=record.upload_id,
            job_id=ctx.report.job_id,
            encryptiondata=task.encryptiondata,
            content_key=task.content_key,
        )
        tier, tags, headers = self.blob_properties(task)
        if task.single_put:
            held = task.held
            if held is None:  # an empty file has no chunk
                return await ctx.store.put_blob(
                    record.blob_name,
                    b"",
                    crc64=0,
                    metadata=metadata,
                    tier=tier,
                    tags=tags,
                    headers=headers,
                )
            with held:
                etag = await ctx.store.put_blob(
                    record.blob_name,
                    held.data,
                    crc64=held.crc64,
                    metadata=metadata,
                    tier=tier,
                    tags=tags,
                    headers=headers,
                )
            # always: a Dask worker's context relays progress with no listener of its own
            ctx.emit("progress", path=src.rel_path, bytes=held.plain_bytes)
            return etag
        if task.acked != set(range(done.chunks)):  # complete and gap-free, or no commit
            missing = sorted(set(range(done.chunks)) - task.acked)
            raise SourceError(src.rel_path, f"blocks never acknowledged: {missing[:5]}")
        ids = [block_id(record.upload_id, i) for i in range(done.chunks)]
        ctx.journal.mark_committing(record.file_id, flush=False)
        # Durable before the commit request: a kill during Put Block List then resumes with
        # every acknowledged block journaled (one fsync per multi-block file).
        await ctx.journal.aflush()
        return await ctx.store.put_block_list(
            record.blob_name, ids, metadata=metadata, tier=tier, tags=tags, headers=headers
        )

    def blob_properties(
        self, task: FileTask
    ) -> tuple[str | None, dict[str, str] | None, dict[str, str]]:
        """Tier, index tags and the other properties (as commit headers) one file's blob gets.
        ``task.done.head`` holds the file's leading plaintext bytes (SNIFF_BYTES at least).
        Under a policy the file's placement decides tier, tags and immutability (self.place)."""
        opts = self.ctx.options
        # Put Blob and Put Block List both take x-ms-blob-content-type; an encrypted blob gets
        # its plaintext's type (content_type.py says why)
        content_type = content_type_for(task.done.head or b"", task.src.rel_path, opts.content_type)
        tier, tags = opts.tier, dict(opts.tags) or None
        headers = {"x-ms-blob-content-type": content_type}
        if self.place is not None:
            placed = self.place(task)
            if placed is not None:
                tier, tags, extra = placed
                headers.update(extra)
        return self._fit_to_target(tier, tags, headers, task)

    def _fit_to_target(
        self, tier: str | None, tags: dict[str, str] | None, headers: dict[str, str], task: FileTask
    ) -> tuple[str | None, dict[str, str] | None, dict[str, str]]:
        """The commit properties as the destination can take them (targets/profile.py): what
        it cannot store (a Data Box: tags, tier, immutability) is journaled pending for
        `pyengine finalize`, not sent. With --put-md5, the blob's Content-MD5: the MD5 of the
        stored bytes (the ciphertext when encrypting), which AzCopy and rclone compare."""
        if getattr(task.done, "md5", None) is not None:
            headers["x-ms-blob-content-md5"] = base64.b64encode(task.done.md5).decode("ascii")
        tier, tags, headers, pending = fit_properties(self.profile, tier, tags, headers)
        if pending and self.ctx.journal is not None:
            record_pending(self.ctx.journal, self.ctx.report.job_id, task.record, pending)
        return tier, tags, headers
