"""``pyengine bench upload``: what a copy achieves end to end, and its tables.

Against a discard sink (nginx, see :mod:`pyengine.bench.sink`), side by side with the
azure-storage-blob SDK (:mod:`pyengine.bench.peers`): one large file, many 256 KiB files, a
DICOM-like tree (:mod:`pyengine.bench.dicom_tree`). Each of our runs is a fresh process
(:mod:`pyengine.bench.copy_child`), checked against the bytes the sink read; its own peak RSS
(VmHWM) is held against the memory cap. :func:`run_upload` returns a plain dataclass and prints
nothing; :func:`print_upload` renders it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyengine.bench.copy_child import OurRun, our_copy
from pyengine.bench.dicom_tree import bench_policy_toml, make_tree
from pyengine.bench.files import (
    GB,
    SMALL_FILE_BYTES,
    GiB,
    MiB,
    cache_file,
    check_free_space,
    write_random_file,
    write_small_files,
)
from pyengine.bench.peer_tools import cpu_bound_files_per_s, tool_cpu_text
from pyengine.errors import ConfigError

#: targets of issue 5 (10 Gbit/s line rate)
TARGET_LARGE_GBPS = 1.25
TARGET_LARGE_VS_SDK = 2.0
TARGET_SMALL_FILES_PER_S = 3000.0
TARGET_SMALL_VS_SDK = 6.0
#: issue 13: small files (encrypted, hashed) at >= 1.5x rclone's and AzCopy's files/s
TARGET_SMALL_VS_TOOL = 1.5
#: issue 10: the DICOM mix under a migration policy keeps >= 90 % of the files/s without one
TARGET_POLICY_FILES_RATIO = 0.9
#: allowance above the pool's memory cap for the interpreter, libraries and request state
RSS_ALLOWANCE_MIB = 64


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
    #: the same DICOM mix copied under a two-tenant policy (bench_policy_toml), in the same run
    dicom_policy_files_per_s: float
    peak_rss_mib: float
    #: RSS of the copying process right before its copy began (interpreter and libraries)
    baseline_rss_mib: float
    sink_bytes_verified: bool
    runs: list[OurRun] = field(default_factory=list)
    sdk: dict[str, Any] = field(default_factory=dict)
    #: rclone / AzCopy small-file runs (bench/peer_tools.py): ToolResult fields, or tool + error
    tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def large_vs_sdk(self) -> float:
        return self.large_file_gbps / self.sdk_large_file_gbps if self.sdk_large_file_gbps else 0.0

    @property
    def small_vs_sdk(self) -> float:
        if not self.sdk_small_files_per_s:
            return 0.0
        return self.small_files_per_s / self.sdk_small_files_per_s

    @property
    def policy_ratio(self) -> float:
        """DICOM files/s with a policy over files/s without (1.0 = no cost)."""
        if not self.dicom_files_per_s:
            return 0.0
        return self.dicom_policy_files_per_s / self.dicom_files_per_s

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
            *(
                (
                    f"small files ≥ {TARGET_SMALL_VS_TOOL:g}× {t['tool']}",
                    f"{self.small_files_per_s / t['files_per_s']:.2f}×"
                    if "files_per_s" in t
                    else t.get("error", "failed"),
                    "files_per_s" in t
                    and self.small_files_per_s >= TARGET_SMALL_VS_TOOL * t["files_per_s"],
                )
                for t in self.tools
            ),
            (
                f"peak RSS ≤ cap + {RSS_ALLOWANCE_MIB} MiB ({self.rss_limit_mib:.0f} MiB)",
                f"{self.peak_rss_mib:.0f} MiB",
                self.peak_rss_mib <= self.rss_limit_mib,
            ),
            (
                f"DICOM mix with a policy ≥ {TARGET_POLICY_FILES_RATIO:.0%} of files/s without",
                f"{self.policy_ratio:.0%}",
                self.policy_ratio >= TARGET_POLICY_FILES_RATIO,
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
        out["policy_ratio"] = self.policy_ratio
        out["rss_limit_mib"] = self.rss_limit_mib
        for run_json, run in zip(out["runs"], self.runs, strict=True):
            run_json["cpu_bound_gbps"] = run.cpu_bound_gbps
        out["targets"] = [
            {"target": name, "measured": measured, "met": met}
            for name, measured, met in self.targets()
        ]
        return out


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
        check_free_space(tmp, large_bytes + small_files * SMALL_FILE_BYTES + dicom_bytes)
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
            """A CopyOptions, as the copying process's spec (see copy_child)."""
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
            await our_copy(
                "large",
                options("large", large, f"{dest}/ours/large"),
                files=1,
                payload_bytes=large_bytes,
                sink=sink,
            )
        )
        say("pyengine: small files")
        runs.append(
            await our_copy(
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
                await our_copy(
                    "dicom",
                    options("dicom", dicom_root, f"{dest}/ours/dicom"),
                    files=len(dicom_paths),
                    payload_bytes=dicom_payload_bytes,
                    sink=sink,
                )
            )
            say("pyengine: DICOM mix under a two-tenant policy")
            kek_files = None
            if encrypt:  # each tenant its own key
                kek_files = [str(tmp / f"tenant{i}.kek") for i in range(2)]
                for path in kek_files:
                    Path(path).write_bytes(os.urandom(32))
            spec = options("dicom-policy", dicom_root, "")
            spec["policy_toml"] = bench_policy_toml(f"{dest}/ours-policy", kek_files)
            runs.append(
                await our_copy(
                    "dicom-policy",
                    spec,
                    files=len(dicom_paths),
                    payload_bytes=dicom_payload_bytes,
                    sink=sink,
                )
            )

        sdk_large_gbps = sdk_small_per_s = 0.0
        sdk_info: dict[str, Any] = {}
        tools: list[dict[str, Any]] = []
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
            from pyengine.bench.peer_tools import tool_runs

            tools = await tool_runs(small_root, dest, connection_string, small_files, sink, say)

    by_name = {run.name: run for run in runs}
    dicom, dicom_policy = by_name.get("dicom"), by_name.get("dicom-policy")
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
        dicom_policy_files_per_s=dicom_policy.files_per_s if dicom_policy else 0.0,
        peak_rss_mib=max(run.peak_rss_mib for run in runs),
        baseline_rss_mib=runs[0].rss_before_mib,
        sink_bytes_verified=sink is not None and all(run.verified for run in runs),
        runs=runs,
        sdk=sdk_info,
        tools=tools,
    )


