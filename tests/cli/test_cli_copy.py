"""`pyengine copy` as a real subprocess against the real Azurite: what a successful copy writes
(every blob equals its source, encrypted blobs decrypt with the official SDK), its JSON events,
--include/--exclude and --dry-run.

Exit codes: 0 everything copied, 1 some files failed, 2 usage or configuration error (the job
cannot start).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import blake3
import pytest
from azure.storage.blob import ContainerClient
from cli_harness import (
    blobs_of,
    container_of,
    copy_args,
    json_lines,
    make_tree,
    pyengine,
)

from pyengine.options import MiB

pytestmark = pytest.mark.integration


def test_copy_with_block_size_4_exits_0_and_every_blob_equals_its_source(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # --block-size 4 with the default 8 MiB single-put limit: 8 MiB - 1 is one Put Blob,
    # 8 MiB + 1 is three blocks (4 MiB, 4 MiB, 1 byte)
    sizes = {
        "empty.dcm": 0,
        "one.dcm": 1,
        "Ünïcødé/患者 1.dcm": 8 * MiB - 1,
        "a/b/8m+1": 8 * MiB + 1,
    }
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container + "/pre", "--block-size", "4"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    with ContainerClient.from_connection_string(
        azurite.connection_string, container_of(container)
    ) as cc:
        names = sorted(b.name for b in cc.list_blobs())
        assert names == sorted("pre/" + rel for rel in sizes)
        for rel, data in files.items():
            bc = cc.get_blob_client("pre/" + rel)
            got = bc.download_blob().readall()
            metadata = bc.get_blob_properties().metadata
            assert blake3.blake3(got).hexdigest() == blake3.blake3(data).hexdigest(), rel
            assert metadata["pyengineblake3"] == blake3.blake3(data).hexdigest(), rel
            assert metadata["pyenginesize"] == str(len(data)), rel
            assert metadata["pyenginemtimens"] == str((src / rel).stat().st_mtime_ns), rel
        blocks = cc.get_blob_client("pre/a/b/8m+1").get_block_list("committed")[0]
    assert [b.size for b in blocks] == [4 * MiB, 4 * MiB, 1]


def test_encrypted_copy_decrypts_with_the_official_sdk(
    azurite: Any, container: str, tmp_path: Path, sdk_blob: Any
) -> None:
    sizes = {"e0.dcm": 0, "e1.dcm": 1, "e4m+1.dcm": 4 * MiB + 1, "e9m.dcm": 9 * MiB}
    src = tmp_path / "src"
    files = make_tree(src, sizes)
    key = os.urandom(32)
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(key)
    proc = pyengine(
        *copy_args(azurite, tmp_path, src, container, "--encrypt", "--kek-file", str(kek_file))
    )
    assert proc.returncode == 0, proc.stderr
    for rel, data in files.items():
        with sdk_blob(container, rel, key) as bc:
            assert bc.download_blob().readall() == data, rel


def test_json_output_is_one_parseable_event_per_line_ending_with_the_summary(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"a.dcm": 10, "b/c.dcm": 9 * MiB, "d.dcm": 0}
    src = tmp_path / "src"
    make_tree(src, sizes)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container, "--json"))
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)  # every line parses
    assert events[0]["kind"] == "job_started"
    summary = events[-1]
    assert summary["kind"] == "summary"
    assert [e["kind"] for e in events].count("summary") == 1
    assert summary["files_copied"] == 3 and summary["files_failed"] == 0
    assert summary["bytes_copied"] == sum(sizes.values())
    assert summary["files_total"] == 3 and summary["failures"] == []
    copied = sorted(e["path"] for e in events if e["kind"] == "file_copied")
    assert copied == sorted(sizes)


def test_include_and_exclude_select_the_files_copied(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {
        "a.dcm": 1,
        "a.txt": 1,
        "scans/b.dcm": 1,
        "scans/tmp/c.dcm": 1,
        "other/d.dcm": 1,
    }
    src = tmp_path / "src"
    make_tree(src, sizes)
    proc = pyengine(
        *copy_args(
            azurite,
            tmp_path,
            src,
            container,
            "--include",
            "*.dcm",
            "--exclude",
            "scans/tmp/**",
            "--exclude",
            "other/*",
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(blobs_of(azurite, container)) == ["a.dcm", "scans/b.dcm"]


def test_dry_run_sends_nothing_and_lists_every_planned_blob(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    sizes = {"a.dcm": 10, "b/c.dcm": 2000}
    src = tmp_path / "src"
    make_tree(src, sizes)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container + "/p", "--dry-run", "--json"))
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    planned = sorted(
        (e["path"], e["blob"], e["bytes"]) for e in events if e["kind"] == "file_planned"
    )
    assert planned == sorted((rel, "p/" + rel, n) for rel, n in sizes.items())
    assert events[-1]["kind"] == "summary" and events[-1]["dry_run"] is True
    assert blobs_of(azurite, container) == {}
    # nor does a plain dry run
    plain = pyengine(*copy_args(azurite, tmp_path, src, container, "--dry-run"))
    assert plain.returncode == 0, plain.stderr
    assert "dry run: 2 files" in plain.stderr
    assert blobs_of(azurite, container) == {}
