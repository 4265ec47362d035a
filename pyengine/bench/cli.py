"""``pyengine bench``: the sub-parsers (``native``, ``upload``, ``delta``), their size and
thread-list arguments, and :func:`run_bench`, which runs one and renders it (rich tables, or JSON
with ``--json``). The runs themselves are :mod:`pyengine.bench.native` and
:mod:`pyengine.bench.upload` (DESIGN.md "benchmark runs").

Both commands exit 0 when a target is missed (a benchmark measures, it does not judge), 2 when
they cannot set up (no nginx, no disk space, bad destination) and 1 when a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

from pyengine.bench.files import GB, GiB, MiB, bench_file
from pyengine.errors import ConfigError, PyEngineError

if TYPE_CHECKING:
    from pyengine.bench.native import NativeResult
    from pyengine.bench.upload import UploadResult

# The runs are imported when one is asked for: every `pyengine` command builds this parser,
# and the peers (bench/peers.py: the azure-storage-blob SDK) cost a copy ~18 MiB of RSS.


def parse_size(text: str) -> int:
    """Bytes from ``2147483648``, ``64M``/``64MiB``, ``2G``/``2GiB`` (binary multiples)."""
    units = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:].isalpha() else ""
    try:
        number = float(value[: len(value) - len(unit)])
        multiple = units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 64M)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"size must not be negative: {text!r}")
    return int(number * multiple)


def parse_thread_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of thread counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1: {text!r}")
    return counts


def add_bench_parser(subparsers: Any) -> None:
    """Add ``bench native`` and ``bench upload`` to the CLI's sub-command parsers."""
    bench = subparsers.add_parser(
        "bench",
        help="measure the native core and end-to-end upload throughput",
        description="Line-rate validation runs (GB/s = 1e9 bytes/s). Exit 0 even when a target"
        " is missed; 2 when the bench cannot be set up.",
    )
    kinds = bench.add_subparsers(dest="bench_command", metavar="{native,upload,download,delta}")
    kinds.required = True

    native = kinds.add_parser(
        "native",
        help="per-stage and combined throughput of the native core",
        description="Each stage alone on one thread, then read+xxh3+crc64+blake3+AES-GCM for"
        " each thread count, against the ideal threads / Σ stage seconds per byte.",
    )
    native.add_argument(
        "--bytes",
        type=parse_size,
        default=2 * GiB,
        dest="size_bytes",
        help="size of the generated page-cached file (default 2GiB)",
    )
    native.add_argument(
        "--threads",
        type=parse_thread_list,
        default=None,
        help="comma-separated thread counts (default 1..cores)",
    )
    native.add_argument("--file", default=None, help="measure this file instead of a random one")
    native.add_argument("--workdir", default=None, help="where to write the file (default: TMPDIR)")
    native.add_argument("--json", action="store_true", help="one JSON object per thread count")

    upload = kinds.add_parser(
        "upload",
        help="end-to-end copy throughput against a discard sink, next to the azure SDK",
        description="Large file, small files and a DICOM-like tree with pyengine.copy, the first"
        " two also with the azure-storage-blob SDK; default destination: an nginx discard sink.",
    )
    upload.add_argument("--dest", default=None, help="container URL (default: a local nginx sink)")
    upload.add_argument(
        "--connection-string",
        default=os.environ.get("AZURE_STORAGE_CONNECTION_STRING"),
        help="credentials for --dest (default: $AZURE_STORAGE_CONNECTION_STRING)",
    )
    upload.add_argument(
        "--bytes",
        type=parse_size,
        default=2 * GiB,
        dest="size_bytes",
        help="size of the large file (default 2GiB)",
    )
    upload.add_argument(
        "--small-files", type=int, default=2000, help="count of 256 KiB files (default 2000)"
    )
    upload.add_argument(
        "--dicom-bytes",
        type=parse_size,
        default=1 * GiB,
        help="total size of the DICOM-like tree (default 1GiB; 0 skips it)",
    )
    upload.add_argument(
        "--encrypt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="client-side encryption v2 on our runs (default on)",
    )
    upload.add_argument("--threads", type=int, default=None, help="native threads (default: cores)")
    upload.add_argument(
        "--memory-cap",
        type=parse_size,
        default=512 * MiB,
        dest="memory_cap_bytes",
        help="native pool cap (default 512MiB)",
    )
    upload.add_argument(
        "--max-concurrency", type=int, default=64, help="HTTP requests in flight (default 64)"
    )
    upload.add_argument("--no-sdk", action="store_true", help="skip the SDK peer runs")
    upload.add_argument(
        "--workdir", default=None, help="where to write the files (default: TMPDIR)"
    )
    upload.add_argument("--json", action="store_true", help="print one JSON object")
    _add_download_parser(kinds)
    _add_delta_parser(kinds)


