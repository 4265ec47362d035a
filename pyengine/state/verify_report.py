"""What verify finds and reports: the kinds of finding, one Finding per bad blob, and the
VerifyReport that counts them (``--json`` prints :meth:`VerifyReport.to_json`).

A bad blob never stops a run: each check raises :class:`BadBlob` inside itself, the run turns
it into one finding, and goes on with the next blob.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyengine.engine.scan import display_path

#: findings kept in the report object (--json); the rest are counted (each was printed as found)
MAX_FINDINGS_KEPT = 10_000

KINDS = ("damaged", "missing", "unknown", "unreadable")


@dataclass(frozen=True)
class Finding:
    #: full blob name within the container
    blob: str
    #: one of KINDS
    kind: str
    #: one line
    reason: str

    def line(self) -> str:
        return f"{self.kind}: {display_path(self.blob)}: {self.reason}"


@dataclass
class VerifyReport:
    #: the job id or the redacted destination URL that was asked for
    target: str
    #: redacted destination URL that was listed (DEST) or the job's destination (JOB), or for a
    #: JOB that `pyengine finalize` found elsewhere, that location (see located_by_finalize)
    dest: str
    #: jobs whose committed files were checked (oldest first)
    job_ids: list[str]
    deep: bool
    #: known blobs looked at (ok + damaged + missing + unreadable)
    files_checked: int = 0
    files_ok: int = 0
    files_damaged: int = 0
    files_missing: int = 0
    files_unreadable: int = 0
    #: blobs under DEST that no job of the journal committed (DEST target only)
    blobs_unknown: int = 0
    #: ok blobs that are encrypted and whose keyed digest was not checked (no KEK): existence and
    #: size only (a deep run always checks the digest)
    files_digest_unchecked: int = 0
    #: known blobs that a later --delete-destination job removed because their source was gone
    files_deleted_at_source: int = 0
    #: files the job did not commit (failed, skipped, pending): not verified (JOB target only)
    files_not_committed: int = 0
    #: plaintext bytes of the blobs found ok
    bytes_checked: int = 0
    #: bytes downloaded (deep)
    bytes_read: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_left_out: int = 0
    #: JOB target: its blobs were checked at dest, where `pyengine finalize` found them
    located_by_finalize: bool = False
    #: called with each finding as it is found (the CLI prints it at once)
    on_finding: Callable[[Finding], None] | None = field(default=None, repr=False, compare=False)

    @property
    def findings_total(self) -> int:
        return self.files_damaged + self.files_missing + self.files_unreadable + self.blobs_unknown

    @property
    def ok(self) -> bool:
        return self.findings_total == 0

    def add(self, kind: str, blob: str, reason: str) -> None:
        finding = Finding(blob, kind, " ".join(reason.split()))
        if kind == "damaged":
            self.files_damaged += 1
        elif kind == "missing":
            self.files_missing += 1
        elif kind == "unreadable":
            self.files_unreadable += 1
        elif kind == "unknown":
            self.blobs_unknown += 1
        else:
            raise ValueError(f"unknown finding kind {kind!r}")
        if len(self.findings) < MAX_FINDINGS_KEPT:
            self.findings.append(finding)
        else:
            self.findings_left_out += 1
        if self.on_finding is not None:
            self.on_finding(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "verify",
            "target": self.target,
            "dest": self.dest,
            "job_ids": self.job_ids,
            "deep": self.deep,
            "located_by_finalize": self.located_by_finalize,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "files_ok": self.files_ok,
            "files_damaged": self.files_damaged,
            "files_missing": self.files_missing,
            "files_unreadable": self.files_unreadable,
            "blobs_unknown": self.blobs_unknown,
            "files_digest_unchecked": self.files_digest_unchecked,
            "files_deleted_at_source": self.files_deleted_at_source,
            "files_not_committed": self.files_not_committed,
            "bytes_checked": self.bytes_checked,
            "bytes_read": self.bytes_read,
            "findings": [
                {"blob": display_path(f.blob), "kind": f.kind, "reason": f.reason}
                for f in self.findings
            ],
            "findings_left_out": self.findings_left_out,
        }


class BadBlob(Exception):
    """A finding about one blob, raised inside its check."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
