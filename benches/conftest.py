"""Fixtures shared by the benches: a running discard sink and page-cached source files.

Sizes come from the environment so CI can run the same benches small:

- ``PYENGINE_BENCH_BYTES``: size of the large file (default 2 GiB);
- ``PYENGINE_BENCH_SMALL_FILES`` / ``PYENGINE_BENCH_SMALL_BYTES``: count and size of the small
  files (default 2,000 × 256 KiB, the size of a typical DICOM instance).

Throughput is measured against :class:`pyengine.sink.DiscardSink` (nginx), never Azurite,
which caps near 60 MB/s here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyengine.errors import ConfigError
from pyengine.sink import DiscardSink

MiB = 1024 * 1024
GiB = 1024 * MiB
#: os.urandom writes in 64 MiB pieces: bounded memory whatever the file size
_PIECE_BYTES = 64 * MiB


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _cache(path: Path) -> None:
    """Make the file's pages clean and resident, so the bench measures no disk write-back."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        while f.read(_PIECE_BYTES):
            pass


@pytest.fixture(scope="session")
def sink() -> Iterator[DiscardSink]:
    """A running nginx discard sink for the whole session (counts: ``sink.counted()``)."""
    try:
        running = DiscardSink().start()
    except ConfigError as error:
        # a bench without its sink measures nothing: fail loudly, in one line
        pytest.fail(error.one_line(), pytrace=False)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random file of ``PYENGINE_BENCH_BYTES`` (default 2 GiB), in the page cache."""
    size_bytes = _env_int("PYENGINE_BENCH_BYTES", 2 * GiB)
    path = tmp_path_factory.mktemp("bench-large") / "large.bin"
    with open(path, "wb") as f:
        remaining_bytes = size_bytes
        while remaining_bytes:
            piece_bytes = min(_PIECE_BYTES, remaining_bytes)
            f.write(os.urandom(piece_bytes))
            remaining_bytes -= piece_bytes
    _cache(path)
    return path


@pytest.fixture(scope="session")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``PYENGINE_BENCH_SMALL_FILES`` random files of ``PYENGINE_BENCH_SMALL_BYTES`` each."""
    count = _env_int("PYENGINE_BENCH_SMALL_FILES", 2000)
    size_bytes = _env_int("PYENGINE_BENCH_SMALL_BYTES", 256 * 1024)
    root = tmp_path_factory.mktemp("bench-small")
    paths = []
    # 100 files per directory, like a study/series tree, not one huge directory
    for index in range(count):
        directory = root / f"series-{index // 100:05d}"
        directory.mkdir(exist_ok=True)
        path = directory / f"{index:08d}.dcm"
        path.write_bytes(os.urandom(size_bytes))
        paths.append(path)
    os.sync()  # write-back now, not during the timed runs
    return paths
