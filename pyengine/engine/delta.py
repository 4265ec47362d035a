"""The online delta: a re-run into a prefix that already holds many blobs compares one streamed
List Blobs (with metadata) against the scan, instead of one HEAD per file.

Both streams come in the same order: List Blobs returns names sorted by their UTF-8 bytes, and
the scan walks each directory in that order (a directory sorts as ``name/``: engine/scan.py
``_list_dir``). So one pass of a merge-join pairs every source file with the listing entry of
its blob name (or none), the way rclone's and AzCopy's sync compare sorted listings. Memory is
one page of the listing, never the whole listing or the whole scan.

What keeps it correct when the orders disagree (a service or emulator that sorts otherwise, a
directory that became a file between listing and lstat): the join checks both streams are
strictly increasing. A scan name at or below one already asked for, and every name once the
listing went backwards, answers :data:`UNKNOWN`, and the caller falls back to a HEAD. An entry
the join passed without a matching scan name is only a candidate for "gone": the deletion pass
still checks it against every name the scan claimed (engine/mirror.py).

The entries passed unmatched are kept in a temporary SQLite table (a moved tree can leave
millions), so that the deletion pass reads them instead of listing the prefix a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from pyengine.engine import metadata_names as mn
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.scan import SourceFile
from pyengine.targets.base import StoredBlob

#: answer of :meth:`ListingJoin.lookup` when the join cannot tell: HEAD the blob instead
UNKNOWN: Final = object()
#: answer of :meth:`ListingJoin.lookup_now` when the next batch must be awaited first
NOT_READY: Final = object()
#: listing entries handed from the prefetch task to the join at once (one queue hop per batch)
_BATCH = 1000
#: batches listed ahead of the join: page latency hidden, memory a few pages at most
_AHEAD_BATCHES = 8


@dataclass(slots=True)  # not frozen: one per listed blob (see wire.BlobProps)
class ListedBlob:
    """A List Blobs entry as the up-to-date check reads it: metadata names lowercased (as a
    HEAD's ``x-ms-meta-*`` headers give them), the ETag quoted (as a HEAD's ETag header is),
    so If-Match and the manifest see one form whichever call found the blob."""

    name: str
    size_bytes: int
    etag: str
    metadata: Mapping[str, str]


def as_listed(blob: StoredBlob) -> ListedBlob:
    etag = blob.etag
    if etag and not etag.startswith(('"', "W/")):
        etag = f'"{etag}"'
    meta = blob.metadata
    # names as HEAD gives them; most pages hold no capital: then no new dict per blob
    if not "".join(meta).islower():
        meta = {k.lower(): v for k, v in meta.items()}
    return ListedBlob(blob.name, blob.size_bytes, etag, meta)


def listed_unchanged(src: SourceFile, listed: object) -> bool:
    """Whether a listing entry records this source version (size, mtime, ctime, a digest):
    what --check=metadata calls unchanged (decide.py decides; this only says it is likely)."""
    if not isinstance(listed, ListedBlob):
        return False
    md = listed.metadata
    return (
        meta_get(md, mn.SIZE) == str(src.size_bytes)
        and meta_get(md, mn.MTIME_NS) == str(src.mtime_ns)
        and meta_get(md, mn.CTIME_NS) == str(src.ctime_ns)
        and bool(meta_get(md, mn.BLAKE3) or meta_get(md, mn.KEYED_BLAKE3))
    )


class Unmatched:
    """Listing entries no scan name matched, in a private temporary SQLite database."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute(
            "CREATE TABLE unmatched (name TEXT PRIMARY KEY, size_bytes INTEGER, etag TEXT)"
            " WITHOUT ROWID"
        )
        self.count = 0

    def add(self, blobs: list[StoredBlob]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO unmatched VALUES (?, ?, ?)",
            ((b.name, b.size_bytes, b.etag) for b in blobs),
        )
        self.count += len(blobs)

    def __iter__(self) -> Iterator[ListedBlob]:
        for name, size_bytes, etag in self._db.execute(
            "SELECT name, size_bytes, etag FROM unmatched ORDER BY name"
        ):
            yield ListedBlob(name, size_bytes, etag, {})

    def close(self) -> None:
        self._db.close()


