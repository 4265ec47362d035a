"""The bench's source files: random large and small files made page-resident before a timed run
(a benchmark must measure neither disk write-back nor disk reads), the free-space check, and the
units every bench figure uses.

GB/s is decimal gigaBYTES per second everywhere (1.25 GB/s = a 10 Gbit/s line).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pyengine.errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB
GB = 1_000_000_000

#: os.urandom writes in pieces this large: bounded memory whatever the file size
_PIECE_BYTES = 64 * MiB
SMALL_FILE_BYTES = 256 * 1024


def write_random_file(path: Path, size_bytes: int) -> None:
    """A file of random bytes, flushed and read back so its pages are clean and resident:
    a benchmark must measure neither disk write-back nor disk reads."""
    with open(path, "wb") as f:
        remaining_bytes = size_bytes
        while remaining_bytes:
            piece_bytes = min(_PIECE_BYTES, remaining_bytes)
            f.write(os.urandom(piece_bytes))
            remaining_bytes -= piece_bytes
    cache_file(path)


def cache_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        while f.read(_PIECE_BYTES):
            pass


def write_small_files(root: Path, count: int, size_bytes: int = SMALL_FILE_BYTES) -> list[Path]:
    """``count`` random files, 100 per directory like a DICOM series (not one huge directory)."""
    paths = []
    for index in range(count):
        directory = root / f"series-{index // 100:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{index:08d}.dcm"
        path.write_bytes(os.urandom(size_bytes))
        paths.append(path)
    os.sync()  # write-back now, not during the timed runs
    return paths


def check_free_space(directory: Path, need_bytes: int) -> None:
    free_bytes = shutil.disk_usage(directory).free
    # keep 1 GiB spare: filling the disk would hurt every other job on a shared machine
    if free_bytes < need_bytes + GiB:
        raise ConfigError(
            str(directory),
            f"needs {need_bytes / GB:.1f} GB free for the bench files, has {free_bytes / GB:.1f}"
            " GB (use --workdir or smaller --bytes)",
        )


@contextlib.contextmanager
def bench_file(path: str | None, size_bytes: int, workdir: str | None) -> Iterator[Path]:
    """The given file (read once into the page cache), or a fresh random one removed after."""
    if path is not None:
        given = Path(path)
        if not given.is_file():
            raise ConfigError(path, "no such regular file")
        cache_file(given)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="pyengine-bench-", dir=workdir) as tmp:
        check_free_space(Path(tmp), size_bytes)
        created = Path(tmp) / "native.bin"
        write_random_file(created, size_bytes)
        yield created