def _redacted(url: str) -> str:
    from pyengine.targets.azure_blob import redact

    return redact(url.split("?", 1)[0])


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
    dicom_policy = by_name.get("dicom-policy")
    if dicom_policy:
        table.add_row(
            "DICOM mix, two-tenant policy",
            f"{dicom_policy.gbps:.2f} GB/s, {dicom_policy.files_per_s:.0f} files/s",
            "-",
            f"{result.policy_ratio:.2f}× (vs no policy)",
            cpu(dicom_policy),
            f"{dicom_policy.peak_rss_mib:.0f}",
            verified(dicom_policy),
        )
    for t in result.tools:
        if "files_per_s" in t:
            table.add_row(
                f"{t['tool']}: {t['files']} × 256 KiB, no encryption",
                f"{result.small_files_per_s:.0f} files/s",
                f"{t['files_per_s']:.0f} files/s",
                f"{result.small_files_per_s / t['files_per_s']:.2f}×",
                tool_cpu_text(t),
                "-",
                "-" if t["sink_bytes_verified"] is None else "true",
            )
    console.print(table)
    for t in result.tools:
        console.print(f"{t['tool']}: {t.get('command') or t.get('error')}", markup=False)
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
    for t in result.tools:
        ours_per_s = small.cpu_bound_gbps * GB / small.bytes * small.files if small else 0.0
        theirs_per_s = cpu_bound_files_per_s(t)
        if theirs_per_s and ours_per_s:
            console.print(
                f"{t['tool']}: {theirs_per_s:.0f} files/s CPU-bound estimate (its CPU + nginx's);"
                f" ours ÷ it {ours_per_s / theirs_per_s:.2f}×"
            )