def _add_download_parser(kinds: Any) -> None:
    """``bench download``: restore from a local nginx file server, next to the SDK."""
    d = kinds.add_parser(
        "download",
        help="restore throughput (decrypt + verify) from a local nginx, next to the azure SDK",
    )
    d.add_argument("--bytes", type=parse_size, default=2 * GiB, dest="size_bytes")
    d.add_argument("--small-files", type=int, default=2000, help="count of 256 KiB files")
    d.add_argument("--encrypt", action=argparse.BooleanOptionalAction, default=True)
    d.add_argument("--threads", type=int, default=None, help="writer threads (default: cores)")
    d.add_argument("--memory-cap", type=parse_size, default=512 * MiB, dest="memory_cap_bytes")
    d.add_argument("--max-concurrency", type=int, default=64)
    d.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="nginx worker processes of the file server (default 1: on 2 cores it shares them)",
    )
    d.add_argument("--workdir", default=None, help="served and restored files (default: TMPDIR)")
    d.add_argument("--json", action="store_true", help="print one JSON object")


def _add_delta_parser(kinds: Any) -> None:
    """``bench delta``: the re-check of an unchanged tree (one listing, no HEAD per file)."""
    delta = kinds.add_parser(
        "delta",
        help="re-check of an unchanged tree: one listing instead of a HEAD per file",
        description="A copy re-run over an unchanged tree of tiny files, against an nginx sink"
        " serving its listing (target >= 20,000 files/s on 2 cores) and against Azurite.",
    )
    delta.add_argument(
        "--files", type=int, default=100_000, help="files re-checked against the sink (0 skips)"
    )
    delta.add_argument(
        "--azurite-files",
        type=int,
        default=10_000,
        help="files copied to Azurite, then re-checked (default 10000; 0 skips)",
    )
    delta.add_argument("--workdir", default=None, help="where the trees go (default /dev/shm)")
    delta.add_argument("--profile", action="store_true", help="cProfile the sink run")
    delta.add_argument("--json", action="store_true", help="print one JSON object")


def run_bench(args: argparse.Namespace) -> int:
    """Run the sub-command parsed by :func:`add_bench_parser`; returns the exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        if args.bench_command == "download":
            from pyengine.bench.download import print_download, run_download

            say = (lambda text: None) if args.json else console.print
            results = run_download(args, say)
            if args.json:
                print(json.dumps(results))
            else:
                print_download(results, Console())
        elif args.bench_command == "native":
            from pyengine.bench.native import print_native

            result = _run_native_command(args, console)
            if args.json:
                for obj in result.to_json():
                    print(json.dumps(obj))
            else:
                print_native(result, Console())
        elif args.bench_command == "delta":
            from pyengine.bench.delta import print_delta, run_delta

            if args.files < 0 or args.azurite_files < 0:
                raise ConfigError("--files", "must not be negative")
            delta = asyncio.run(
                run_delta(
                    files=args.files,
                    azurite_files=args.azurite_files,
                    workdir=args.workdir,
                    profile=args.profile,
                    on_progress=lambda text: (
                        None if args.json else console.print(text, markup=False, highlight=False)
                    ),
                )
            )
            if args.json:
                print(json.dumps(delta.to_json()))
            else:
                print_delta(delta, Console())
        else:
            from pyengine.bench.upload import print_upload

            result = asyncio.run(_run_upload_command(args, console))
            if args.json:
                print(json.dumps(result.to_json()))
            else:
                print_upload(result, Console())
    except ConfigError as e:
        console.print(f"error: {e.one_line()}", markup=False, highlight=False)
        return 2
    except OSError as e:  # cannot write the bench files (disk full, permission)
        console.print(f"error: {e.filename or 'bench'}: {e.strerror or e}", markup=False)
        return 2
    except PyEngineError as e:
        console.print(f"error: {e.one_line()}", markup=False, highlight=False)
        return 1
    return 0


def _run_native_command(args: argparse.Namespace, console: Any) -> NativeResult:
    from pyengine.bench.native import run_native

    cores = os.cpu_count() or 1
    thread_counts = args.threads or list(range(1, cores + 1))
    if args.size_bytes < MiB and args.file is None:
        raise ConfigError("--bytes", "must be at least 1MiB")
    with bench_file(args.file, args.size_bytes, args.workdir) as path:
        if not args.json:
            console.print(f"measuring {path.stat().st_size / GB:.2f} GB, threads {thread_counts}")
        return run_native(path, thread_counts=thread_counts)


async def _run_upload_command(args: argparse.Namespace, console: Any) -> UploadResult:
    from pyengine.bench.upload import run_upload

    if args.small_files < 1:
        raise ConfigError("--small-files", "must be at least 1")
    if args.size_bytes < 1:
        raise ConfigError("--bytes", "must be at least 1")
    quiet = args.json

    def progress(text: str) -> None:
        if not quiet:
            console.print(text, markup=False, highlight=False)

    return await run_upload(
        dest=args.dest,
        connection_string=args.connection_string,
        large_bytes=args.size_bytes,
        small_files=args.small_files,
        dicom_bytes=args.dicom_bytes,
        encrypt=args.encrypt,
        threads=args.threads,
        memory_cap_bytes=args.memory_cap_bytes,
        max_concurrency=args.max_concurrency,
        workdir=args.workdir,
        sdk=not args.no_sdk,
        on_progress=progress,
    )
