"""What the engine needs of a place bytes go: the one small interface every target implements.

The engine (pyengine.engine) drives a `Target` and never knows which one, as rclone's sync drives
any backend through `Put`, `List`, `Remove`: a new target (Data Box REST, a mounted share,
restore's local writer) is a new module under targets/, not a change to the engine. The engine
never builds a request; a target never reads a journal or a policy.

Block semantics are Azure's block blob model: blocks are staged under ids, invisible until one
commit names them in order; a small blob goes up whole in one request. `BlobStore`
(targets/azure_blob.py) is the reference implementation and satisfies this protocol as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from pyengine.errors import DestinationError


class ForeignBlocksError(DestinationError):
    """Put Block refused because another writer's uncommitted blocks (block IDs of another
    length, e.g. AzCopy's 48 characters against our 52) are staged on the blob: the engine
    discards them (`Target.discard_uncommitted`) and starts the file over, once."""


class StoredBlob(Protocol):
    """One blob as the target reports it (Get Blob Properties, a List Blobs entry)."""

    @property
    def name(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...


class TargetStats(Protocol):
    """The request counters the job copies into its report when it ends."""

    @property
    def retries(self) -> int: ...
    @property
    def throttled_s(self) -> float: ...
    @property
    def stalls(self) -> int: ...
    @property
    def concurrency_min(self) -> int: ...
    @property
    def concurrency_max(self) -> int: ...


class Target(Protocol):
    """The operations the engine calls on its destination, and nothing more."""

    #: retries, throttled time, stalls and the concurrency range, read into the report at the end
    stats: TargetStats

    async def ensure_container(self, create: bool) -> None:
        """Check the destination exists (create it if asked); raise when it cannot be used."""
        ...

    async def put_block(
        self, name: str, block_id: str, data: bytes | memoryview, *, crc64: int
    ) -> None:
        """Stage one block (Put Block): stored under `block_id`, not visible until a commit.
        ForeignBlocksError when another writer's staged blocks make the service refuse it."""
        ...

    async def discard_uncommitted(self, name: str) -> None:
        """Drop the blocks staged on `name` by any writer, without changing its committed
        content; raise DestinationError when that cannot be done."""
        ...

    async def put_block_list(
        self,
        name: str,
        block_ids: list[str],
        *,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Commit the staged blocks in this order, with metadata (Put Block List); the ETag.
        ``headers``: more blob properties the commit sets (content type, immutability, legal
        hold), as the service names them (x-ms-blob-content-type, ...)."""
        ...

    async def put_blob(
        self,
        name: str,
        data: bytes | memoryview,
        *,
        crc64: int,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Store a whole blob in one request (Put Blob); the ETag."""
        ...

    async def get_properties(self, name: str) -> StoredBlob | None:
        """Size, ETag and metadata of a blob (HEAD); None when it does not exist."""
        ...

    async def get_block_list(self, name: str, *, uncommitted: bool = True) -> list[tuple[str, int]]:
        """(block id, size_bytes) of the staged (or committed) blocks; [] when none."""
        ...

    def list_blobs(
        self, prefix: str = "", *, metadata: bool = True, page_size: int = 5000
    ) -> AsyncIterator[StoredBlob]:
        """Every blob whose name starts with `prefix`, page by page."""
        ...

    async def delete_blob(self, name: str) -> None:
        """Delete a blob; one already gone is fine."""
        ...

    async def set_metadata(
        self, name: str, metadata: Mapping[str, str], *, if_match: str | None = None
    ) -> str:
        """Replace a blob's metadata without sending content; with `if_match`, only if unchanged."""
        ...


__all__ = ["ForeignBlocksError", "StoredBlob", "Target", "TargetStats"]
