"""What a Data Box share cannot carry, kept beside the journal: the share target's record of
every blob it committed, and the whole-file CRC64 it names them by.

A share holds bytes and a modification time only: blob metadata (pyengineblake3, sizes, mtime,
upload id), index tags, the access tier and content type cannot travel through SMB/NFS to the
storage account. Each commit records them here, marked *pending*, so that

- a re-run's up-to-date check (``Target.get_properties``) finds the metadata it compares, and a
  killed job recognises its own commit, exactly as with Azure;
- ``pyengine finalize`` can stamp them on the blobs once the device's data is in the account
  (:meth:`ShareState.pending`, :meth:`ShareState.mark_stamped`).

The record is local (one SQLite file per share container under ``<journal dir>/shares/``): a
file written inside the container directory would itself be uploaded as a blob, and a folder
beside the containers would be an invalid container on the device.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyengine.errors import JournalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    name TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    -- the written file's mtime: a file replaced behind our back no longer matches its record
    file_mtime_ns INTEGER NOT NULL,
    etag TEXT NOT NULL,
    crc64_hex TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tier TEXT,
    tags TEXT,
    headers TEXT,
    -- 1 until finalize stamped metadata, tags, tier and headers on the blob in the account
    pending INTEGER NOT NULL,
    committed_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class ShareRecord:
    name: str
    size_bytes: int
    file_mtime_ns: int
    etag: str
    crc64_hex: str
    metadata: dict[str, str]
    tier: str | None
    tags: dict[str, str] | None
    headers: dict[str, str] | None
    pending: bool


_COLUMNS = (
    "name, size_bytes, file_mtime_ns, etag, crc64_hex, metadata, tier, tags, headers, pending"
)


def _record(row: tuple) -> ShareRecord:  # type: ignore[type-arg]
    name, size, mtime, etag, crc, md, tier, tags, headers, pending = row
    return ShareRecord(
        name=name,
        size_bytes=size,
        file_mtime_ns=mtime,
        etag=etag,
        crc64_hex=crc,
        metadata=json.loads(md),
        tier=tier,
        tags=json.loads(tags) if tags else None,
        headers=json.loads(headers) if headers else None,
        pending=bool(pending),
    )


class ShareState:
    """The committed blobs of one share container (thread-safe; short statements only: WAL with
    synchronous=NORMAL never fsyncs at commit, so the event loop may call it directly)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:  # corrupt, locked or read-only: one line, no trace
            raise JournalError(str(self.path), f"cannot open the share state: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(
        self,
        name: str,
        *,
        size_bytes: int,
        file_mtime_ns: int,
        etag: str,
        crc64_hex: str,
        metadata: Mapping[str, str],
        tier: str | None,
        tags: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        """A commit: its properties, pending until finalize stamps them."""
        row = (
            name,
            size_bytes,
            file_mtime_ns,
            etag,
            crc64_hex,
            json.dumps(dict(metadata), sort_keys=True),
            tier,
            json.dumps(dict(tags), sort_keys=True) if tags else None,
            json.dumps(dict(headers), sort_keys=True) if headers else None,
            1,
            time.time_ns(),
        )
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO blobs VALUES ({', '.join('?' * 11)})", row)

    def get(self, name: str) -> ShareRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM blobs WHERE name = ?", (name,)
            ).fetchone()
        return _record(row) if row else None

    def set_metadata(self, name: str, metadata: Mapping[str, str]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE blobs SET metadata = ?, pending = 1 WHERE name = ?",
                (json.dumps(dict(metadata), sort_keys=True), name),
            )

    def delete(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM blobs WHERE name = ?", (name,))

    def pending(self) -> Iterator[ShareRecord]:
        """Every blob whose metadata, tags, tier and headers still wait for finalize."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM blobs WHERE pending = 1 ORDER BY name"
            ).fetchall()
        return (_record(r) for r in rows)

    def mark_stamped(self, name: str) -> None:
        """finalize set this blob's properties in the account."""
        with self._lock:
            self._db.execute("UPDATE blobs SET pending = 0 WHERE name = ?", (name,))


# --------------------------------------------------------------------------------------------
# Whole-file CRC64 from the blocks' CRC64s

#: Azure Storage's CRC64 (= CRC-64/NVME: reflected, init and xorout all ones), reflected poly
_POLY = 0x9A6C9329AC4BC9B5
_X0 = 1 << 63  # the polynomial 1 in the reflected representation


def _mult_mod_p(a: int, b: int) -> int:
    """a(x) * b(x) mod p(x) over GF(2), reflected (zlib's multmodp, 64 bits wide)."""
    m = _X0
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


#: x^(2^k) mod p for k = 0..63
_X2N = [_X0 >> 1]
for _ in range(63):
    _X2N.append(_mult_mod_p(_X2N[-1], _X2N[-1]))


def crc64_shift(length_bytes: int) -> int:
    """x^(8 * length_bytes) mod p: the factor that moves a CRC past ``length_bytes`` bytes."""
    p, n, k = _X0, length_bytes, 3
    while n:
        if n & 1:
            p = _mult_mod_p(_X2N[k & 63], p)
        n >>= 1
        k += 1
    return p


def crc64_combine(crc_a: int, crc_b: int, length_b_bytes: int, shift: int | None = None) -> int:
    """CRC64 of A ‖ B from CRC64(A), CRC64(B) and len(B) (zlib's crc32_combine, for Azure's
    CRC64: the all-ones init and xorout cancel). ``shift``: crc64_shift(length_b_bytes) when the
    caller combines many blocks of one length (one multiplication each, ~20 µs)."""
    factor = shift if shift is not None else crc64_shift(length_b_bytes)
    return _mult_mod_p(factor, crc_a) ^ crc_b


def crc64_of_blocks(blocks: list[tuple[int, int]]) -> int:
    """Whole-file CRC64 of consecutive blocks given as (length_bytes, crc64)."""
    crc = 0
    shifts: dict[int, int] = {}
    for length, block_crc in blocks:
        if length not in shifts:
            shifts[length] = crc64_shift(length)
        crc = crc64_combine(crc, block_crc, length, shifts[length])
    return crc


__all__ = [
    "ShareRecord",
    "ShareState",
    "crc64_combine",
    "crc64_of_blocks",
    "crc64_shift",
]
