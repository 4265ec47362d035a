"""Scale-out figures (issue 13): one tree copied into the nginx discard sink in one process,
with ``--workers 1`` and with ``--workers 2``, interleaved in one run so that each mode meets
the same machine.

``python -m pyengine.bench.scaleout [--small N] [--large N] [--repeats N] [--json]``

Each copy is a fresh job (its own journal, ``check="none"``) so every byte is sent each time;
the sink's access log proves the bytes were read. Times per copy: the job's own ``elapsed_s``
(scan to summary: what the overhead figure compares), the wall time of the whole call, and
their difference, the embedded LocalCluster's start and close (``cluster_s``: paid once per
call, whatever the tree); and the CPU seconds of this process (all of the work in process; the
driver's share with workers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyengine
from pyengine.bench.files import write_random_file, write_small_files
from pyengine.bench.sink import DiscardSink
from pyengine.options import CopyOptions, MiB

MODES: dict[str, int | None] = {"in-process": None, "--workers 1": 1, "--workers 2": 2}


def make_tree(root: Path, small: int, large: int) -> int:
    """``small`` files of 256 KiB and ``large`` files of 64 MiB; their total bytes."""
    write_small_files(root / "small", small)
    (root / "large").mkdir(parents=True, exist_ok=True)
    for i in range(large):
        write_random_file(root / "large" / f"{i}.bin", 64 * MiB)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def one_copy(
    source: Path, sink: DiscardSink, tmp: Path, job: str, workers: int | None, threads: int
) -> dict[str, Any]:
    opts = CopyOptions(
        threads=threads,
        memory_cap_bytes=256 * MiB,
        check="none",
        journal_path=str(tmp / f"journal-{job}.sqlite"),
        connection_string=sink.connection_string,
        create_container=True,
        workers=workers,
    )
    sink.reset_counts()
    start = time.monotonic()
    cpu_start = _cpu_s()
    report = await pyengine.copy(source, f"{sink.url}/{job}", opts)
    wall_s = time.monotonic() - start
    cpu_s = _cpu_s() - cpu_start
    read = await sink.acounted()
    if not report.ok or read.body_bytes < report.bytes_copied:
        raise RuntimeError(f"{job}: not every byte reached the sink ({report.failures[:3]})")
    return {
        "elapsed_s": report.elapsed_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "bytes": report.bytes_copied,
    }


def _cpu_s() -> float:
    """CPU seconds of this process (the driver: with a LocalCluster, its scheduler too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(small: int, large: int, repeats: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pyengine-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        total_bytes = make_tree(tmp / "src", small, large)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        async with DiscardSink() as sink:
            await one_copy(tmp / "src", sink, tmp, "warm", None, threads)  # page cache, sink
            for r in range(repeats):
                for mode, workers in MODES.items():
                    job = f"r{r}-{mode.strip('-').replace(' ', '')}"
                    runs[mode].append(await one_copy(tmp / "src", sink, tmp, job, workers, threads))
    table = {}
    for mode, rs in runs.items():
        elapsed = statistics.median(x["elapsed_s"] for x in rs)
        wall = statistics.median(x["wall_s"] for x in rs)
        table[mode] = {
            "elapsed_s": round(elapsed, 3),
            "wall_s": round(wall, 3),
            "cluster_s": round(statistics.median(x["wall_s"] - x["elapsed_s"] for x in rs), 3),
            "gbps": round(total_bytes / elapsed / 1e9, 3),
            "files_per_s": round((small + large) / elapsed, 1),
            "driver_cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2),
        }
    base = table["in-process"]["elapsed_s"]
    return {
        "files": small + large,
        "bytes": total_bytes,
        "threads_per_engine": threads,
        "repeats": repeats,
        "modes": table,
        "workers1_overhead_pct": round((table["--workers 1"]["elapsed_s"] / base - 1) * 100, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyengine.bench.scaleout")
    p.add_argument("--small", type=int, default=800, help="256 KiB files (default: 800)")
    p.add_argument("--large", type=int, default=4, help="64 MiB files (default: 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="reader threads per engine")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.small, args.large, args.repeats, args.threads))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['files']} files, {result['bytes'] / 1e6:.0f} MB, median of {args.repeats}")
    print(
        f"{'mode':<14}{'job s':>8}{'cluster s':>10}{'wall s':>8}{'GB/s':>8}{'files/s':>9}"
        f"{'cpu s':>8}"
    )
    for mode, row in result["modes"].items():
        print(
            f"{mode:<14}{row['elapsed_s']:>8.2f}{row['cluster_s']:>10.2f}{row['wall_s']:>8.2f}"
            f"{row['gbps']:>8.3f}{row['files_per_s']:>9.0f}{row['driver_cpu_s']:>8.2f}"
        )
    print(
        f"--workers 1 overhead vs in-process (job time): {result['workers1_overhead_pct']:+.1f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
