"""Mirror deletion (``--delete-destination``): which blobs provably have no source file, and
whether this run may delete them.

The rules (DESIGN.md "Errors, safety"), stricter than rclone's "not deleting files as there were
IO errors":
- a blob is a candidate only when no file the scan saw claims its name under the one naming rule
  (:func:`pyengine.engine.plan.names_claimed`, which also covers the names the service would
  make of a rejected file name) and the filters would take it;
- nothing is deleted unless the scan of the whole tree met no error, no file failed, and every copy
  of the run was committed and journaled (the caller flushes the journal first);
- a limit refuses a run that would delete more than 10 % of the blobs under the prefix by default,
  or any blob when the source tree is empty, unless ``--max-delete`` says otherwise.

`DeletionPass` is the job's side of it: it records what each scan batch claims, counts the
entries the scan could not take, and at the end of the copy reports (and, if asked, deletes) the
blobs no source file claims.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from pyengine.engine.plan import names_claimed
from pyengine.engine.scan import PathFilter, ScanProblem, SourceFile
from pyengine.options import (  # re-exported: the limit is an option, applied here
    DEFAULT_MAX_DELETE_PERCENT,
    DeleteLimit,
    parse_max_delete,
)
from pyengine.state.manifest import ManifestEntry

if TYPE_CHECKING:
    from pyengine.engine.context import JobContext
    from pyengine.engine.delta import ListingJoin
    from pyengine.targets.base import StoredBlob

log = logging.getLogger("pyengine")


class ClaimedNames:
    """Every blob name claimed by a source file this run saw, for the deletion decision.

    Kept in a private temporary SQLite database on disk (``sqlite3.connect("")``), not in a
    Python set: a 10-million-file tree would hold a gigabyte of strings in RAM.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute("CREATE TABLE claimed (name TEXT PRIMARY KEY) WITHOUT ROWID")
        self.files = 0

    def add(self, names: Iterable[str], *, files: int) -> None:
        # One statement a scan batch, the names as one JSON array: executemany steps SQLite
        # once a row, and each step gives the GIL up and waits to take it back from the scan
        # and journal threads (the online delta's profile: ~13 µs a name on the loop, 1.1 µs
        # alone). json_each decodes exactly what json.dumps encodes.
        # (A NUL, which no file name holds, would end json_each's text early: bound instead.)
        batch = list(names)
        if any("\x00" in n for n in batch):
            self._db.executemany(
                "INSERT OR IGNORE INTO claimed (name) VALUES (?)", ((n,) for n in batch)
            )
        else:
            self._db.execute(
                "INSERT OR IGNORE INTO claimed (name) SELECT value FROM json_each(?)",
                (json.dumps(batch, ensure_ascii=False),),
            )
        self.files += files

    def __contains__(self, name: object) -> bool:
        row = self._db.execute("SELECT 1 FROM claimed WHERE name = ?", (name,)).fetchone()
        return row is not None

    def close(self) -> None:
        self._db.close()


def refusal(
    *,
    candidates: int,
    blobs_under_prefix: int,
    files_in_source: int,
    limit: DeleteLimit,
) -> str | None:
    """Why the limit refuses deleting ``candidates`` blobs, or None when it allows it."""
    if candidates == 0:
        return None
    if files_in_source == 0 and not limit.explicit:
        return (
            f"the source tree is empty: refusing to delete {candidates} blobs "
            "(a missing mount looks like this; pass --max-delete to allow it)"
        )
    allowed = limit.allowed(blobs_under_prefix)
    if candidates > allowed:
        return (
            f"{candidates} of {blobs_under_prefix} blobs under the prefix would be deleted, "
            f"more than the limit of {limit.describe()} ({allowed}); "
            "check the source, then pass --max-delete to allow it"
        )
    return None


