"""``pyengine bench``: the line-rate validation runs (DESIGN.md "benchmark runs").

Two measurements, each a sub-command of ``pyengine bench``:

- ``native``: what the native core can do on this machine. Each per-byte stage alone on one
  thread, the read stage alone, then the whole pipeline (read, xxh3-128, CRC64, BLAKE3, AES-GCM)
  for 1..N threads, compared with the ideal ``min(threads, cores) / Σ stage seconds per byte``.
- ``upload``: what a copy achieves end to end against a discard sink (nginx, see
  :mod:`pyengine.bench.sink`), side by side with the azure-storage-blob SDK
  (:mod:`pyengine.bench.peers`): one large file, many 256 KiB files, a DICOM-like tree
  (:mod:`pyengine.bench.dicom_tree`). Each of our runs is a fresh process
  (``python -m pyengine.bench.runs --copy-child``), checked against the bytes the sink read; its
  own peak RSS (VmHWM) is held against the memory cap.

GB/s is decimal gigaBYTES per second everywhere (1.25 GB/s = a 10 Gbit/s line). Both commands
exit 0 when a target is missed (a benchmark measures, it does not judge) and 2 when they cannot
set up (no nginx, no disk space, bad destination).

The measuring functions (:func:`run_native`, :func:`run_upload`) return plain dataclasses and
print nothing; :func:`run_bench` renders them (rich tables, or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyengine import _core
from pyengine.bench.dicom_tree import make_tree
from pyengine.errors import ConfigError, IntegrityError, PyEngineError

MiB = 1024 * 1024
GiB = 1024 * MiB
GB = 1_000_000_000

#: per-stage figures are taken over an in-memory buffer this large: far above the L3 cache, so
#: the figure is the streaming rate the pipeline sees, and small enough to allocate anywhere
NATIVE_BUFFER_BYTES = 256 * MiB
NATIVE_CHUNK_BYTES = 8 * MiB
NATIVE_MEMORY_CAP_BYTES = 256 * MiB
#: the machine is shared and noisy: every figure is the best of this many runs
REPEATS = 3
#: os.urandom writes in pieces this large: bounded memory whatever the file size
_PIECE_BYTES = 64 * MiB
#: the per-byte stages of a combined run, in pipeline order (read is measured separately)
NATIVE_STAGES = ("xxh3", "crc64", "blake3", "aes_gcm")

#: targets of issue 5 (10 Gbit/s line rate)
TARGET_LARGE_GBPS = 1.25
TARGET_LARGE_VS_SDK = 2.0
TARGET_SMALL_FILES_PER_S = 3000.0
TARGET_SMALL_VS_SDK = 6.0
#: allowance above the pool's memory cap for the interpreter, libraries and request state
RSS_ALLOWANCE_MIB = 64
SMALL_FILE_BYTES = 256 * 1024
#: ``python -m pyengine.bench.runs COPY_CHILD_ARG``: one of our runs, in its own process
COPY_CHILD_ARG = "--copy-child"


# --------------------------------------------------------------------------------------------
# Source files


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


def _check_free_space(directory: Path, need_bytes: int) -> None:
    free_bytes = shutil.disk_usage(directory).free
    # keep 1 GiB spare: filling the disk would hurt every other job on a shared machine
    if free_bytes < need_bytes + GiB:
        raise ConfigError(
            str(directory),
            f"needs {need_bytes / GB:.1f} GB free for the bench files, has {free_bytes / GB:.1f}"
            " GB (use --workdir or smaller --bytes)",
        )


# --------------------------------------------------------------------------------------------
# Native core


@dataclass(frozen=True)
class NativeRun:
    """One thread count of ``bench native``."""

    threads: int
    combined_gbps: float
    #: the ideal: min(threads, cores) / Σ (seconds per byte of read + every stage on one thread)
    limit_gbps: float
    ratio: float
    seconds: float
    #: CPU seconds of the best run, every thread
    cpu_s: float = 0.0
    #: (GB per CPU second) / (1 / Σ stage CPU seconds per GB): the pipeline's own overhead,
    #: insensitive to other load on the machine (1.0 = no overhead beyond the stages)
    cpu_ratio: float = 0.0


@dataclass(frozen=True)
class NativeResult:
    bytes: int
    chunk_bytes: int
    memory_cap_bytes: int
    cores: int
    #: one thread, GB/s: "read" plus every name of NATIVE_STAGES
    stage_gbps: dict[str, float]
    cpu_features: dict[str, bool]
    runs: list[NativeRun]
    #: per CPU second of one thread, GB/s: the same stages as stage_gbps
    stage_cpu_gbps: dict[str, float] = field(default_factory=dict)
    #: 1-minute load average before and after: above the core count, wall figures are noisy
    load_avg: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> list[dict[str, Any]]:
        """One object per thread count, each carrying the per-stage figures."""
        return [
            {
                **dataclasses.asdict(run),
                "bytes": self.bytes,
                "chunk_bytes": self.chunk_bytes,
                "memory_cap_bytes": self.memory_cap_bytes,
                "cores": self.cores,
                "stage_gbps": self.stage_gbps,
                "stage_cpu_gbps": self.stage_cpu_gbps,
                "load_avg": list(self.load_avg),
                "cpu_features": self.cpu_features,
            }
            for run in self.runs
        ]


def stage_gbps_one_thread(
    buffer_bytes: int = NATIVE_BUFFER_BYTES, repeats: int = REPEATS
) -> tuple[dict[str, float], dict[str, float]]:
    """GB/s of each per-byte stage alone on one thread, best of ``repeats``: per wall second,
    and per CPU second of the calling thread (the stage runs on it, GIL released)."""
    buffer = bytearray(os.urandom(buffer_bytes))
    wall_gbps, cpu_gbps = {}, {}
    for stage in NATIVE_STAGES:
        wall_s = cpu_s = float("inf")
        for _ in range(repeats):
            # stage_seconds times only its loop; its set-up (an output buffer for aes_gcm) costs
            # CPU too, so the CPU of one pass is the difference between two and one passes.
            t0_s = time.thread_time()
            pass_s = _core.stage_seconds(stage, buffer, 1)
            t1_s = time.thread_time()
            _core.stage_seconds(stage, buffer, 2)
            t2_s = time.thread_time()
            pass_cpu_s = (t2_s - t1_s) - (t1_s - t0_s)
            if pass_cpu_s < 0.1 * pass_s:  # a small buffer: the difference is lost in noise
                pass_cpu_s = pass_s
            wall_s = min(wall_s, pass_s)
            cpu_s = min(cpu_s, pass_cpu_s)
        wall_gbps[stage] = buffer_bytes / wall_s / GB
        cpu_gbps[stage] = buffer_bytes / max(cpu_s, 1e-9) / GB
    return wall_gbps, cpu_gbps


def drain_pipeline(
    pipeline: Any, size_bytes: int, *, on_chunk: Callable[[Any], None] | None = None
) -> int:
    """Wait for one submitted file: release each chunk at once, return the plaintext bytes read.

    Raises the file's own error (SourceError) when the core reports it failed."""
    plain_bytes = 0
    while True:
        pipeline.wait(10.0)
        for event in pipeline.poll():
            if isinstance(event, _core.Chunk):
                plain_bytes += event.plain_bytes
                if on_chunk is not None:
                    on_chunk(event)
                event.release()
            elif isinstance(event, _core.FileFailed):
                raise event.error
            else:
                if plain_bytes != size_bytes:
                    raise IntegrityError(
                        event.path, f"pipeline emitted {plain_bytes} of {size_bytes} bytes"
                    )
                return plain_bytes


