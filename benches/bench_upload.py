"""``pyengine bench upload`` as a bench: pyengine.copy next to the azure SDK, into nginx.

Small by default so ``pytest benches`` stays short; the full run is ``pyengine bench upload``
(2 GiB, 2,000 files). Sizes: ``PYENGINE_BENCH_BYTES`` (large file), ``PYENGINE_BENCH_SMALL_FILES``,
``PYENGINE_BENCH_DICOM_BYTES``. Targets are printed as PASS/MISS, never asserted: a missed
target is a measurement, not a broken bench; what is asserted is that the sink read every byte.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from pyengine import bench

MiB = 1024 * 1024


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def test_upload_sends_every_byte_and_reports_targets(benchmark: Any, tmp_path: Path) -> None:
    def run() -> bench.UploadResult:
        return asyncio.run(
            bench.run_upload(
                large_bytes=_env_int("PYENGINE_BENCH_BYTES", 256 * MiB),
                small_files=_env_int("PYENGINE_BENCH_SMALL_FILES", 500),
                dicom_bytes=_env_int("PYENGINE_BENCH_DICOM_BYTES", 64 * MiB),
                workdir=str(tmp_path),
            )
        )

    # One round: the figures are the runs inside (the fixture only times the whole, and makes
    # it part of `pytest benches --benchmark-only`).
    result = benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(
        {k: v for k, v in result.to_json().items() if isinstance(v, (int, float, bool))}
    )
    bench.print_upload(result, Console(width=120))
    assert result.sink_bytes_verified
