"""The one frozen options object. The CLI maps its flags onto it; the library takes it directly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from .deletion import DeleteLimit

MiB = 1024 * 1024

#: Azure block blob limits (REST "Put Block List": at most 50,000 committed blocks, 4000 MiB each).
MAX_BLOCKS_PER_BLOB = 50_000
MAX_BLOCK_BYTES = 4000 * MiB
#: Azure client-side encryption v2 splits plaintext into 4 MiB GCM regions.
REGION_BYTES = 4 * MiB
TIERS = ("Hot", "Cool", "Cold", "Archive")


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for every request path (one policy object, see pyengine.pacer)."""

    max_tries: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 30.0
    #: total seconds a single request may spend waiting between tries
    budget_s: float = 300.0


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
    #: default 10 %, and none when the source tree is empty (pyengine.deletion)
    max_delete: DeleteLimit = field(default_factory=DeleteLimit)
    #: earlier key-encryption keys: a blob whose content key one of them wrapped gets its key
    #: re-wrapped under ``kek`` in place (metadata only) instead of being sent again
    old_keks: tuple[Any, ...] = field(default=(), repr=False)
    #: bypass the page cache (O_DIRECT) for reads that are not encrypted
    direct_io: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
