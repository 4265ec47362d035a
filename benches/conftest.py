"""Fixtures shared by the benches: a running discard sink and page-cached source files.

Sizes come from the environment so CI can run the same benches small:

- ``PYENGINE_BENCH_BYTES``: size of the large file (default 2 GiB);
- ``PYENGINE_BENCH_SMALL_FILES`` / ``PYENGINE_BENCH_SMALL_BYTES``: count and size of the small
  files (default 2,000 × 256 KiB, the size of a typical DICOM instance).

Throughput is measured against :class:`pyengine.bench.sink.DiscardSink` (nginx), never Azurite,
which caps near 60 MB/s here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyengine.bench.files import write_random_file, write_small_files
from pyengine.bench.sink import DiscardSink
from pyengine.errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


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
    write_random_file(path, size_bytes)
    return path


@pytest.fixture(scope="session")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``PYENGINE_BENCH_SMALL_FILES`` random files of ``PYENGINE_BENCH_SMALL_BYTES`` each."""
    count = _env_int("PYENGINE_BENCH_SMALL_FILES", 2000)
    size_bytes = _env_int("PYENGINE_BENCH_SMALL_BYTES", 256 * 1024)
    return write_small_files(tmp_path_factory.mktemp("bench-small"), count, size_bytes)