def pipeline_seconds(
    path: Path,
    size_bytes: int,
    *,
    threads: int,
    stages: int,
    content_key: bytes | None = None,
    chunk_bytes: int = NATIVE_CHUNK_BYTES,
    memory_cap_bytes: int = NATIVE_MEMORY_CAP_BYTES,
) -> float:
    """Wall seconds for a Pipeline(threads) to read (and hash/encrypt) the whole file."""
    return pipeline_times(
        path,
        size_bytes,
        threads=threads,
        stages=stages,
        content_key=content_key,
        chunk_bytes=chunk_bytes,
        memory_cap_bytes=memory_cap_bytes,
    )[0]


def pipeline_times(
    path: Path,
    size_bytes: int,
    *,
    threads: int,
    stages: int,
    content_key: bytes | None = None,
    chunk_bytes: int = NATIVE_CHUNK_BYTES,
    memory_cap_bytes: int = NATIVE_MEMORY_CAP_BYTES,
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for a Pipeline(threads) over the whole file.

    The pipeline is created outside the timed region: thread start-up is not the steady state.
    The CPU figure counts every thread (workers and the draining caller): on a shared machine
    it moves much less than the wall time."""
    with _core.Pipeline(threads, memory_cap_bytes) as pipeline:
        cpu_before_s = time.process_time()
        start_s = time.perf_counter()
        pipeline.submit(
            1,
            str(path),
            size_bytes=size_bytes,
            chunk_bytes=chunk_bytes,
            content_key=content_key,
            stages=stages,
        )
        drain_pipeline(pipeline, size_bytes)
        return time.perf_counter() - start_s, time.process_time() - cpu_before_s


def run_native(
    path: Path,
    *,
    thread_counts: Sequence[int],
    buffer_bytes: int = NATIVE_BUFFER_BYTES,
    repeats: int = REPEATS,
    chunk_bytes: int = NATIVE_CHUNK_BYTES,
    memory_cap_bytes: int = NATIVE_MEMORY_CAP_BYTES,
) -> NativeResult:
    """Measure the stages alone, then the combined pipeline per thread count, over ``path``
    (which should be page-cached)."""
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise ConfigError(str(path), "the bench file is empty")
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    stage_gbps, stage_cpu_gbps = stage_gbps_one_thread(
        min(buffer_bytes, max(size_bytes, MiB)), repeats
    )
    read_times = [
        pipeline_times(
            path,
            size_bytes,
            threads=1,
            stages=_core.STAGE_READ,
            chunk_bytes=chunk_bytes,
            memory_cap_bytes=memory_cap_bytes,
        )
        for _ in range(repeats)
    ]
    stage_gbps = {"read": size_bytes / min(t[0] for t in read_times) / GB, **stage_gbps}
    stage_cpu_gbps = {
        "read": size_bytes / max(min(t[1] for t in read_times), 1e-9) / GB,
        **stage_cpu_gbps,
    }
    seconds_per_gb = sum(1 / gbps for gbps in stage_gbps.values())
    cpu_seconds_per_gb = sum(1 / gbps for gbps in stage_cpu_gbps.values())
    content_key = os.urandom(32)
    runs = []
    for threads in thread_counts:
        seconds, cpu_s = min(
            pipeline_times(
                path,
                size_bytes,
                threads=threads,
                stages=_core.STAGE_ALL,
                content_key=content_key,
                chunk_bytes=chunk_bytes,
                memory_cap_bytes=memory_cap_bytes,
            )
            for _ in range(repeats)
        )
        combined_gbps = size_bytes / seconds / GB
        # More threads than cores cannot add compute: the ideal stops at the core count.
        limit_gbps = min(threads, cores) / seconds_per_gb
        runs.append(
            NativeRun(
                threads=threads,
                combined_gbps=combined_gbps,
                limit_gbps=limit_gbps,
                ratio=combined_gbps / limit_gbps,
                seconds=seconds,
                cpu_s=cpu_s,
                cpu_ratio=size_bytes / max(cpu_s, 1e-9) / GB * cpu_seconds_per_gb,
            )
        )
    return NativeResult(
        bytes=size_bytes,
        chunk_bytes=chunk_bytes,
        memory_cap_bytes=memory_cap_bytes,
        cores=cores,
        stage_gbps=stage_gbps,
        cpu_features=dict(_core.cpu_features()),
        runs=runs,
        stage_cpu_gbps=stage_cpu_gbps,
        load_avg=(load_before, os.getloadavg()[0]),
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
        _check_free_space(Path(tmp), size_bytes)
        created = Path(tmp) / "native.bin"
        write_random_file(created, size_bytes)
        yield created


# --------------------------------------------------------------------------------------------
# Upload


def proc_status_bytes(key: bytes, status_path: str = "/proc/self/status") -> int:
    """A ``kB`` line of /proc/PID/status (``VmRSS``, ``VmHWM``) in bytes; 0 when absent."""
    with open(status_path, "rb") as f:
        for line in f:
            if line.startswith(key + b":"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class OurRun:
    """One pyengine.copy run."""

    name: str
    files: int
    bytes: int
    seconds: float
    gbps: float
    files_per_s: float
    #: body bytes the sink read during the run (None: not our sink, nothing to check)
    sink_body_bytes: int | None
    verified: bool
    #: peak RSS (VmHWM) of the process that ran the copy, imports included
    peak_rss_mib: float
    #: CPU seconds (user + system) the copying process used during the run: every thread
    cpu_s: float = 0.0
    #: CPU seconds nginx used during the run (0 when not our sink)
    sink_cpu_s: float = 0.0
    #: RSS of the copying process when its copy began (interpreter, libraries)
    rss_before_mib: float = 0.0

    @property
    def cpu_bound_gbps(self) -> float:
        """GB/s this run would reach if it had every core to itself, client and sink together.

        The shared machine's wall time is noisy; CPU seconds per byte are much less so."""
        cpu_s = self.cpu_s + self.sink_cpu_s
        return (os.cpu_count() or 1) * self.bytes / cpu_s / GB if cpu_s > 0 else 0.0


@dataclass
class UploadResult:
    dest: str
    encrypt: bool
    threads: int
    memory_cap_bytes: int
    max_concurrency: int
    large_file_gbps: float
    sdk_large_file_gbps: float
    small_files_per_s: float
    sdk_small_files_per_s: float
    dicom_gbps: float
    dicom_files_per_s: float
    peak_rss_mib: float
    #: RSS of the copying process right before its copy began (interpreter and libraries)
    baseline_rss_mib: float
    sink_bytes_verified: bool
    runs: list[OurRun] = field(default_factory=list)
    sdk: dict[str, Any] = field(default_factory=dict)

    @property
    def large_vs_sdk(self) -> float:
        return self.large_file_gbps / self.sdk_large_file_gbps if self.sdk_large_file_gbps else 0.0

    @property
    def small_vs_sdk(self) -> float:
        if not self.sdk_small_files_per_s:
            return 0.0
        return self.small_files_per_s / self.sdk_small_files_per_s

    @property
    def rss_limit_mib(self) -> float:
        return self.memory_cap_bytes / MiB + RSS_ALLOWANCE_MIB

    def targets(self) -> list[tuple[str, str, bool]]:
        """(target, measured, met) for each target of issue 5."""
        return [
            (
                f"large file ≥ {TARGET_LARGE_GBPS} GB/s",
                f"{self.large_file_gbps:.2f} GB/s",
                self.large_file_gbps >= TARGET_LARGE_GBPS,
            ),
            (
                f"large file ≥ {TARGET_LARGE_VS_SDK:g}× SDK",
                f"{self.large_vs_sdk:.2f}×",
                self.large_vs_sdk >= TARGET_LARGE_VS_SDK,
            ),
            (
                f"small files ≥ {TARGET_SMALL_FILES_PER_S:.0f} files/s",
                f"{self.small_files_per_s:.0f} files/s",
                self.small_files_per_s >= TARGET_SMALL_FILES_PER_S,
            ),
            (
                f"small files ≥ {TARGET_SMALL_VS_SDK:g}× SDK",
                f"{self.small_vs_sdk:.2f}×",
                self.small_vs_sdk >= TARGET_SMALL_VS_SDK,
            ),
            (
                f"peak RSS ≤ cap + {RSS_ALLOWANCE_MIB} MiB ({self.rss_limit_mib:.0f} MiB)",
                f"{self.peak_rss_mib:.0f} MiB",
                self.peak_rss_mib <= self.rss_limit_mib,
            ),
            (
                "sink read every payload byte",
                str(self.sink_bytes_verified).lower(),
                self.sink_bytes_verified,
            ),
        ]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["large_vs_sdk"] = self.large_vs_sdk
        out["small_vs_sdk"] = self.small_vs_sdk
        out["rss_limit_mib"] = self.rss_limit_mib
        for run_json, run in zip(out["runs"], self.runs, strict=True):
            run_json["cpu_bound_gbps"] = run.cpu_bound_gbps
        out["targets"] = [
            {"target": name, "measured": measured, "met": met}
            for name, measured, met in self.targets()
        ]
        return out


async def _counted(sink: Any) -> Any:
    return await sink.acounted() if sink is not None else None


async def _our_copy(
    name: str,
    spec: dict[str, Any],
    *,
    files: int,
    payload_bytes: int,
    sink: Any,
) -> OurRun:
    """One timed pyengine.copy in a fresh process, checked against its report and the sink.

    A fresh process, because the bound (peak RSS ≤ cap + 64 MiB) is about the process that
    copies: in the bench's own process the heap the file generators and earlier runs left behind
    (measured: +9 MiB after writing the bench files, +115 MiB retained after a 2 GiB run with a
    512 MiB pool) counted against the next run, and 2 GiB at the 512 MiB cap peaked at 582 MiB.
    """
    before = await _counted(sink)
    sink_cpu_before_s = sink.cpu_seconds() if sink is not None else 0.0
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyengine.bench.runs",
        COPY_CHILD_ARG,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # the spec holds the connection string and the KEK: a pipe, never argv (ps shows argv)
    out, err = await child.communicate(json.dumps(spec).encode())
    sink_cpu_s = sink.cpu_seconds() - sink_cpu_before_s if sink is not None else 0.0
    lines = out.decode().strip().splitlines()
    if child.returncode != 0 or not lines:
        text = err.decode(errors="replace").strip().splitlines()
        raise PyEngineError(name, f"copy process failed: {text[-1] if text else child.returncode}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise PyEngineError(name, result["error"])
    if result["files_failed"] or result["files_copied"] != files:
        reason = result["failure"] or "not every file was copied"
        raise IntegrityError(
            name,
            f"copied {result['files_copied']}/{files} files, {result['files_failed']} failed:"
            f" {reason}",
        )
    sink_body_bytes = None
    verified = False
    if sink is not None:
        delta = (await _counted(sink)) - before
        sink_body_bytes = delta.body_bytes
        verified = delta.body_bytes >= payload_bytes and delta.failed_requests == 0
    seconds = result["seconds"]
    return OurRun(
        name=name,
        files=files,
        bytes=payload_bytes,
        seconds=seconds,
        gbps=payload_bytes / seconds / GB,
        files_per_s=files / seconds,
        sink_body_bytes=sink_body_bytes,
        verified=verified,
        peak_rss_mib=result["peak_rss_bytes"] / MiB,
        cpu_s=result["cpu_s"],
        sink_cpu_s=sink_cpu_s,
        rss_before_mib=result["rss_before_bytes"] / MiB,
    )


def _copy_child() -> int:
    """The copying process of one run: reads its spec (JSON) on stdin, runs pyengine.copy,
    prints one JSON line: seconds, CPU seconds, its own VmHWM (exact, no sampling), the report.
    Imports only what a copy needs: its RSS is what an operator's copy would have."""
    from pyengine.crypto import LocalKeyWrapper
    from pyengine.engine.job import copy
    from pyengine.options import CopyOptions

    spec = json.loads(sys.stdin.read())
    kek_hex = spec.pop("kek_hex")
    source, dest = spec.pop("source"), spec.pop("dest")
    options = CopyOptions(**spec, kek=LocalKeyWrapper(bytes.fromhex(kek_hex)) if kek_hex else None)
    rss_before_bytes = proc_status_bytes(b"VmRSS")
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    start_s = time.perf_counter()
    try:
        report = asyncio.run(copy(source, dest, options))
    except PyEngineError as e:
        print(json.dumps({"error": e.one_line()}))
        return 0
    seconds = time.perf_counter() - start_s
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    result = {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "peak_rss_bytes": proc_status_bytes(b"VmHWM"),
        "rss_before_bytes": rss_before_bytes,
        "files_copied": report.files_copied,
        "files_failed": report.files_failed,
        "failure": report.failures[0][1] if report.failures else None,
    }
    print(json.dumps(result))
    return 0


def _tree_totals(root: Path) -> tuple[list[Path], int]:
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    return paths, sum(p.stat().st_size for p in paths)


async def run_upload(
    *,
    dest: str | None = None,
    connection_string: str | None = None,
    large_bytes: int = 2 * GiB,
    small_files: int = 2000,
    dicom_bytes: int = 1 * GiB,
    encrypt: bool = True,
    threads: int | None = None,
    memory_cap_bytes: int = 512 * MiB,
    max_concurrency: int = 64,
    workdir: str | None = None,
    sdk: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> UploadResult:
    """The whole ``bench upload`` (our copies in child processes); see the module docstring.

    ``dest`` None starts a DiscardSink (and then every run is checked against it); otherwise
    ``connection_string`` must name the destination's credentials. ``sdk`` False skips the
    peer runs (their figures are then 0).
    """
    from pyengine.bench.sink import DiscardSink

    def say(text: str) -> None:
        if on_progress is not None:
            on_progress(text)

    if dest is not None and not connection_string:
        raise ConfigError(
            "--dest", "needs --connection-string (or AZURE_STORAGE_CONNECTION_STRING)"
        )
    threads = threads or os.cpu_count() or 2
    with contextlib.ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="pyengine-bench-", dir=workdir))
        )
        _check_free_space(tmp, large_bytes + small_files * SMALL_FILE_BYTES + dicom_bytes)
        sink = None
        if dest is None:
            sink = stack.enter_context(DiscardSink())
            dest, connection_string = sink.url, sink.connection_string
        assert connection_string is not None

        say(f"writing {large_bytes / GB:.2f} GB, {small_files} small files, DICOM mix")
        large = tmp / "large" / "large.bin"
        large.parent.mkdir()
        write_random_file(large, large_bytes)
        small_root = tmp / "small"
        small_paths = write_small_files(small_root, small_files)
        dicom_root = tmp / "dicom"
        dicom_paths: list[Path] = []
        dicom_payload_bytes = 0
        if dicom_bytes > 0:
            make_tree(str(dicom_root), dicom_bytes, 1)
            dicom_paths, dicom_payload_bytes = _tree_totals(dicom_root)
            for path in dicom_paths:
                cache_file(path)

        # A fresh random key-encryption key: the bench keeps nothing it uploads.
        kek_key = os.urandom(32) if encrypt else None

        def options(job: str, source: Path, dest_url: str) -> dict[str, Any]:
            """A CopyOptions, as the copying process's spec (see _copy_child)."""
            return {
                "source": str(source),
                "dest": dest_url,
                "threads": threads,
                "memory_cap_bytes": memory_cap_bytes,
                "max_concurrency": max_concurrency,
                "encrypt": encrypt,
                "kek_hex": kek_key.hex() if kek_key is not None else None,
                "check": "none",  # a bench re-sends everything: no HEAD per file
                "journal_path": str(tmp / f"journal-{job}.sqlite"),
                "connection_string": connection_string,
                "create_container": True,
            }

        runs: list[OurRun] = []
        # Our runs first, then the SDK's (in this process): the page cache is as warm for ours.
        say("pyengine: large file")
        runs.append(
            await _our_copy(
                "large",
                options("large", large, f"{dest}/ours/large"),
                files=1,
                payload_bytes=large_bytes,
                sink=sink,
            )
        )
        say("pyengine: small files")
        runs.append(
            await _our_copy(
                "small",
                options("small", small_root, f"{dest}/ours/small"),
                files=small_files,
                payload_bytes=small_files * SMALL_FILE_BYTES,
                sink=sink,
            )
        )
        if dicom_paths:
            say("pyengine: DICOM mix")
            runs.append(
                await _our_copy(
                    "dicom",
                    options("dicom", dicom_root, f"{dest}/ours/dicom"),
                    files=len(dicom_paths),
                    payload_bytes=dicom_payload_bytes,
                    sink=sink,
                )
            )

        sdk_large_gbps = sdk_small_per_s = 0.0
        sdk_info: dict[str, Any] = {}
        if sdk:
            from pyengine.bench.peers import sdk_upload_large, sdk_upload_small_files

            say("SDK: large file")
            peer_large = await sdk_upload_large(dest, connection_string, large, sink=sink)
            say("SDK: small files")
            peer_small = await sdk_upload_small_files(
                dest, connection_string, small_paths, sink=sink
            )
            sdk_large_gbps = peer_large.gbps
            sdk_small_per_s = peer_small.files_per_s
            sdk_info = {
                "large": dataclasses.asdict(peer_large),
                "small": dataclasses.asdict(peer_small),
            }

    by_name = {run.name: run for run in runs}
    dicom = by_name.get("dicom")
    return UploadResult(
        dest=_redacted(dest),
        encrypt=encrypt,
        threads=threads,
        memory_cap_bytes=memory_cap_bytes,
        max_concurrency=max_concurrency,
        large_file_gbps=by_name["large"].gbps,
        sdk_large_file_gbps=sdk_large_gbps,
        small_files_per_s=by_name["small"].files_per_s,
        sdk_small_files_per_s=sdk_small_per_s,
        dicom_gbps=dicom.gbps if dicom else 0.0,
        dicom_files_per_s=dicom.files_per_s if dicom else 0.0,
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
        baseline_rss_mib=runs[0].rss_before_mib,
        sink_bytes_verified=sink is not None and all(run.verified for run in runs),
        runs=runs,
        sdk=sdk_info,
    )


