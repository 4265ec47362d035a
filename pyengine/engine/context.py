"""What every stage of a copy job shares, and the one place a file's outcome is counted.

The job (job.py) owns the lifecycle: it opens the target, the journal and the manifest and sets
them here. The stages (decide.py, send.py, mirror.py) hold a reference to this context rather
than to the job, so each reads as the answer to one question and none can reach the others'
state by accident. A FileTask is one file the core is reading: routed to by send.py, built by
decide.py (the staged-block check pass) and by send.py (hash reads).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyengine.engine.report import CopyReport, Event
from pyengine.engine.scan import SourceFile, display_path
from pyengine.engine.taskowner import TaskOwner
from pyengine.options import CopyOptions
from pyengine.state.journal import FileRecord, Journal
from pyengine.state.manifest import ManifestEntry, ManifestWriter
from pyengine.targets.auth import Destination
from pyengine.targets.base import Target

log = logging.getLogger("pyengine")

EventCallback = Callable[[Event], None]


@dataclass
class FileTask:
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


@dataclass
class JobContext:
    """The job's shared state. `store`, `journal`, `manifest` and `owner` are None until the job
    opens them (a dry run never opens a journal or a manifest)."""

    source: str
    dest: Destination
    options: CopyOptions
    on_event: EventCallback | None
    report: CopyReport = field(default_factory=CopyReport)
    store: Target | None = None
    journal: Journal | None = None
    manifest: ManifestWriter | None = None
    #: owns every task of the running copy (files, blocks, the journal flusher)
    owner: TaskOwner | None = None
    #: a job of the same source and destination was unfinished: this run resumes it
    resumed: bool = False
    #: nothing under the prefix when a new job started: no blob can be up to date, so the
    #: per-file HEAD of --check is skipped (it halves the requests of a first migration)
    dest_was_empty: bool = False

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
        if status == "copied":
            r.files_copied += 1
            r.bytes_copied += size_bytes
            if record is not None and self.journal is not None:
                self.journal.mark_committed(
                    record.file_id, etag=etag or "", blake3_hex=blake3_hex or ""
                )
            if self.on_event is not None:
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
            shown = display_path(rel_path)
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
                    **self.manifest_extra(rel_path),
                )
            )

    async def file_failed(self, src: SourceFile, record: FileRecord, reason: str) -> None:
        """outcome() of a journaled file that failed, with its one-line reason."""
        await self.outcome(
            src.rel_path,
            "failed",
            reason=reason,
            size_bytes=src.size_bytes,
            mtime_ns=src.mtime_ns,
            blob=record.blob_name,
            record=record,
        )

    def manifest_extra(self, rel_path: str) -> dict[str, Any]:
        """Fields a policy job adds to a file's manifest line (tenant, study_uid)."""
        return {}
