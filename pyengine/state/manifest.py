"""Audit manifest: one JSON line per file of a job, written as the job goes.

Each line: ``path`` (relative to the source root), ``size_bytes``, ``mtime_ns``, ``mtime``
(ISO-8601 UTC), ``blake3`` (hex, of the plaintext), ``blob_url`` (never with credentials),
``etag``, ``status`` (copied | skipped | failed | deleted_at_source | deleted | rewrapped),
``error``, ``job_id``, ``encrypted``, ``crc64`` (hex, the whole-file Azure CRC64 of what was
written, where the target knows it: a Data Box share names its files by it, their ETag
``crc64:<hex>``; else null).

A resumed job appends to its manifest, so a path may appear more than once (failed, then
copied): the last line for a path is its outcome. A line torn by a kill is cut off when the
manifest is reopened for appending, so the file always parses.

Default location, beside the journal: ``<journal dir>/manifests/<job_id>.jsonl``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import aiofiles

from pyengine.state.records import FileRecord, contains_secret, default_journal_path, one_line
from pyengine.targets.auth import redact as auth_redact
from pyengine.targets.local_share import crc64_hex_from_etag

ManifestStatus = Literal[
    "copied",
    "skipped",
    "failed",
    "deleted_at_source",
    "deleted",
    "rewrapped",
    "restored",
    "unverified",
    "pending",
]
#: restore adds: restored (digest checked), unverified (no pyengine digest), pending (archived)
STATUSES: tuple[str, ...] = get_args(ManifestStatus)
#: journal file state -> manifest status (files still pending have no manifest line yet)
STATUS_OF_STATE = {"committed": "copied", "skipped": "skipped", "failed": "failed"}

#: lines buffered before one write to the OS (a write per line costs a syscall per file)
DEFAULT_FLUSH_LINES = 256


# slots, not frozen: a frozen dataclass sets each field through object.__setattr__, 2 µs of a
# line every file pays (the online delta's budget is ~50 µs a file)
@dataclass(slots=True)
class ManifestEntry:
    path: str
    size_bytes: int
    mtime_ns: int
    status: ManifestStatus
    job_id: str
    blob_url: str | None = None
    blake3: str | None = None
    etag: str | None = None
    error: str | None = None
    encrypted: bool = False
    #: under a migration policy: the file's tenant and DICOM study instance UID (None = no
    #: policy / not DICOM); written only by policy jobs
    tenant: str | None = None
    study_uid: str | None = None

    @classmethod
    def from_record(
        cls, record: FileRecord, *, blob_url: str | None, status: ManifestStatus | None = None
    ) -> ManifestEntry:
        """The entry for a journaled file; status defaults to the one its state implies."""
        if status is None:
            if record.state not in STATUS_OF_STATE:
                raise ValueError(f"{record.rel_path}: state {record.state} has no manifest status")
            status = STATUS_OF_STATE[record.state]  # type: ignore[assignment]
        return cls(
            path=record.rel_path,
            size_bytes=record.size_bytes,
            mtime_ns=record.mtime_ns,
            status=status,  # type: ignore[arg-type]
            job_id=record.job_id,
            blob_url=blob_url,
            blake3=record.blake3_hex,
            etag=record.etag,
            error=record.error,
            encrypted=record.encrypted,
        )


def default_manifest_path(job_id: str, journal_path: str | os.PathLike[str] | None = None) -> Path:
    """``<dir of the journal>/manifests/<job_id>.jsonl`` (the default journal when None)."""
    journal = Path(journal_path) if journal_path is not None else default_journal_path()
    return journal.parent / "manifests" / f"{job_id}.jsonl"


def strip_query(url: str) -> str:
    """url without its query string and fragment (where SAS tokens live)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _may_hold_secret(url: str) -> bool:
    """False when auth.redact would return url unchanged, checked with plain substring tests
    (its own fast-path search, a case-insensitive regex, cost 4 of the 15 µs a manifest line
    took): each of its patterns needs "=" or one of the words below. Non-ASCII text goes to
    redact: its case-insensitive match folds a few non-ASCII letters (K, ſ) that lower() keeps."""
    if "=" in url or not url.isascii():
        return True
    lowered = url.lower()
    return "authorization" in lowered or "bearer" in lowered or "sharedkey" in lowered


@functools.lru_cache(maxsize=4096)
def _minute_prefix(minute: int) -> str:
    # isoformat, not strftime: its year always has four digits ("0999"), as iso_utc's always had
    return (_EPOCH + timedelta(minutes=minute)).isoformat()[:17]


