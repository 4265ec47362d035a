"""What every CLI test shares: running `pyengine` as a real subprocess with a clean environment,
deterministic source trees, reading blobs back, and the one-line error contract.

Imported by the CLI and integration tests as ``cli_harness`` (tests/ is on sys.path, beside
conftest.py, as for faultproxy.py). Plain functions, not fixtures: the fixtures that start things
(Azurite, a container) live once in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from azure.storage.blob import ContainerClient

_BIN = Path(sys.executable).with_name("pyengine")
#: the installed console script, else the module (same entry point: pyengine.cli:main)
PYENGINE = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "pyengine.cli"]
#: a run must never take long: a hang is a bug, not a slow test
RUN_TIMEOUT_S = 60


def pyengine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI. The environment has no Azure credential of the caller's, and azure-identity
    is limited to EnvironmentCredential so that no test ever probes a metadata endpoint;
    COLUMNS=80 is the width a non-terminal (cron, CI log) gets, where long lines could wrap."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "COLUMNS"))}
    base.update({"AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential", "COLUMNS": "80"})
    base.update(env or {})
    return subprocess.run(
        [*PYENGINE, *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def content(size_bytes: int, seed: int) -> bytes:
    period = bytes(range(251))
    return (period * ((size_bytes + seed) // 251 + 1))[seed % 251 : seed % 251 + size_bytes]


def make_tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for seed, (rel, size_bytes) in enumerate(sorted(sizes.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(size_bytes, seed))
        files[rel] = path.read_bytes()
    return files


def container_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def blobs_of(azurite: Any, url: str) -> dict[str, bytes]:
    with ContainerClient.from_connection_string(azurite.connection_string, container_of(url)) as cc:
        return {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}


def copy_args(azurite: Any, tmp_path: Path, src: Path, dest: str, *extra: str) -> list[str]:
    return [
        "copy",
        str(src),
        dest,
        "--connection-string",
        azurite.connection_string,
        "--journal",
        str(tmp_path / "journal.sqlite"),
        "--threads",
        "2",
        *extra,
    ]


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], exit_code: int, subject: str, reason: str
) -> str:
    """The run exited ``exit_code`` and stderr holds exactly one ``error:`` line about
    ``subject`` whose reason contains ``reason``; returns that line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == exit_code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {subject}: "), proc.stderr
    assert reason.lower() in lines[0].lower(), proc.stderr
    return lines[0]


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]
