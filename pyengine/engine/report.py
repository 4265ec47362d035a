"""Events streamed during a job and the report returned at its end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "job_started",
    "file_planned",  # dry run: to copy, or (reason "up to date: ...") up to date
    "deleted_at_source",
    "file_deleted",  # a blob whose source file is gone, deleted (--delete-destination)
    "delete_planned",  # dry run: the blob would be deleted
    "file_started",
    "progress",  # bytes acknowledged by the destination
    "file_copied",
    "file_skipped",
    "file_failed",
    "foreign_blocks_discarded",  # another tool's staged blocks discarded; the file starts over
    "job_finished",
]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    path: str | None = None  # path relative to the source root
    blob: str | None = None
    bytes: int = 0
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {}, 0)}
        out["kind"] = self.kind
        return out


@dataclass
class CopyReport:
    job_id: str = ""
    files_copied: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    bytes_copied: int = 0
    bytes_skipped: int = 0
    bytes_failed: int = 0
    elapsed_s: float = 0.0
    #: Put Block requests acknowledged in this run, and blocks found already staged by an earlier
    #: run of the job (re-read and re-hashed locally, not sent again)
    blocks_sent: int = 0
    blocks_resumed: int = 0
    #: exceptions raised by the on_event listener: each logged, none stops the job
    listener_errors: int = 0
    #: requests tried again (throttling, server errors, transport faults, stalls)
    retries: int = 0
    #: wall-clock seconds during which requests were backing off after 429/503 (throttling)
    throttled_s: float = 0.0
    #: tries aborted because they made no progress (see RetryPolicy.stall_timeout_s)
    stalls: int = 0
    #: lowest and highest adaptive concurrency limit reached (requests in flight at once)
    concurrency_min: int = 0
    concurrency_max: int = 0
    #: a distributed job (--workers, --scheduler): CPU seconds its worker processes used while
    #: the job's engines were open, every thread (on a cluster that runs other work meanwhile,
    #: that work's too); 0 in one process. Beside the driver's own CPU it says what scale-out
    #: costs (README "Scale-out with Dask")
    workers_cpu_s: float = 0.0
    #: (relative path, one-line reason)
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: destination blobs that no source file claims (reported; deleted only on request)
    deleted_at_source: list[str] = field(default_factory=list)
    #: blobs this run deleted (--delete-destination), each also a manifest line
    blobs_deleted: int = 0
    #: dry run with --delete-destination: blobs that would be deleted (delete_planned events)
    blobs_to_delete: int = 0
    #: why --delete-destination deleted nothing this run (a scan error, a failed file, the
    #: limit); the job then exits non-zero
    deletion_refused: str | None = None
    #: files sent again because their blob was stored in another encryption mode (plain vs
    #: encrypted) or wrapped by a KEK this run could not unwrap
    files_resent_for_encryption: int = 0
    #: blobs whose content key was re-wrapped in place under this run's KEK (no bytes re-sent)
    files_rewrapped: int = 0
    #: files whose blob held another tool's uncommitted blocks (e.g. an interrupted AzCopy),
    #: discarded so the file could start over (each also a warning and an event)
    foreign_blocks_discarded: int = 0
    #: committed files with properties the destination could not store (a Data Box: tags, tier,
    #: immutability), journaled for `pyengine finalize` (pyengine.state.pending)
    files_pending_finalize: int = 0
    manifest_path: str | None = None
    #: a dry run decides every file as a real run would and changes nothing: each file counts
    #: once, as to copy (files_to_copy), up to date (files_up_to_date) or failed (with its
    #: reason in failures); blobs_to_delete / deleted_at_source say what deletion would do
    dry_run: bool = False
    files_to_copy: int = 0
    bytes_to_copy: int = 0
    files_up_to_date: int = 0
    bytes_up_to_date: int = 0
    #: dry run with --create-container: the container that does not exist yet (a real run
    #: would create it; every file is then to copy)
    container_to_create: str | None = None

    @property
    def files_total(self) -> int:
        """Every file of the source the run met, each once (a real run leaves the to_copy and
        up_to_date counts at zero: its up-to-date files are skipped)."""
        return (
            self.files_copied
            + self.files_skipped
            + self.files_failed
            + self.files_to_copy
            + self.files_up_to_date
        )

    @property
    def bytes_total(self) -> int:
        return (
            self.bytes_copied
            + self.bytes_skipped
            + self.bytes_failed
            + self.bytes_to_copy
            + self.bytes_up_to_date
        )

    @property
    def ok(self) -> bool:
        return self.files_failed == 0 and self.deletion_refused is None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["files_total"] = self.files_total
        d["bytes_total"] = self.bytes_total
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d
