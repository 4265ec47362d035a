"""`pyengine copy --dry-run`: the decisions a real run would make, each file counted once as to
copy, up to date or failed (with bytes), the deletions it would make, and nothing changed at the
destination (etags and the blob list read back with the official SDK)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from cli_harness import container_of, copy_args, make_tree, pyengine

pytestmark = pytest.mark.integration


def _etags(azurite: Any, url: str) -> dict[str, str]:
    with ContainerClient.from_connection_string(azurite.connection_string, container_of(url)) as cc:
        return {b.name: b.etag for b in cc.list_blobs()}


def _summary(stdout: str) -> dict[str, Any]:
    (summary,) = [
        json.loads(ln) for ln in stdout.splitlines() if json.loads(ln).get("kind") == "summary"
    ]
    return summary


def test_dry_run_counts_to_copy_up_to_date_and_to_delete_and_changes_nothing(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1000, "b.dcm": 2000, "c.dcm": 3000, "d/e.dcm": 4000})
    first = pyengine(*copy_args(azurite, tmp_path, src, container))
    assert first.returncode == 0, first.stderr
    before = _etags(azurite, container)

    (src / "b.dcm").write_bytes(b"changed" * 100)  # 700 bytes, new mtime and ctime
    (src / "new.dcm").write_bytes(b"n" * 500)
    (src / "c.dcm").unlink()
    proc = pyengine(
        *copy_args(azurite, tmp_path, src, container),
        "--dry-run",
        "--delete-destination",
        "--max-delete",
        "100%",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    s = _summary(proc.stdout)
    assert (s["files_to_copy"], s["bytes_to_copy"]) == (2, 700 + 500)
    assert (s["files_up_to_date"], s["bytes_up_to_date"]) == (2, 1000 + 4000)
    assert (s["files_failed"], s["files_copied"], s["files_skipped"]) == (0, 0, 0)
    assert s["blobs_to_delete"] == 1 and s["blobs_deleted"] == 0
    assert s["files_total"] == 4 and s["dry_run"] is True
    assert _etags(azurite, container) == before  # nothing written, nothing deleted

    # the same categories in words, each file once
    text = pyengine(*copy_args(azurite, tmp_path, src, container), "--dry-run")
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stderr.split())
    assert "2 files (1.2 KB) would be copied, 2 (5.0 KB) are up to date, 0 would fail" in flat
    assert "would copy: new.dcm -> new.dcm" in flat and "would copy: a.dcm" not in flat


def test_dry_run_reports_a_rejected_name_as_failed_with_its_reason(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "back\\slash.dcm": 20})
    proc = pyengine(*copy_args(azurite, tmp_path, src, container), "--dry-run", "--json")
    assert proc.returncode == 1, proc.stderr
    s = _summary(proc.stdout)
    assert (s["files_to_copy"], s["files_failed"], s["files_total"]) == (1, 1, 2)
    assert [f["path"] for f in s["failures"]] == ["back\\slash.dcm"]
    assert _etags(azurite, container) == {}


def test_dry_run_with_create_container_on_a_missing_container_plans_all_and_creates_nothing(
    azurite: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "b.dcm": 20})
    name = f"missing-{uuid.uuid4().hex[:12]}"
    dest = f"{azurite.account_url}/{name}"
    args = copy_args(azurite, tmp_path, src, dest)
    proc = pyengine(*args, "--dry-run", "--create-container")
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stderr.split())
    assert (
        f"container {name} does not exist; a real run with --create-container would create it"
        in flat
    )
    assert "2 files (30 B) would be copied, 0 (0 B) are up to date" in flat
    as_json = pyengine(*args, "--dry-run", "--create-container", "--json")
    s = _summary(as_json.stdout)
    assert (s["files_to_copy"], s["container_to_create"]) == (2, name)
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        assert not svc.get_container_client(name).exists()
    assert not os.path.exists(tmp_path / "journal.sqlite")  # a dry run journals nothing
