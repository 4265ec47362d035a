"""The one frozen options object. The CLI maps its flags onto it; the library takes it directly."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pyengine.errors import ConfigError

MiB = 1024 * 1024

#: Azure block blob limits (REST "Put Block List": at most 50,000 committed blocks, 4000 MiB each).
MAX_BLOCKS_PER_BLOB = 50_000
MAX_BLOCK_BYTES = 4000 * MiB
#: Azure client-side encryption v2 splits plaintext into 4 MiB GCM regions.
REGION_BYTES = 4 * MiB
TIERS = ("Hot", "Cool", "Cold", "Archive")


#: default limit: at most this share of the blobs under the prefix in one run
DEFAULT_MAX_DELETE_PERCENT = 10.0

_LIMIT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


@dataclass(frozen=True)
class DeleteLimit:
    """At most ``count`` blobs, or at most ``percent`` % of the blobs under the prefix."""

    count: int | None = None
    percent: float | None = DEFAULT_MAX_DELETE_PERCENT
    #: given by the user: an empty source tree may then delete (the default never does)
    explicit: bool = False

    def allowed(self, blobs_under_prefix: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return int(blobs_under_prefix * self.percent / 100.0)

    def describe(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_max_delete(text: str) -> DeleteLimit:
    """``N`` (a count of blobs) or ``P%`` (a share of the blobs under the prefix)."""
    m = _LIMIT_RE.fullmatch(text)
    if m is None:
        raise ConfigError("--max-delete", f"expected N or P% (e.g. 100 or 5%), got {text!r}")
    value, pct = m.group(1), m.group(2)
    if pct:
        percent = float(value)
        if percent > 100:
            raise ConfigError("--max-delete", f"a share above 100% makes no sense: {text!r}")
        return DeleteLimit(count=None, percent=percent, explicit=True)
    if "." in value:
        raise ConfigError("--max-delete", f"a count of blobs is a whole number: {text!r}")
    return DeleteLimit(count=int(value), percent=None, explicit=True)


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for every request path (one policy object, see pyengine.targets.pacer).

    Retries are bounded by elapsed time, not by a try count: Azure answers 503/429 for minutes
    when an account or partition is over its targets, and a migration must slow down through
    that, not fail (a 30 s storm failed 20 of 208 files with the old 8-try limit).
    """

    #: a request (all its tries and waits) gives up once this long has passed since its first
    #: try; 15 min outlasts the throttling episodes Azure documents ("minutes at a time")
    max_elapsed_s: float = 900.0
    #: optional try limit on top of the time bound (None: time alone decides)
    max_tries: int | None = None
    base_delay_s: float = 0.25
    #: longest single wait; also caps a server's Retry-After. Short (rclone's azureblob pacer
    #: caps at 2 s) so a job does not idle long after a storm ends: a 15 s cap left a 30 s storm
    #: costing 41 s. Sending less while throttled is the adaptive limit's job, and at
    #: concurrency 1 a throttled answer holds back every request (one probe per wait).
    max_delay_s: float = 5.0
    #: a try that makes no progress (no body byte taken, no response byte) this long is aborted
    #: and retried: one stalled response held a 1 s job for 60 s
    stall_timeout_s: float = 30.0


@dataclass(frozen=True)
class CopyOptions:
    #: native reader/hasher threads; default: every core
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: hard cap on pooled chunk memory; readers stop when it is all leased (backpressure)
    memory_cap_bytes: int = 512 * MiB
    #: block size for Put Block; None picks a power of two from the file size (≤ 50,000 blocks)
    block_bytes: int | None = None
    #: files up to this size go in one Put Blob request
    single_put_max_bytes: int = 8 * MiB
    #: HTTP requests in flight at once
    max_concurrency: int = 64
    encrypt: bool = False
    #: key-encryption key with the azure-storage-blob KEK interface
    #: (wrap_key, unwrap_key, get_kid, get_key_wrap_algorithm); required when encrypt is set
    kek: Any = field(default=None, repr=False)
    tier: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dry_run: bool = False
    create_container: bool = False
    #: secret: never printed (repr=False) nor stored in the journal
    connection_string: str | None = field(default=None, repr=False)
    #: how a re-run decides a destination blob is already up to date
    check: Literal["metadata", "hash", "none"] = "metadata"
    #: SQLite job store; None = the user's state directory
    journal_path: str | None = None
    #: audit manifest (JSONL); None = <journal dir>/manifests/<job_id>.jsonl
    manifest_path: str | None = None
    delete_destination: bool = False
    #: most blobs one run may delete (a count, or a share of the blobs under the prefix);
    #: default 10 %, and none when the source tree is empty (pyengine.engine.mirror)
    max_delete: DeleteLimit = field(default_factory=DeleteLimit)
    #: earlier key-encryption keys: a blob whose content key one of them wrapped gets its key
    #: re-wrapped under ``kek`` in place (metadata only) instead of being sent again
    old_keks: tuple[Any, ...] = field(default=(), repr=False)
    #: bypass the page cache (O_DIRECT) for reads that are not encrypted
    direct_io: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: cap on requests started per second, every try counting (None: no cap)
    max_requests_per_s: float | None = None
    #: cap on request body bytes sent, in megabits per second like AzCopy's --cap-mbps (None: no
    #: cap); leaves the rest of a shared link to live traffic
    cap_mbps: float | None = None
    #: Content-Type of every blob of the run; None: per file, application/dicom for DICOM Part
    #: 10, else from the name's extension (pyengine.engine.content_type)
    content_type: str | None = None
    #: what the destination endpoint is: "azure" or "databox" (Data Box Blob storage: REST
    #: 2019-02-02, 880-character names, 100 MiB blocks; pyengine.targets.profile); None: a
    #: ``*.microsoftdatabox.com`` host is a Data Box, any other is Azure
    target: Literal["azure", "databox"] | None = None
    #: PEM file of the CA (or self-signed certificate) to trust for HTTPS, e.g. a Data Box's own
    #: certificate; None: the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured)
    ca_cert_file: str | None = None
    #: send each blob's MD5 (x-ms-blob-content-md5, of the stored bytes: the ciphertext when
    #: encrypting) so AzCopy --check-md5, rclone check and Storage Explorer can verify it; the
    #: MD5 is computed in the read pass, serial per file (see `pyengine bench native`)
    put_md5: bool = False
    #: run the job on a Dask LocalCluster of this many worker processes, each with its own
    #: native pipeline (threads and memory_cap_bytes apply per worker); None: in this process
    workers: int | None = None
    #: address of an existing Dask scheduler (tcp://host:8786) whose workers see the same source
    #: path; None: no cluster unless ``workers`` is set (pyengine.distributed)
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.content_type is not None:  # it becomes a request header: refuse it up front
            from pyengine.engine.content_type import check_content_type

            check_content_type(self.content_type)
