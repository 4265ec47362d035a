"""Scale-out figures (issue 13): one tree copied into the nginx discard sink in process and with
``--workers N`` for each N asked, interleaved in one run so that each mode meets the same machine.

``python -m pyengine.bench.scaleout [--small N] [--large N] [--repeats N] [--workers-list 0,1,2]
[--threads N] [--workdir DIR] [--sink-workers N] [--encrypt] [--json] [--json-out FILE]``

``--workers-list``: the modes, 0 being in-process (default ``0,1,2``); ``--threads``: reader
threads per engine (each worker runs one engine); ``--workdir``: where the tree and the journals
go (``/dev/shm`` on a big host keeps the disk out of the figures); ``--sink-workers``: the
sink's nginx worker processes (default 1; a 16-core host scaling 16 engines needs several);
``--encrypt``: client-side encryption on every copy (a random key-encryption key; the files are
hashed either way).
``PYENGINE_BENCH_SINK_CPUS`` pins the sink (see :mod:`pyengine.bench.sink`).

Each copy is a fresh job (its own journal, ``check="none"``) so every byte is sent each time;
the sink's access log proves the bytes were read. Times per copy: the job's own ``elapsed_s``
(scan to summary: what the overhead and speed-up figures compare), the wall time of the whole
call, and their difference, the embedded LocalCluster's start and close (``cluster_s``: paid
once per call, whatever the tree); the CPU seconds of this process (all of the work in process;
the driver's share with workers), of the worker processes while the job's engines were open
(``CopyReport.workers_cpu_s``: together with the driver's, what scale-out costs against one
process) and of the sink's nginx (is the sink the limit?).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from pyengine.crypto import LocalKeyWrapper
from pyengine.options import CopyOptions, MiB

DEFAULT_WORKERS_LIST = (0, 1, 2)


def parse_workers_list(text: str) -> list[int]:
    """``"0,1,2,4"`` -> ``[0, 1, 2, 4]`` (0: in process); distinct counts >= 0, order kept."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if any(n < 0 for n in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"counts must be distinct and >= 0: {text!r}")
    return counts


def mode_name(workers: int) -> str:
    """The table's name of a mode: ``in-process`` for 0, else the CLI flag it stands for."""
    return "in-process" if workers == 0 else f"--workers {workers}"


def make_tree(root: Path, small: int, large: int) -> int:
    """``small`` files of 256 KiB and ``large`` files of 64 MiB; their total bytes."""
    write_small_files(root / "small", small)
    (root / "large").mkdir(parents=True, exist_ok=True)
    for i in range(large):
        write_random_file(root / "large" / f"{i}.bin", 64 * MiB)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def one_copy(
    source: Path,
    sink: DiscardSink,
    tmp: Path,
    job: str,
    workers: int | None,
    threads: int,
    kek: LocalKeyWrapper | None = None,
) -> dict[str, Any]:
    opts = CopyOptions(
        threads=threads,
        memory_cap_bytes=256 * MiB,
        check="none",
        journal_path=str(tmp / f"journal-{job}.sqlite"),
        connection_string=sink.connection_string,
        create_container=True,
        workers=workers,
        encrypt=kek is not None,
        kek=kek,
    )
    sink.reset_counts()
    start = time.monotonic()
    cpu_start = _cpu_s()
    sink_cpu_start = sink.cpu_seconds()
    report = await pyengine.copy(source, f"{sink.url}/{job}", opts)
    wall_s = time.monotonic() - start
    cpu_s = _cpu_s() - cpu_start
    sink_cpu_s = sink.cpu_seconds() - sink_cpu_start
    read = await sink.acounted()
    if not report.ok or read.body_bytes < report.bytes_copied:
        raise RuntimeError(f"{job}: not every byte reached the sink ({report.failures[:3]})")
    return {
        "elapsed_s": report.elapsed_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "sink_cpu_s": sink_cpu_s,
        "workers_cpu_s": report.workers_cpu_s,
        "bytes": report.bytes_copied,
    }


