"""The one table of exit codes (README "Exit codes", `pyengine --help`): a destination prefix
with `..`, `.` or empty segments is a usage error found before any request (2), an unreachable
endpoint is 3, not 1 like a failed file."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from cli_harness import assert_one_line_error, copy_args, make_tree, pyengine

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "./a", "a/.", "%2e%2e/x"])
def test_dest_prefix_with_dot_dot_or_empty_segment_exits_2_before_creating_the_container(
    azurite: Any, tmp_path: Path, prefix: str
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10})
    name = f"never-{uuid.uuid4().hex[:12]}"
    dest = f"{azurite.account_url}/{name}/{prefix}"
    proc = pyengine(*copy_args(azurite, tmp_path, src, dest), "--create-container")
    assert_one_line_error(proc, 2, dest, "'.' or '..' segment")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        assert not svc.get_container_client(name).exists()


def test_unreachable_endpoint_exits_3(azurite: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10})
    # port 9 (discard) on loopback: nothing listens, every connection is refused
    dest = f"http://127.0.0.1:9/{azurite.account_name}/c-{uuid.uuid4().hex[:8]}"
    proc = pyengine(*copy_args(azurite, tmp_path, src, dest), "--retry-window", "1")
    assert_one_line_error(proc, 3, dest, "check container")


def test_help_prints_the_exit_code_table() -> None:
    proc = pyengine("--help")
    assert proc.returncode == 0
    table = proc.stdout.split("exit codes:", 1)[1].split()
    for code in ("0", "1", "2", "3", "130", "143"):
        assert code in table
