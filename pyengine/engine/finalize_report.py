"""What ``pyengine finalize`` found and did: counts, one finding per bad blob, JSON for tools."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyengine.state.verify_report import MAX_FINDINGS_KEPT, Finding

#: kinds of finding: not at DEST; there with another size or digest (or another version); a
#: request about it failed (after the retries) or it cannot be stamped without a KEK
FINDING_KINDS = ("missing", "mismatched", "failed")
#: findings kept in the report; more are counted only (the CLI printed each as it came)
MAX_FINDINGS = MAX_FINDINGS_KEPT

#: one line per blob found missing, mismatched or failed: the same record as verify's
FinalizeFinding = Finding


@dataclass
class FinalizeReport:
    job_id: str
    #: redacted DEST (the account where the device's data landed)
    dest: str
    deep: bool
    #: --sample PERCENT of a deep run (None: every blob)
    sample_percent: float | None = None
    #: the job's committed files looked at (each once)
    files_checked: int = 0
    #: blobs whose properties this run stamped
    files_stamped: int = 0
    #: blobs an earlier finalize run stamped (checked again, stamped nothing)
    files_already_stamped: int = 0
    #: blobs a later job (an online delta) replaced with a newer version: not checked further
    files_superseded: int = 0
    files_missing: int = 0
    files_mismatched: int = 0
    files_failed: int = 0
    #: blobs read back and re-hashed (--deep)
    files_deep_checked: int = 0
    #: control-plane requests that changed a blob (metadata, headers, tags, tier, immutability)
    requests_stamping: int = 0
    #: bytes downloaded (--deep)
    bytes_read: int = 0
    #: the journal now says the job's files live at dest (`pyengine verify DEST` knows them)
    location_recorded: bool = False
    findings: list[FinalizeFinding] = field(default_factory=list)
    findings_left_out: int = 0
    on_finding: Callable[[FinalizeFinding], None] | None = field(
        default=None, repr=False, compare=False
    )

    def add(self, kind: str, blob: str, reason: str) -> None:
        assert kind in FINDING_KINDS, kind
        setattr(self, f"files_{kind}", getattr(self, f"files_{kind}") + 1)
        finding = FinalizeFinding(blob, kind, reason)
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.findings_left_out += 1
        if self.on_finding is not None:
            self.on_finding(finding)

    @property
    def ok(self) -> bool:
        return self.files_missing == 0 and self.files_mismatched == 0 and self.files_failed == 0

    def to_json(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("findings", "on_finding")
        }
        d["kind"] = "finalize"
        d["ok"] = self.ok
        d["findings"] = [dataclasses.asdict(f) for f in self.findings]
        return d


def in_sample(rel_name: str, percent: float) -> bool:
    """Whether a blob is in a ``--sample PERCENT`` deep check: the first 8 bytes of the SHA-256
    of its name relative to the job's prefix, as a fraction of 2**64, below PERCENT / 100. The
    same names are chosen on every run (a re-run checks the same blobs; a larger PERCENT checks
    a superset), whatever DEST is."""
    digest = hashlib.sha256(rel_name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * 2**64


__all__ = ["FINDING_KINDS", "FinalizeFinding", "FinalizeReport", "in_sample"]