def _cpu_s() -> float:
    """CPU seconds of this process (the driver: with a LocalCluster, its scheduler too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(
    small: int,
    large: int,
    repeats: int,
    threads: int,
    *,
    workers_list: list[int] | tuple[int, ...] = DEFAULT_WORKERS_LIST,
    workdir: str | None = None,
    sink_workers: int = 1,
    encrypt: bool = False,
) -> dict[str, Any]:
    modes = {mode_name(n): (n or None) for n in workers_list}
    kek = LocalKeyWrapper(os.urandom(32)) if encrypt else None  # the blobs go to the sink
    with tempfile.TemporaryDirectory(prefix="pyengine-scaleout-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        total_bytes = make_tree(tmp / "src", small, large)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        async with DiscardSink(worker_processes=sink_workers) as sink:
            await one_copy(tmp / "src", sink, tmp, "warm", None, threads, kek)  # page cache, sink
            for r in range(repeats):
                for mode, workers in modes.items():
                    job = f"r{r}-{mode.strip('-').replace(' ', '')}"
                    row = await one_copy(tmp / "src", sink, tmp, job, workers, threads, kek)
                    runs[mode].append(row)
                    # as it goes, on stderr: a run cut short by a timeout still shows its copies
                    print(
                        f"{job}: job {row['elapsed_s']:.2f} s, wall {row['wall_s']:.2f} s,"
                        f" cpu {row['cpu_s']:.2f} s, workers cpu {row['workers_cpu_s']:.2f} s,"
                        f" sink cpu {row['sink_cpu_s']:.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    table = {}
    for mode, rs in runs.items():
        elapsed = statistics.median(x["elapsed_s"] for x in rs)
        wall = statistics.median(x["wall_s"] for x in rs)
        table[mode] = {
            "workers": modes[mode] or 0,
            "elapsed_s": round(elapsed, 3),
            "wall_s": round(wall, 3),
            "cluster_s": round(statistics.median(x["wall_s"] - x["elapsed_s"] for x in rs), 3),
            "gbps": round(total_bytes / elapsed / 1e9, 3),
            "files_per_s": round((small + large) / elapsed, 1),
            "driver_cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2),
            "workers_cpu_s": round(statistics.median(x["workers_cpu_s"] for x in rs), 2),
            "sink_cpu_s": round(statistics.median(x["sink_cpu_s"] for x in rs), 2),
        }
    # speed-up against one worker (the scale-out baseline); without one, against the first mode
    base_mode = mode_name(1) if mode_name(1) in table else next(iter(table))
    for row in table.values():
        row["speedup"] = round(table[base_mode]["elapsed_s"] / row["elapsed_s"], 2)
    overhead = None
    if "in-process" in table and mode_name(1) in table:
        overhead = round(
            (table[mode_name(1)]["elapsed_s"] / table["in-process"]["elapsed_s"] - 1) * 100, 1
        )
    return {
        "files": small + large,
        "bytes": total_bytes,
        "threads_per_engine": threads,
        "encrypt": encrypt,
        "sink_workers": sink_workers,
        "repeats": repeats,
        "speedup_base": base_mode,
        "modes": table,
        "workers1_overhead_pct": overhead,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyengine.bench.scaleout")
    p.add_argument("--small", type=int, default=800, help="256 KiB files (default: 800)")
    p.add_argument("--large", type=int, default=4, help="64 MiB files (default: 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="reader threads per engine")
    p.add_argument(
        "--workers-list",
        type=parse_workers_list,
        default=list(DEFAULT_WORKERS_LIST),
        help="modes to compare, 0 = in process (default: 0,1,2)",
    )
    p.add_argument("--workdir", default=None, help="where the tree goes (default: TMPDIR)")
    p.add_argument("--sink-workers", type=int, default=1, help="nginx worker processes (1)")
    p.add_argument("--encrypt", action="store_true", help="encrypt (a random KEK)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--json-out", default=None, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    result = asyncio.run(
        run(
            args.small,
            args.large,
            args.repeats,
            args.threads,
            workers_list=args.workers_list,
            workdir=args.workdir,
            sink_workers=args.sink_workers,
            encrypt=args.encrypt,
        )
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['files']} files, {result['bytes'] / 1e6:.0f} MB, median of {args.repeats};"
        f" {args.threads} threads per engine, sink {args.sink_workers} nginx workers,"
        f" {'encrypted' if args.encrypt else 'not encrypted'} (hashed either way)"
    )
    print(
        f"{'mode':<14}{'job s':>8}{'cluster s':>10}{'wall s':>8}{'GB/s':>8}{'files/s':>9}"
        f"{'speed-up':>9}{'cpu s':>8}{'workers cpu s':>14}{'sink cpu s':>11}"
    )
    for mode, row in result["modes"].items():
        print(
            f"{mode:<14}{row['elapsed_s']:>8.2f}{row['cluster_s']:>10.2f}{row['wall_s']:>8.2f}"
            f"{row['gbps']:>8.3f}{row['files_per_s']:>9.0f}{row['speedup']:>8.2f}x"
            f"{row['driver_cpu_s']:>8.2f}{row['workers_cpu_s']:>14.2f}{row['sink_cpu_s']:>11.2f}"
        )
    print(f"speed-up: job time of {result['speedup_base']} / job time of the mode")
    if result["workers1_overhead_pct"] is not None:
        print(
            "--workers 1 overhead vs in-process (job time):"
            f" {result['workers1_overhead_pct']:+.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