class ListingJoin:
    """The merge-join of one listing with the scan's blob names, asked in scan order.

    ``listing`` is the whole prefix's List Blobs with metadata; ``lookup`` is called once per
    source file, in scan order, from one task. After :meth:`finish` (the scan ended), ``listed``
    counts every blob under the prefix and ``unmatched`` holds those no scan name matched;
    ``complete`` says both can stand in for a second listing.
    """

    def __init__(self, listing: AsyncIterator[StoredBlob]) -> None:
        self._listing = listing
        self._queue: asyncio.Queue[list[StoredBlob] | BaseException | None] = asyncio.Queue(
            _AHEAD_BATCHES
        )
        self._task: asyncio.Task[None] | None = None
        self._batch: list[StoredBlob] = []
        self._pos = 0
        self._ended = False
        self._last_asked: str | None = None
        self._last_listed: str | None = None
        #: the listing went backwards: every later lookup answers UNKNOWN
        self.broken = False
        self.complete = False
        self.listed = 0
        self.matched = 0
        self.unknown = 0
        self.unmatched = Unmatched()
        self._pending_unmatched: list[StoredBlob] = []

    # --- the listing, prefetched ------------------------------------------------------------

    async def _prefetch(self) -> None:
        batch: list[StoredBlob] = []
        try:
            async for blob in self._listing:
                batch.append(blob)
                if len(batch) >= _BATCH:
                    await self._queue.put(batch)
                    batch = []
            await self._queue.put(batch)
            await self._queue.put(None)
        except Exception as e:  # handed to the join, raised in the job there
            await self._queue.put(e)

    async def _next_batch(self) -> bool:
        if self._task is None:
            self._task = asyncio.create_task(self._prefetch(), name="pyengine-delta-listing")
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._ended = True
            return False
        # the order the join relies on, checked once per entry as it arrives
        names = [b.name for b in item]
        if self._last_listed is not None:
            names.insert(0, self._last_listed)
        if any(a >= b for a, b in itertools.pairwise(names)):
            self.broken = True
        if item:
            self._last_listed = item[-1].name
        self._batch, self._pos = item, 0
        self.listed += len(item)
        return True

    async def _head(self) -> StoredBlob | None:
        """The next entry not yet passed, or None at the end of the listing."""
        while self._pos >= len(self._batch):
            if self._ended or not await self._next_batch():
                return None
        return self._batch[self._pos]

    def _pass(self, blob: StoredBlob) -> None:
        self._pos += 1
        self._pending_unmatched.append(blob)
        if len(self._pending_unmatched) >= _BATCH:
            self.unmatched.add(self._pending_unmatched)
            self._pending_unmatched = []

    # --- the join ---------------------------------------------------------------------------

    def lookup_now(self, name: str) -> ListedBlob | object | None:
        """:meth:`lookup` answered from the entries already fetched, or :data:`NOT_READY` when
        it needs the next batch of the listing (then await lookup): the scan loop pays no
        coroutine per file while a batch lasts."""
        if self.broken or (self._last_asked is not None and name <= self._last_asked):
            self.unknown += 1
            return UNKNOWN
        batch = self._batch
        while self._pos < len(batch):
            blob = batch[self._pos]
            if blob.name == name:
                self._pos += 1
                self.matched += 1
                self._last_asked = name
                return as_listed(blob)
            if blob.name > name:
                self._last_asked = name
                return None
            self._pass(blob)
        if self._ended:
            self._last_asked = name
            return None
        return NOT_READY

    async def lookup(self, name: str) -> ListedBlob | object | None:
        """The listing entry of blob ``name``; None when the listing has none; UNKNOWN when
        the order of either stream does not let the join tell (then HEAD it)."""
        while True:
            found = self.lookup_now(name)
            if found is not NOT_READY:
                return found
            await self._next_batch()  # the end of the listing sets _ended: None next time

    async def finish(self) -> None:
        """The scan ended: the rest of the listing is unmatched. ``complete`` tells whether
        the deletion pass may use ``listed`` and ``unmatched`` instead of listing again."""
        while not self.broken:
            blob = await self._head()
            if blob is None:
                break
            self._pass(blob)
        if self._pending_unmatched:
            self.unmatched.add(self._pending_unmatched)
            self._pending_unmatched = []
        self.complete = not self.broken and self._ended

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._listing.aclose()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.unmatched.close()


__all__ = [
    "NOT_READY",
    "UNKNOWN",
    "ListedBlob",
    "ListingJoin",
    "Unmatched",
    "as_listed",
    "listed_unchanged",
]