def _redacted(url: str) -> str:
    from pyengine.targets.azure_blob import redact

    return redact(url.split("?", 1)[0])


# --------------------------------------------------------------------------------------------
# CLI


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
    kinds = bench.add_subparsers(dest="bench_command", metavar="{native,upload}")
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


def run_bench(args: argparse.Namespace) -> int:
    """Run the sub-command parsed by :func:`add_bench_parser`; returns the exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        if args.bench_command == "native":
            result = _run_native_command(args, console)
            if args.json:
                for obj in result.to_json():
                    print(json.dumps(obj))
            else:
                print_native(result, Console())
        else:
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
    cores = os.cpu_count() or 1
    thread_counts = args.threads or list(range(1, cores + 1))
    if args.size_bytes < MiB and args.file is None:
        raise ConfigError("--bytes", "must be at least 1MiB")
    with bench_file(args.file, args.size_bytes, args.workdir) as path:
        if not args.json:
            console.print(f"measuring {path.stat().st_size / GB:.2f} GB, threads {thread_counts}")
        return run_native(path, thread_counts=thread_counts)


async def _run_upload_command(args: argparse.Namespace, console: Any) -> UploadResult:
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


def print_native(result: NativeResult, console: Any) -> None:
    from rich.table import Table

    features = ", ".join(name for name, on in sorted(result.cpu_features.items()) if on)
    console.print(f"CPU features: {features or 'none'}; cores: {result.cores}")
    stages = Table(title="each stage alone, 1 thread", caption=f"{result.bytes / GB:.2f} GB file")
    stages.add_column("stage")
    stages.add_column("GB/s", justify="right")
    stages.add_column("GB per CPU s", justify="right")
    for stage, gbps in result.stage_gbps.items():
        stages.add_row(stage, f"{gbps:.2f}", f"{result.stage_cpu_gbps.get(stage, 0.0):.2f}")
    stages.add_row(
        "Σ (all stages in series)",
        f"{1 / sum(1 / g for g in result.stage_gbps.values()):.2f}",
        f"{1 / sum(1 / g for g in result.stage_cpu_gbps.values()):.2f}",
    )
    console.print(stages)
    combined = Table(
        title="combined pipeline (all stages)",
        caption=f"read+xxh3+crc64+blake3+aes_gcm, chunk {result.chunk_bytes // MiB} MiB,"
        f" cap {result.memory_cap_bytes // MiB} MiB, best of {REPEATS}",
    )
    for column in ("threads", "combined GB/s", "limit GB/s", "ratio", "CPU ratio"):
        combined.add_column(column, justify="right")
    for run in result.runs:
        combined.add_row(
            str(run.threads),
            f"{run.combined_gbps:.2f}",
            f"{run.limit_gbps:.2f}",
            f"{run.ratio:.2f}",
            f"{run.cpu_ratio:.2f}",
        )
    console.print(combined)
    console.print(
        f"load average {result.load_avg[0]:.1f} → {result.load_avg[1]:.1f} on {result.cores}"
        " cores (above the core count, wall-time figures are noisy). CPU ratio: GB per CPU"
        " second of the pipeline over the stages' own, i.e. its overhead whatever the load."
    )


def print_upload(result: UploadResult, console: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"bench upload → {result.dest} (encrypt {'on' if result.encrypt else 'off'},"
        f" threads {result.threads}, cap {result.memory_cap_bytes // MiB} MiB)"
    )
    columns = (
        "run",
        "pyengine",
        "SDK",
        "ratio",
        "CPU s/GB (ours+nginx)",
        "peak RSS MiB",
        "sink ok",
    )
    for column in columns:
        table.add_column(column, justify="right")
    by_name = {run.name: run for run in result.runs}
    large, small, dicom = by_name.get("large"), by_name.get("small"), by_name.get("dicom")

    def cpu(run: OurRun) -> str:
        gb = run.bytes / GB
        return f"{run.cpu_s / gb:.2f}+{run.sink_cpu_s / gb:.2f}"

    def verified(run: OurRun | None) -> str:
        return "-" if run is None or run.sink_body_bytes is None else str(run.verified).lower()

    if large:
        table.add_row(
            f"large file ({large.bytes / GB:.2f} GB)",
            f"{result.large_file_gbps:.2f} GB/s",
            f"{result.sdk_large_file_gbps:.2f} GB/s",
            f"{result.large_vs_sdk:.2f}×",
            cpu(large),
            f"{large.peak_rss_mib:.0f}",
            verified(large),
        )
    if small:
        table.add_row(
            f"{small.files} × 256 KiB",
            f"{result.small_files_per_s:.0f} files/s",
            f"{result.sdk_small_files_per_s:.0f} files/s",
            f"{result.small_vs_sdk:.2f}×",
            cpu(small),
            f"{small.peak_rss_mib:.0f}",
            verified(small),
        )
    if dicom:
        table.add_row(
            f"DICOM mix ({dicom.files} files, {dicom.bytes / GB:.2f} GB)",
            f"{dicom.gbps:.2f} GB/s, {dicom.files_per_s:.0f} files/s",
            "-",
            "-",
            cpu(dicom),
            f"{dicom.peak_rss_mib:.0f}",
            verified(dicom),
        )
    console.print(table)
    targets = Table(title="targets (10 Gbit/s line rate)")
    for column in ("target", "measured", ""):
        targets.add_column(column)
    for name, measured, met in result.targets():
        targets.add_row(name, measured, "[green]PASS[/]" if met else "[red]MISS[/]")
    console.print(targets)
    console.print(f"RSS of the copying process before its copy: {result.baseline_rss_mib:.0f} MiB")
    for run in result.runs:
        files_per_s = run.cpu_bound_gbps * GB / run.bytes * run.files
        console.print(
            f"{run.name}: {run.cpu_bound_gbps:.2f} GB/s, {files_per_s:.0f} files/s if client and"
            f" sink had the {os.cpu_count()} cores to themselves (CPU-bound estimate: wall time"
            " on a shared machine is noisy)"
        )


if __name__ == "__main__" and sys.argv[1:] == [COPY_CHILD_ARG]:
    sys.exit(_copy_child())
