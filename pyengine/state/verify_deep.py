"""How ``verify --deep`` reads a blob back: ranged GETs of whole CSE v2 regions, each region of
an encrypted blob checked for its nonce and decrypted (AES-256-GCM, tag checked), the plaintext
hashed incrementally with BLAKE3, and every range in flight charged against one byte budget (the
copy's memory cap) shared by all the blobs read at once. Memory is bounded by the cap, not by
the blob size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyengine.crypto import NONCE_BYTES, TAG_BYTES
from pyengine.options import REGION_BYTES
from pyengine.state.records import FileRecord
from pyengine.state.verify_report import BadBlob, VerifyReport
from pyengine.targets.azure_blob import BlobStore

#: deep: blobs read at once, and ranged GETs in flight per blob
DEEP_BLOBS_IN_FLIGHT = 4
RANGES_IN_FLIGHT = 4
#: deep: plaintext regions per ranged GET (8 MiB): a few MiB each, as the brief asks; a range
#: holds whole CSE v2 regions so each one decrypts on its own
RANGE_REGIONS = 2
#: a range in flight is charged twice its stored size against the memory cap: aiohttp joins the
#: received chunks into one bytes object (2x for a moment), then the plaintext sits beside it
RANGE_COST_FACTOR = 2
STORED_REGION_BYTES = REGION_BYTES + NONCE_BYTES + TAG_BYTES


class ByteBudget:
    """Bytes of ranges in flight, over every blob, at most cap_bytes. One event loop: no lock."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.free_bytes = cap_bytes
        self._released = asyncio.Event()

    def cost(self, n_bytes: int) -> int:
        # a range larger than the whole cap still goes, alone (else it could never go)
        return min(n_bytes, self.cap_bytes)

    def try_take(self, n_bytes: int) -> bool:
        if self.free_bytes < n_bytes:
            return False
        self.free_bytes -= n_bytes
        return True

    def give(self, n_bytes: int) -> None:
        self.free_bytes += n_bytes
        self._released.set()

    async def wait_release(self) -> None:
        self._released.clear()
        await self._released.wait()


def range_regions_for(memory_cap_bytes: int) -> int:
    """Regions per GET: RANGE_REGIONS, or 1 where the cap would not hold two such ranges."""
    two_ranges = 2 * RANGE_COST_FACTOR * RANGE_REGIONS * STORED_REGION_BYTES
    return RANGE_REGIONS if memory_cap_bytes >= two_ranges else 1


def read_ranges(
    plain_bytes: int, encrypted: bool, regions_per_range: int
) -> Iterator[tuple[int, int, int, list[int]]]:
    """(stored offset, stored length, first region index, plaintext bytes of each region)."""
    n_regions = -(-plain_bytes // REGION_BYTES)
    overhead = NONCE_BYTES + TAG_BYTES if encrypted else 0
    for first in range(0, n_regions, regions_per_range):
        last = min(first + regions_per_range, n_regions)
        lengths = [min(REGION_BYTES, plain_bytes - i * REGION_BYTES) for i in range(first, last)]
        offset = first * (REGION_BYTES + overhead)
        yield offset, sum(lengths) + overhead * len(lengths), first, lengths


def decrypt_regions(
    aes: AESGCM, stored: bytes | memoryview, first_region: int, plain_lengths: list[int]
) -> list[bytes]:
    """The plaintext of consecutive CSE v2 regions ``nonce(12) | ciphertext | tag(16)`` starting
    at region ``first_region``. Raises BadBlob naming the region when its nonce is not its index
    (12 bytes big-endian) or its GCM tag does not match (altered bytes)."""
    view = memoryview(stored)
    out = []
    pos = 0
    for k, plain_len in enumerate(plain_lengths):
        index = first_region + k
        region = view[pos : pos + NONCE_BYTES + plain_len + TAG_BYTES]
        nonce = bytes(region[:NONCE_BYTES])
        if nonce != index.to_bytes(NONCE_BYTES, "big"):
            raise BadBlob("damaged", f"region {index}: its nonce is not its index (altered bytes)")
        try:
            out.append(aes.decrypt(nonce, region[NONCE_BYTES:], None))
        except InvalidTag:
            raise BadBlob(
                "damaged", f"region {index}: AES-GCM tag does not match (altered bytes)"
            ) from None
        pos += len(region)
    return out


async def deep_blake3(
    store: BlobStore,
    record: FileRecord,
    content_key: bytes | None,
    budget: ByteBudget,
    regions_per_range: int,
    report: VerifyReport,
) -> str:
    """The plaintext BLAKE3 (hex) of the blob, read through restore's download path (ranges
    sized like the upload's blocks, the native writer checking each region's nonce and GCM tag,
    decrypting and hashing off the event loop) without writing it. Each of the blobs read at
    once gets an equal share of the cap; ``regions_per_range`` is not used there."""
    from pyengine.engine.restore.download import BufferPool, RangeFailed, read_digest
    from pyengine.engine.restore.plan import layout_for
    from pyengine.errors import DestinationError

    stored = record.size_bytes
    if content_key is not None:
        stored += -(-stored // REGION_BYTES) * (NONCE_BYTES + TAG_BYTES)
    layout = layout_for(stored, encrypted=content_key is not None, min_range_bytes=8 * 1024**2)

    def on_bytes(received: int, _plain: int) -> None:
        report.bytes_read += received

    pool = BufferPool(max(1, budget.cap_bytes // DEEP_BLOBS_IN_FLIGHT))
    try:
        digest = await read_digest(
            store, record.blob_name, layout, content_key, pool=pool, threads=2, on_bytes=on_bytes
        )
    except RangeFailed as exc:
        raise BadBlob("damaged", exc.reason) from None
    except DestinationError as exc:
        if "BlobNotFound" in exc.reason or "404" in exc.reason:
            raise BadBlob("missing", "deleted while it was being verified") from None
        raise
    return digest.hex()
