"""Secrets (account key, SAS signature) given to `pyengine copy` appear nowhere: not on stdout or
stderr, not in the journal, not in the manifest.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from azure.storage.blob import (
    ContainerSasPermissions,
    generate_container_sas,
)
from cli_harness import (
    blobs_of,
    container_of,
    json_lines,
    make_tree,
    pyengine,
)

from pyengine.options import MiB

pytestmark = pytest.mark.integration


def _assert_nowhere(
    secrets: list[str], proc: subprocess.CompletedProcess[str], *files: Path
) -> None:
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    for f in files:
        assert f.exists(), f
        texts[f.name] = f.read_bytes().decode("utf-8", "replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"secret found in {where}"


def _store_files(tmp_path: Path) -> list[Path]:
    # the journal with its WAL (SQLite may not have checkpointed yet) and the manifest
    return [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite")] + [
        tmp_path / "manifest.jsonl"
    ]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_connection_string_account_key_never_appears_in_output_journal_or_manifest(
    azurite: Any, container: str, tmp_path: Path, how: str
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "b/c.dcm": 9 * MiB})
    os.mkfifo(src / "fifo.dcm")  # a failure path too
    args = [
        "-vv",
        "copy",
        str(src),
        container,
        "--journal",
        str(tmp_path / "journal.sqlite"),
        "--manifest",
        str(tmp_path / "manifest.jsonl"),
        "--json",
    ]
    env: dict[str, str] = {}
    if how == "flag":
        args += ["--connection-string", azurite.connection_string]
    else:
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    proc = pyengine(*args, env=env)
    assert proc.returncode == 1, proc.stderr  # the FIFO
    assert json_lines(proc.stdout)[-1]["files_copied"] == 2
    _assert_nowhere([azurite.account_key], proc, *_store_files(tmp_path))


def test_sas_signature_never_appears_in_output_journal_or_manifest(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    name = container_of(container)
    sas = generate_container_sas(
        azurite.account_name,
        name,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(
            read=True, add=True, create=True, write=True, delete=True, list=True
        ),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    sig = parse_qs(sas)["sig"][0]
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "b/c.dcm": 9 * MiB})
    os.mkfifo(src / "fifo.dcm")
    proc = pyengine(
        "-vv",
        "copy",
        str(src),
        f"{container}/pre?{sas}",
        "--journal",
        str(tmp_path / "journal.sqlite"),
        "--manifest",
        str(tmp_path / "manifest.jsonl"),
        "--json",
    )
    assert proc.returncode == 1, proc.stderr  # the FIFO
    assert json_lines(proc.stdout)[-1]["files_copied"] == 2
    assert sorted(blobs_of(azurite, container)) == ["pre/a.dcm", "pre/b/c.dcm"]
    secrets = [sig, quote(sig, safe=""), azurite.account_key]
    _assert_nowhere(secrets, proc, *_store_files(tmp_path))
