"""``pyengine bench native``: what the native core can do on this machine, and its table.

Each per-byte stage alone on one thread (md5 included), the read stage alone, then the whole
pipeline (read, xxh3-128, CRC64, BLAKE3, AES-GCM), with and without --put-md5's MD5, for 1..N
threads, compared with the ideal ``min(threads, cores) / Σ stage seconds per byte``.
:func:`run_native` returns a plain dataclass and prints nothing; :func:`print_native` renders it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyengine import _core
from pyengine.bench.files import GB, MiB
from pyengine.errors import ConfigError, IntegrityError

#: per-stage figures are taken over an in-memory buffer this large: far above the L3 cache, so
#: the figure is the streaming rate the pipeline sees, and small enough to allocate anywhere
NATIVE_BUFFER_BYTES = 256 * MiB
NATIVE_CHUNK_BYTES = 8 * MiB
NATIVE_MEMORY_CAP_BYTES = 256 * MiB
#: the machine is shared and noisy: every figure is the best of this many runs
REPEATS = 3
#: the per-byte stages, in pipeline order (read is measured separately); md5 (--put-md5) runs
#: only when asked, so the combined run and its limit leave it out (OPTIONAL_STAGES) and a second
#: combined run per thread count adds it
NATIVE_STAGES = ("xxh3", "crc64", "blake3", "aes_gcm", "md5")
OPTIONAL_STAGES = ("md5",)


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
    #: the same pipeline with STAGE_MD5 (--put-md5) too: MD5 is one serial chain per file, so
    #: over one file this stops near the md5 stage's one-thread rate however many threads run
    md5_combined_gbps: float = 0.0


def _default_stages(gbps: dict[str, float]) -> dict[str, float]:
    """The figures of the stages every copy runs (not the optional md5)."""
    return {stage: g for stage, g in gbps.items() if stage not in OPTIONAL_STAGES}


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
    seconds_per_gb = sum(1 / gbps for gbps in _default_stages(stage_gbps).values())
    cpu_seconds_per_gb = sum(1 / gbps for gbps in _default_stages(stage_cpu_gbps).values())
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
        md5_seconds = min(
            pipeline_seconds(
                path,
                size_bytes,
                threads=threads,
                stages=_core.STAGE_ALL | _core.STAGE_MD5,
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
                md5_combined_gbps=size_bytes / md5_seconds / GB,
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
    default_gbps, default_cpu_gbps = (
        _default_stages(result.stage_gbps),
        _default_stages(result.stage_cpu_gbps),
    )
    stages.add_row(
        "Σ (all stages but md5, in series)",
        f"{1 / sum(1 / g for g in default_gbps.values()):.2f}",
        f"{1 / sum(1 / g for g in default_cpu_gbps.values() if g):.2f}",
    )
    console.print(stages)
    combined = Table(
        title="combined pipeline (all stages)",
        caption=f"read+xxh3+crc64+blake3+aes_gcm, chunk {result.chunk_bytes // MiB} MiB,"
        f" cap {result.memory_cap_bytes // MiB} MiB, best of {REPEATS}",
    )
    columns = ("threads", "combined GB/s", "limit GB/s", "ratio", "CPU ratio", "+md5 GB/s")
    for column in columns:
        combined.add_column(column, justify="right")
    for run in result.runs:
        combined.add_row(
            str(run.threads),
            f"{run.combined_gbps:.2f}",
            f"{run.limit_gbps:.2f}",
            f"{run.ratio:.2f}",
            f"{run.cpu_ratio:.2f}",
            f"{run.md5_combined_gbps:.2f}",
        )
    console.print(combined)
    console.print(
        f"load average {result.load_avg[0]:.1f} → {result.load_avg[1]:.1f} on {result.cores}"
        " cores (above the core count, wall-time figures are noisy). CPU ratio: GB per CPU"
        " second of the pipeline over the stages' own, i.e. its overhead whatever the load."
        " +md5: the same run with --put-md5's MD5, serial per file."
    )
