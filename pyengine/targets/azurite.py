"""A local Azurite blob service for the demo and the tests (npm package `azurite`).

Started on a free loopback port (port 0: the kernel picks it and Azurite prints it, so there is no
probe-then-bind race) with its well-known development account, and stopped on exit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyengine.errors import ConfigError
from pyengine.targets.auth import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME

_LISTENING = re.compile(r"successfully listens on https?://[^:]+:(\d+)")
_REPO = Path(__file__).resolve().parents[2]


def azurite_blob_bin() -> str:
    local = _REPO / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise ConfigError(
        "azurite", "not installed: run `make test` or `make demo` (npm install azurite)"
    )


@dataclass
class Azurite:
    """``with Azurite(workdir) as az: az.connection_string`` — a running Azurite blob service."""

    workdir: Path
    debug_log: Path | None = None
    start_timeout_s: float = 30.0
    port: int = 0
    account_name: str = DEV_ACCOUNT_NAME
    account_key: str = DEV_ACCOUNT_KEY
    _proc: subprocess.Popen[str] | None = None

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.account_url};"
        )

    def start(self) -> Azurite:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            azurite_blob_bin(),
            "--blobHost", "127.0.0.1",
            "--blobPort", "0",
            "--location", str(self.workdir / "data"),
            "--disableTelemetry",  # nothing may reach the network
            "--skipApiVersionCheck",
            # strict mode rejects x-ms-content-crc64 as an unsupported header (Azurite's
            # StrictModelMiddlewareFactory); in loose mode Azurite accepts it and ignores it
            "--loose",
            # above aiohttp's 15 s keep-alive, so Azurite never closes a connection the client is
            # about to reuse (that would show up as spurious retries)
            "--blobKeepAliveTimeout", "60",
        ]  # fmt: skip
        cmd += ["--debug", str(self.debug_log)] if self.debug_log else ["--silent"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.workdir
        )
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # exited
            lines.append(line.rstrip())
            m = _LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            proc.kill()
            proc.wait()
            raise ConfigError("azurite", "did not start: " + " | ".join(lines[-5:]))
        # keep draining its output so a full pipe never blocks it
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        self._proc = proc
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEV_ACCOUNT_KEY", "DEV_ACCOUNT_NAME", "Azurite", "azurite_blob_bin"]