class DeletionPass:
    """The job's mirror deletion: fed every scan batch while the copy runs, run once after it."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        #: why this run cannot prove it saw the whole tree (any entry: no deletion)
        self.scan_errors: list[str] = []
        self.claimed = ClaimedNames()
        self.filter = PathFilter(ctx.options.include, ctx.options.exclude)
        #: the online delta's listing (engine/delta.py), read instead of listing again when it
        #: saw the whole prefix in order
        self.listing: ListingJoin | None = None

    def close(self) -> None:
        self.claimed.close()

    def claim_names(self, batch: list[SourceFile | ScanProblem]) -> None:
        """Records the blob names this batch's source entries claim (deletion spares them)."""
        # here, not at the top: plan imports pyengine.options, which imports this module

        prefix = self.ctx.dest.prefix
        names = [n for item in batch if item.rel_path for n in names_claimed(prefix, item.rel_path)]
        self.claimed.add(names, files=sum(isinstance(item, SourceFile) for item in batch))

    def scan_problem(self, item: ScanProblem) -> bool:
        """An entry the scan could not take: proof that this run did not see the whole tree, so
        it deletes nothing. Returns whether it is a file that fails (the job counts and
        journals it once, job.py refuse()); False for an entry the filters would not take."""
        self.scan_errors.append(f"{item.rel_path or item.path}: {item.reason}")
        if not item.counted:  # not a file the filters take: one log line, not a failure
            log.warning("%s: %s (the scan could not examine it)", item.rel_path, item.reason)
            return False
        return True

    async def _blobs_to_consider(self) -> AsyncIterator[StoredBlob]:
        """Blobs under the prefix that may lack a source file: the delta's unmatched entries
        when its listing was whole and in order (every other entry matched a scanned file),
        else a listing of the prefix."""
        assert self.ctx.store is not None
        if self.listing is not None and self.listing.complete:
            for blob in self.listing.unmatched:
                yield blob
            return
        async for blob in self.ctx.store.list_blobs(self.ctx.dest.prefix, metadata=False):
            yield blob

    def deletion_blocked(self) -> str | None:
        """Why this run must not delete anything, or None."""
        if self.scan_errors:
            n = len(self.scan_errors)
            return f"the scan met {n} error{'s' if n > 1 else ''} (first: {self.scan_errors[0]})"
        if self.ctx.report.files_failed:
            return f"{self.ctx.report.files_failed} files failed"
        return None

    async def report_deletions(self) -> None:
        """Blobs under the prefix that no source file claims: reported, and deleted only on
        request, after a clean scan, within the limit (the rules at the top of this module)."""
        ctx = self.ctx
        assert ctx.store is not None
        if os.path.isfile(ctx.source):
            return  # a single-file copy says nothing about its neighbours
        opts = ctx.options
        r = ctx.report
        blocked = self.deletion_blocked()
        if blocked is None and ctx.journal is not None:
            # every copy of the run is durable before the first deletion (raises on failure)
            await ctx.journal.aflush()
        if blocked is not None and not opts.delete_destination:
            return  # nothing to delete, and no blob may be called deleted at source
        prefix = ctx.dest.prefix
        candidates: list[StoredBlob] = []
        blobs_under_prefix = 0
        async for props in self._blobs_to_consider():
            blobs_under_prefix += 1
            rel = props.name[len(prefix) :]
            if props.name in self.claimed or not self.filter.accepts(rel):
                continue
            candidates.append(props)
        if self.listing is not None and self.listing.complete:
            # the entries the delta matched were claimed by a file: counted, never candidates
            blobs_under_prefix = self.listing.listed
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
                ctx.emit("deleted_at_source", path=props.name[len(prefix) :], blob=props.name)
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
                ctx.emit("delete_planned", path=rel, blob=props.name, bytes=props.size_bytes)
                continue
            await ctx.store.delete_blob(props.name)
            r.blobs_deleted += 1
            ctx.emit("file_deleted", path=rel, blob=props.name, bytes=props.size_bytes)
            if ctx.manifest is not None:
                await ctx.manifest.write(
                    ManifestEntry(
                        path=rel,
                        size_bytes=props.size_bytes,
                        mtime_ns=0,
                        status="deleted",
                        job_id=r.job_id,
                        blob_url=ctx.dest.blob_url(props.name),
                        etag=props.etag,
                    )
                )


__all__ = [
    "DEFAULT_MAX_DELETE_PERCENT",
    "ClaimedNames",
    "DeleteLimit",
    "DeletionPass",
    "parse_max_delete",
    "refusal",
]
