"""``pyengine bench native`` as a bench: per-stage and combined throughput of the native core.

Small by default so ``pytest benches`` stays short; ``PYENGINE_BENCH_BYTES`` sizes the file
(the full run is ``pyengine bench native``, 2 GiB). ``PYENGINE_BENCH_THREADS`` ("1,2") picks
the thread counts (default 1..cores).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from pyengine import bench

MiB = 1024 * 1024


def _thread_counts() -> list[int]:
    text = os.environ.get("PYENGINE_BENCH_THREADS")
    if text:
        return bench.parse_thread_list(text)
    return list(range(1, (os.cpu_count() or 1) + 1))


def test_native_pipeline_reaches_most_of_its_stage_limit(benchmark: Any, tmp_path: Path) -> None:
    size_bytes = int(os.environ.get("PYENGINE_BENCH_BYTES") or 256 * MiB)
    path = tmp_path / "native.bin"
    bench.write_random_file(path, size_bytes)
    # One round: run_native repeats each figure itself (best of 3); the benchmark fixture only
    # makes this run part of `pytest benches --benchmark-only`.
    result = benchmark.pedantic(
        bench.run_native, args=(path,), kwargs={"thread_counts": _thread_counts()}, rounds=1
    )
    benchmark.extra_info["runs"] = [dataclasses.asdict(run) for run in result.runs]
    benchmark.extra_info["stage_gbps"] = result.stage_gbps
    bench.print_native(result, Console(width=120))
    for run in result.runs:
        assert run.combined_gbps > 0
        # the whole pipeline cannot beat its own stages run back to back by more than noise
        assert run.ratio < 1.5
