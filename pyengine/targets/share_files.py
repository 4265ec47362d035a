"""The share target's file work, run in worker threads: durable writes, the staged blocks a
part file still holds, and a container directory listed as blobs."""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyengine import _core

#: our temporary files (never listed as blobs): name hash (16 hex) and upload id (32 hex)
TEMP_RE = re.compile(r"\.pyengine-[0-9a-f]{16}-[0-9a-f]{32}\.(?:part|blocks)")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def verified_blocks(part: Path, sidecar: Path) -> dict[int, tuple[int, int, int]]:
    """index -> (offset, length, crc64) of the sidecar's blocks whose bytes check out; a torn
    last line, or a line whose data never reached the disk, does not count."""
    entries: dict[int, tuple[int, int, int]] = {}
    try:
        with open(sidecar, encoding="ascii", errors="replace") as f:
            for line in f:
                try:
                    e = json.loads(line)
                    entries[int(e["i"])] = (int(e["o"]), int(e["n"]), int(e["c"]))
                except (ValueError, KeyError, TypeError):
                    continue
        fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        out = {}
        for index, (offset, length, crc) in entries.items():
            data = os.pread(fd, length, offset)
            if len(data) == length and _core.crc64(data) == crc:
                out[index] = (offset, length, crc)
        return out
    finally:
        os.close(fd)


def walk(container_dir: Path, prefix: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every file under the container whose name starts with
    ``prefix``, in name order, our temporary files left out."""
    top = container_dir.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else container_dir
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, container_dir)
        for filename in filenames:
            if TEMP_RE.fullmatch(filename):
                continue
            name = filename if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{filename}"
            if not name.startswith(prefix):
                continue
            try:
                st = os.stat(os.path.join(dirpath, filename), follow_symlinks=False)
            except OSError:
                continue
            out.append((name, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


#: what a share ETag starts with; the rest is the whole-file CRC64, 16 hex digits
ETAG_PREFIX = "crc64:"


def crc64_hex_from_etag(etag: str | None) -> str | None:
    """The whole-file CRC64 (hex) a share ETag names; None for any other ETag."""
    if etag and etag.startswith(ETAG_PREFIX):
        return etag[len(ETAG_PREFIX) :]
    return None


def etag_of(crc64: int) -> str:
    return f"{ETAG_PREFIX}{crc64:016x}"


@dataclass
class ShareStats:
    """A share has no requests to retry or throttle: the counters the report reads stay 0."""

    concurrency_min: int
    concurrency_max: int
    retries: int = 0
    throttled_s: float = 0.0
    stalls: int = 0


@dataclass
class Upload:
    """One file version being staged: its part file, and the blocks known to be in it."""

    part: Path
    sidecar: Path
    fd: int
    sidecar_fd: int
    #: every block but the last has this length; None until two blocks (or block 0) arrived
    block_bytes: int | None = None
    #: index -> (length_bytes, crc64) of blocks written this run or verified by Get Block List
    staged: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: a block whose offset is unknown yet (the last block arrived first): a copy, written as
    #: soon as the block size is known; at most one per upload
    deferred: dict[int, tuple[bytes, int]] = field(default_factory=dict)

    def close(self) -> None:
        for fd in (self.fd, self.sidecar_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
