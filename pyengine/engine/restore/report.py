"""Options of a restore and the report it returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pyengine.engine.report import CopyReport
from pyengine.options import MiB, RetryPolicy


@dataclass(frozen=True)
class RestoreOptions:
    #: native writer threads (decrypt, hash, pwrite); default: every core
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: hard cap on downloaded bytes held at once (the same cap as upload's)
    memory_cap_bytes: int = 512 * MiB
    #: HTTP requests in flight at once
    max_concurrency: int = 64
    #: files restored at once (each holds an open descriptor)
    max_files: int = 64
    #: smallest range; a larger blob gets the block size upload would choose (<= 50,000 ranges)
    min_range_bytes: int = 8 * MiB
    #: key-encryption key (azure-storage-blob KEK interface) for encrypted blobs
    kek: Any = field(default=None, repr=False)
    #: migration policy (pyengine.policy.load_policy): each blob's KEK is that of the tenant
    #: whose destination covers it (engine/restore/keys.py); not with ``kek``
    policy: Any = field(default=None, repr=False)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: restore only the blobs this copy job committed (from its journal)
    job_id: str | None = None
    #: restore only blobs whose index tags say this study / tenant (tags ``studyuid``, ``tenant``
    #: as copy's policy writes them; read from the listing, include=tags)
    study_uid: str | None = None
    tenant: str | None = None
    #: secret: never printed (repr=False)
    connection_string: str | None = field(default=None, repr=False)
    journal_path: str | None = None
    #: audit manifest (JSONL); None = <journal dir>/manifests/<restore job id>.jsonl
    manifest_path: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Archive-tier blobs: None reports them as pending; "Standard"/"High" rehydrates them in
    #: place (Set Blob Tier to Hot) and reports them pending for a later run
    rehydrate: Literal["Standard", "High"] | None = None
    #: PEM file of CA certificates to trust for HTTPS besides the system store (a Data Box's
    #: Blob endpoint or a private-link gateway signed by a private CA), as CopyOptions'
    ca_cert_file: str | None = None
    #: the source endpoint's REST dialect, "azure" | "databox"; None: from the host name (a
    #: ``*.microsoftdatabox.com`` host is a Data Box), as CopyOptions.target
    target: str | None = None


@dataclass
class RestoreReport(CopyReport):
    """CopyReport's fields (files_copied = files restored and verified or unverified), plus:"""

    #: restored without a pyengine digest to compare (size checked only)
    files_unverified: int = 0
    #: blobs in the Archive tier: not restorable until rehydrated (see RestoreOptions.rehydrate)
    files_pending_archive: int = 0
    pending_archive: list[str] = field(default_factory=list)
    #: bytes received from the service (stored bytes: ciphertext when encrypted)
    bytes_downloaded: int = 0
    #: ranges fetched in this run, and ranges a previous run had written and checked
    ranges_fetched: int = 0
    ranges_resumed: int = 0
    #: highest byte budget held at once (<= memory_cap_bytes)
    peak_budget_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.files_failed == 0 and self.files_pending_archive == 0
