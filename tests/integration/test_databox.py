"""Data Box Blob storage as a destination (issue 11 item 1), against Azurite behind an HTTPS proxy
that behaves like the device (tests/databoxproxy.py): REST 2019-02-02 at most, no index tags,
tier or immutability headers, names of at most 880 characters, its own TLS certificate. What
was stored is read back with the official SDK from Azurite directly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyengine
from pyengine import CopyOptions
from pyengine.options import MiB
from pyengine.state.journal import Journal
from pyengine.state.pending import pending_properties

pytestmark = pytest.mark.integration


def tree(root: Path) -> dict[str, bytes]:
    files = {
        "a/small.dcm": os.urandom(3000),
        "a/multi.bin": os.urandom(3 * MiB + 123),  # Put Block List (blocks of 1 MiB below)
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def copy(src: Path, dest: str, azurite: Any, tmp_path: Path, **kw: Any) -> pyengine.CopyReport:
    opts = CopyOptions(
        threads=2,
        single_put_max_bytes=MiB,
        block_bytes=MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
        **kw,
    )
    return asyncio.run(pyengine.copy(src, dest, opts))


def test_copy_with_ca_cert_succeeds_sending_only_what_the_device_accepts(
    databox, azurite, container, sdk_blob, tmp_path
):
    files = tree(tmp_path / "src")
    report = copy(
        tmp_path / "src",
        databox.url(container),
        azurite,
        tmp_path,
        target="databox",
        ca_cert_file=str(databox.ca_path),
    )
    assert report.failures == [] and report.files_copied == 2
    for rel, data in files.items():
        assert sdk_blob(container, rel).download_blob().readall() == data
    assert databox.refused() == []
    assert {e.headers["x-ms-version"] for e in databox.log} == {"2019-02-02"}
    assert any("comp=blocklist" in e.path or e.method == "PUT" for e in databox.log)


def test_copy_without_ca_cert_fails_with_one_line_naming_the_certificate(
    databox, azurite, container, tmp_path
):
    tree(tmp_path / "src")
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    env.pop("SSL_CERT_FILE", None)
    args = [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src")]
    args += [databox.url(container), "--target", "databox"]
    args += ["--journal", str(tmp_path / "j.sqlite")]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0  # DestinationError: its exit code is cli/common.py's to map
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "certificate" in lines[0]
    assert "--ca-cert" in lines[0]
    assert databox.log == []  # the handshake failed: no request reached the device


def test_ssl_cert_file_is_honoured_without_ca_cert(databox, azurite, container, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "one.bin").write_bytes(b"x" * 100)
    env = {
        **os.environ,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "SSL_CERT_FILE": str(databox.ca_path),
    }
    args = [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src")]
    args += [databox.url(container), "--target", "databox", "--journal", str(tmp_path / "j")]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_name_over_880_characters_fails_at_plan_time_with_no_request_sent(
    databox, azurite, container, tmp_path
):
    src = tmp_path / "src"
    long_dir = src / ("d" * 200) / ("e" * 200) / ("f" * 200) / ("g" * 200)
    long_dir.mkdir(parents=True)
    (long_dir / ("h" * 80)).write_bytes(b"too long a name")  # 884 characters
    (src / "ok.bin").write_bytes(b"fine")
    report = copy(
        src,
        databox.url(container),
        azurite,
        tmp_path,
        target="databox",
        ca_cert_file=str(databox.ca_path),
    )
    assert report.files_copied == 1 and report.files_failed == 1
    ((shown, reason),) = report.failures
    assert shown.endswith("h" * 80)
    assert reason == "blob name too long: 884 characters > 880"
    assert not any("ddddd" in e.path for e in databox.log)


def test_tags_and_tier_are_journaled_pending_not_sent(databox, azurite, container, tmp_path):
    files = tree(tmp_path / "src")
    report = copy(
        tmp_path / "src",
        databox.url(container),
        azurite,
        tmp_path,
        target="databox",
        ca_cert_file=str(databox.ca_path),
        tags=(("tenant", "t1"), ("modality", "CT")),
        tier="Cool",
    )
    assert report.failures == [] and report.files_copied == len(files)
    assert report.files_pending_finalize == len(files)
    assert databox.refused() == []
    assert not any("x-ms-tags" in e.headers or "x-ms-access-tier" in e.headers for e in databox.log)
    with Journal.open(tmp_path / "journal.sqlite") as journal:
        pending = pending_properties(journal, report.job_id)
    by_blob: dict[str, dict[str, Any]] = {}
    for p in pending:
        by_blob.setdefault(p.blob, {})[p.what] = p.value
    assert by_blob == {
        rel: {"tags": {"tenant": "t1", "modality": "CT"}, "tier": "Cool"} for rel in files
    }


def test_cli_summary_counts_files_with_properties_pending(databox, azurite, container, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "one.bin").write_bytes(b"x" * 100)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    args = [sys.executable, "-m", "pyengine", "copy", str(tmp_path / "src")]
    args += [databox.url(container), "--target", "databox", "--journal", str(tmp_path / "j")]
    args += ["--ca-cert", str(databox.ca_path), "--tag", "tenant=t1"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 files have properties pending for finalize" in done.stderr