def iso_utc(mtime_ns: int) -> str:
    """ISO-8601 UTC, e.g. 2026-11-24T08:07:00.123456Z (datetime.isoformat's text: no fraction
    when the microseconds are 0). Up to the minute it comes from a small cache (a tree's files
    share few minutes): building a datetime per line cost 3.5 µs."""
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    minute, second = divmod(seconds, 60)
    us = ns // 1000
    if us:
        return f"{_minute_prefix(minute)}{second:02d}.{us:06d}Z"
    return f"{_minute_prefix(minute)}{second:02d}Z"


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def format_line(
    entry: ManifestEntry | Mapping[str, Any], redact: Callable[[str], str] | None = None
) -> str:
    """One manifest line (with its newline) for entry; blob_url redacted, error one-lined.

    The text is json.dumps(fields, ensure_ascii=True, separators=(",", ":")) of the fields in
    the order below, built directly: a dict and json.dumps per line cost 5 µs of the online
    delta's per-file budget. ensure_ascii keeps every line 7-bit: a path with odd bytes
    (surrogate-escaped) still encodes."""
    e = entry if isinstance(entry, ManifestEntry) else ManifestEntry(**entry)
    if e.status not in STATUSES:
        raise ValueError(f"{e.path}: unknown manifest status {e.status!r}")
    url = e.blob_url
    if url is not None:
        if redact is None:
            url = strip_query(url)
        elif redact is not auth_redact or _may_hold_secret(url):
            url = redact(url)
            if contains_secret(url):  # a redact function that missed something: drop the query
                url = strip_query(url)
    error = one_line(e.error) if e.error is not None else None
    line = (
        f'{{"path":{encode_basestring_ascii(e.path)},"size_bytes":{int(e.size_bytes)}'
        f',"mtime_ns":{int(e.mtime_ns)},"mtime":"{iso_utc(e.mtime_ns)}"'
        f',"blake3":{_json_str(e.blake3)},"blob_url":{_json_str(url)}'
        f',"etag":{_json_str(e.etag)},"status":"{e.status}","error":{_json_str(error)}'
        f',"job_id":{encode_basestring_ascii(e.job_id)}'
        f',"encrypted":{"true" if e.encrypted else "false"}'
        f',"crc64":{_json_str(crc64_hex_from_etag(e.etag))}'
    )
    if e.tenant is not None:  # a policy job's line: whose file, which study
        line += (
            f',"tenant":{encode_basestring_ascii(e.tenant)},"study_uid":{_json_str(e.study_uid)}'
        )
    return line + "}\n"


def _prepare(path: Path, append: bool) -> None:
    """Create the directory; cut a line torn by a crash off the end of an existing manifest."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not append or not path.exists():
        return
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline: the torn tail was never a complete record.
        pos = end
        while pos > 0:
            step = min(65_536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos - step + nl + 1)
                return
            pos -= step
        f.truncate(0)


def _fsync_dir(path: Path) -> None:
    """Make the manifest's directory entry durable too (a fresh file's name lives there)."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ManifestBuffer:
    """What both writers share: the options and the lines waiting for their next flush."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        redact: Callable[[str], str] | None = None,
        flush_lines: int = DEFAULT_FLUSH_LINES,
        append: bool = True,
    ) -> None:
        self.path = Path(path)
        self.redact = redact
        self.flush_lines = flush_lines
        self.append = append
        self.lines_written = 0
        self._pending: list[str] = []
        self._file: Any = None

    def _add(self, entry: ManifestEntry | Mapping[str, Any]) -> bool:
        """Buffers one line; True when the buffer is due for a flush."""
        self._pending.append(format_line(entry, self.redact))
        return len(self._pending) >= self.flush_lines

    def _take(self) -> str:
        lines, self._pending = self._pending, []
        self.lines_written += len(lines)
        return "".join(lines)


class ManifestWriter(_ManifestBuffer):
    """Async JSONL writer: ``async with ManifestWriter(path) as m: await m.write(entry)``.

    Lines are handed to the OS every flush_lines lines; close fsyncs the file (and its directory).
    """

    async def __aenter__(self) -> ManifestWriter:
        await asyncio.to_thread(_prepare, self.path, self.append)
        self._file = await aiofiles.open(self.path, "a" if self.append else "w", encoding="ascii")
        return self

    async def write(self, entry: ManifestEntry | Mapping[str, Any]) -> None:
        if self._add(entry):
            await self.flush()

    def add_many(self, entries: Iterable[ManifestEntry]) -> bool:
        """Buffers several lines without awaiting (a batch of the online delta's unchanged
        files, recorded even by a job being stopped); True when a flush() is due."""
        due = False
        for entry in entries:
            due = self._add(entry) or due
        return due

    async def flush(self) -> None:
        """Hand the buffered lines to the OS (not fsync'd: close does that)."""
        if self._pending:
            await self._file.write(self._take())
            await self._file.flush()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._file is None:
            return
        try:
            await self.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())
        finally:
            await self._file.close()
            self._file = None
        await asyncio.to_thread(_fsync_dir, self.path)


class SyncManifestWriter(_ManifestBuffer):
    """The same manifest, written synchronously (tests, tools outside an event loop)."""

    def __enter__(self) -> SyncManifestWriter:
        _prepare(self.path, self.append)
        self._file = open(self.path, "a" if self.append else "w", encoding="ascii")
        return self

    def write(self, entry: ManifestEntry | Mapping[str, Any]) -> None:
        if self._add(entry):
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._file.write(self._take())
            self._file.flush()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            self._file = None
        _fsync_dir(self.path)


def read_manifest(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream the lines of a manifest as dicts; ValueError names the line that does not parse."""
    with open(path, encoding="ascii") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a manifest line: {e.msg}") from None
