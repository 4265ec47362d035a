"""How one of our ``bench upload`` runs is measured: a pyengine.copy in a fresh process.

The parent (:func:`our_copy`) starts ``python -m pyengine.bench.copy_child --copy-child``, hands
it the run's spec on stdin, and checks its one JSON line against the report and the bytes the
discard sink read; the child (:func:`copy_child`) runs the copy and reports its own seconds, CPU
seconds and peak RSS (VmHWM), which is held against the memory cap.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

from pyengine.bench.files import GB, MiB
from pyengine.errors import IntegrityError, PyEngineError

#: the child's module and the one argument it runs on (without it, ``python -m`` does nothing:
#: an accidental run does not sit waiting for a spec on stdin)
COPY_CHILD_MODULE = "pyengine.bench.copy_child"
COPY_CHILD_ARG = "--copy-child"


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


async def _counted(sink: Any) -> Any:
    return await sink.acounted() if sink is not None else None


async def our_copy(
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
        COPY_CHILD_MODULE,
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


def copy_child() -> int:
    """The copying process of one run: reads its spec (JSON) on stdin, runs pyengine.copy,
    prints one JSON line: seconds, CPU seconds, its own VmHWM (exact, no sampling), the report.
    Imports only what a copy needs: its RSS is what an operator's copy would have."""
    from pyengine.crypto import LocalKeyWrapper
    from pyengine.engine.job import copy
    from pyengine.options import CopyOptions

    spec = json.loads(sys.stdin.read())
    kek_hex = spec.pop("kek_hex")
    source, dest = spec.pop("source"), spec.pop("dest")
    policy = None
    if (policy_toml := spec.pop("policy_toml", None)) is not None:
        # the policy names each tenant's destination and key (bench_policy_toml)
        from pyengine.policy import parse_policy

        policy = parse_policy(policy_toml, base_dir=os.getcwd())
        # pydicom is imported by the first head read: like the CLI, which loads the policy
        # before the copy starts, pay the import before the timer (~0.1 s, once per process)
        policy.read_dicom_head(b"")
        dest, kek_hex = None, None
        spec["encrypt"] = False
    options = CopyOptions(**spec, kek=LocalKeyWrapper(bytes.fromhex(kek_hex)) if kek_hex else None)
    rss_before_bytes = proc_status_bytes(b"VmRSS")
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    start_s = time.perf_counter()
    try:
        report = asyncio.run(copy(source, dest, options, policy=policy))
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


if __name__ == "__main__" and sys.argv[1:] == [COPY_CHILD_ARG]:
    sys.exit(copy_child())
