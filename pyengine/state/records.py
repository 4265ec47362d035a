"""What the journal holds, as Python values: file and job states, the records the journal hands
out (FileRecord, BlockAck, JobInfo, JobSummary), where the journal lives by default, and the
secret scrubbing every text passes before it is written there.

The journal is a plain file that outlives the job (and names every source file), so nothing
that goes into it may carry a SAS signature or an account key: :func:`contains_secret` refuses
such a destination or option set, and :func:`one_line` scrubs error texts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

STATES = ("planned", "uploading", "committing", "committed", "failed", "skipped")
#: states whose files still need work on resume
PENDING_STATES = ("planned", "uploading", "committing")
#: "interrupted": stopped by a signal or a cancellation, journal durable, resumable
JOB_STATES = ("running", "interrupted", "completed", "failed", "cancelled")

#: error texts are one line; longer ones are cut (a stack of nested causes adds nothing here)
MAX_ERROR_CHARS = 1_000

_SECRET_MARKERS = ("sig=", "accountkey=", "sharedaccesssignature=")
# Values of SAS signatures and account keys, wherever they appear in a free text (an exception
# message may embed a full SAS URL or a connection string).
_SECRET_VALUE_RE = re.compile(r"(?i)\b(sig|accountkey|sharedaccesssignature)=[^&;\s\"']*")


def contains_secret(text: str) -> bool:
    """True if text looks like it carries a SAS signature or an account key."""
    lowered = text.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def scrub_secrets(text: str) -> str:
    """text with every SAS signature / account key value replaced by ``REDACTED``."""
    return _SECRET_VALUE_RE.sub(lambda m: f"{m.group(1)}=REDACTED", text)


def one_line(text: str) -> str:
    """A secret-free, single-line, bounded version of an error text, fit for the journal."""
    flat = " ".join(scrub_secrets(str(text)).split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 3] + "..."


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/pyengine`` or ``~/.local/state/pyengine``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return Path(base) / "pyengine"


def default_journal_path() -> Path:
    return default_state_dir() / "jobs.sqlite"


@dataclass(frozen=True)
class BlockAck:
    """A block the service acknowledged (Put Block answered 201)."""

    index: int
    length_bytes: int
    crc64: int
    xxh3_128: bytes


@dataclass
class FileRecord:
    file_id: int
    job_id: str
    rel_path: str
    size_bytes: int
    mtime_ns: int
    inode: int
    device: int
    blob_name: str
    #: 32 hex chars, random per file version; part of every block ID of this version
    upload_id: str
    block_bytes: int
    encrypted: bool
    state: str
    etag: str | None = None
    blake3_hex: str | None = None
    #: failure text (failed) or reason (skipped); one line, secrets scrubbed
    error: str | None = None
    #: blocks acknowledged by the service; None where not loaded (iter_files without with_blocks)
    acked_blocks: dict[int, BlockAck] | None = field(default_factory=dict)
    #: set by begin_file only: "changed" when an older version was replaced, else None
    previous_state: str | None = None
    updated_ns: int = 0
    #: the blob's `encryptiondata` (content key wrapped by the KEK: not a secret, the same value
    #: goes into the blob metadata); lets a resumed job re-create identical ciphertext blocks
    encryptiondata: str | None = None
    #: ctime of the version that was read. An in-place rewrite can restore mtime, never ctime, so
    #: a ctime change is a new version. None: journaled before schema 2 (never checked against a
    #: rewrite), which matches no scanned ctime and so counts as changed once.
    ctime_ns: int | None = None

    @property
    def identity(self) -> tuple[int, int, int | None, int, int]:
        return (self.size_bytes, self.mtime_ns, self.ctime_ns, self.inode, self.device)


class UnbegunSkip(NamedTuple):
    """A file found up to date before its job began it (the online delta's unchanged files):
    what :meth:`Journal.record_skipped` journals for it."""

    rel_path: str
    size_bytes: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    blob_name: str
    block_bytes: int


@dataclass(frozen=True)
class JobSummary:
    """Per-path totals of a job (latest version of each path): copied + skipped + failed + pending
    is every path the job planned, each counted once."""

    files_copied: int = 0
    bytes_copied: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    files_failed: int = 0
    bytes_failed: int = 0
    files_pending: int = 0
    bytes_pending: int = 0

    @property
    def files_total(self) -> int:
        return self.files_copied + self.files_skipped + self.files_failed + self.files_pending

    @property
    def bytes_total(self) -> int:
        return self.bytes_copied + self.bytes_skipped + self.bytes_failed + self.bytes_pending


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    source: str
    #: redacted destination URL (never a SAS signature or key)
    dest: str
    options: dict[str, Any]
    status: str
    created_ns: int
    updated_ns: int
    #: files and bytes per file state (only states that occur)
    files_by_state: dict[str, int]
    bytes_by_state: dict[str, int]
