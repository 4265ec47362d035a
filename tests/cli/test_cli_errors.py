"""`pyengine copy` on bad input, as a real subprocess against the real Azurite: every user error
is one line ``error: <subject>: <reason>`` on stderr with the right exit code (1 some files
failed and the rest is copied, 2 the job cannot start), never a traceback.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from cli_harness import (
    assert_one_line_error,
    blobs_of,
    container_of,
    copy_args,
    json_lines,
    make_tree,
    pyengine,
)

pytestmark = pytest.mark.integration


def test_missing_source_exits_2_with_one_line_error(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # Exit 2: nothing was attempted, the command itself is wrong (as for a bad option);
    # 1 would tell a script "some files failed, retry may help".
    missing = tmp_path / "no" / "such" / "archive" / "with-a-path-longer-than-a-terminal-line"
    proc = pyengine(*copy_args(azurite, tmp_path, missing, container))
    assert_one_line_error(proc, 2, str(missing), "no such file or directory")
    assert blobs_of(azurite, container) == {}


def test_fifo_and_symlink_loop_are_reported_exit_1_and_the_rest_is_copied(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "d/b.dcm": 20, "z.dcm": 30})
    os.mkfifo(src / "fifo.dcm")
    (src / "d" / "loop").symlink_to("..")
    proc = pyengine(*copy_args(azurite, tmp_path, src, container))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    errors = sorted(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert errors == [
        "error: d/loop: symlink loop",
        "error: fifo.dcm: not a regular file (FIFO)",
    ]
    assert sorted(blobs_of(azurite, container)) == ["a.dcm", "d/b.dcm", "z.dcm"]


def test_failed_file_error_line_shows_its_name_verbatim(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # "[red]" is rich console markup: a name must never be interpreted as markup
    src = tmp_path / "src"
    make_tree(src, {"ok.dcm": 1})
    os.mkfifo(src / "scan[red] [bold]x.dcm")
    proc = pyengine(*copy_args(azurite, tmp_path, src, container))
    assert_one_line_error(proc, 1, "scan[red] [bold]x.dcm", "not a regular file (FIFO)")


def test_json_summary_counts_failed_files_with_their_reasons(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10})
    os.mkfifo(src / "fifo.dcm")
    proc = pyengine(*copy_args(azurite, tmp_path, src, container, "--json"))
    assert proc.returncode == 1, proc.stderr
    summary = json_lines(proc.stdout)[-1]
    assert summary["kind"] == "summary"
    assert (summary["files_copied"], summary["files_failed"]) == (1, 1)
    assert summary["failures"] == [{"path": "fifo.dcm", "reason": "not a regular file (FIFO)"}]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file_is_reported_exit_1_and_the_rest_is_copied(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 10, "locked.dcm": 20})
    (src / "locked.dcm").chmod(0)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container))
    assert_one_line_error(proc, 1, "locked.dcm", "permission denied")
    assert sorted(blobs_of(azurite, container)) == ["a.dcm"]


def test_invalid_container_name_exits_2(azurite: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    dest = f"{azurite.account_url}/Bad_Name"
    proc = pyengine(*copy_args(azurite, tmp_path, src, dest))
    assert_one_line_error(proc, 2, dest, "invalid container name")


def test_wrong_account_key_exits_3_naming_authentication_without_the_key(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    # valid base64 of 64 bytes, like a real key, but not the account's: the signature is wrong
    wrong_key = base64.b64encode(bytes(range(64))).decode("ascii")
    cs = azurite.connection_string.replace(azurite.account_key, wrong_key)
    args = copy_args(azurite, tmp_path, src, container)
    args[args.index("--connection-string") + 1] = cs
    proc = pyengine(*args)
    assert_one_line_error(proc, 3, container, "authentication")
    for secret in (wrong_key, azurite.account_key):
        assert secret not in proc.stdout + proc.stderr
    assert blobs_of(azurite, container) == {}


def test_no_credential_at_all_exits_3_with_one_line_error(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # no SAS, no connection string, no AZURE_STORAGE_KEY: azure-identity is the last resort
    # and finds nothing (limited to EnvironmentCredential, see pyengine())
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    proc = pyengine("copy", str(src), container, "--journal", str(tmp_path / "j.sqlite"))
    assert_one_line_error(proc, 3, container, "credential")


def test_missing_container_without_create_container_exits_2(azurite: Any, tmp_path: Path) -> None:
    # Exit 2 as for any destination that cannot be used as given: the command must change
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    dest = f"{azurite.account_url}/missing-{uuid.uuid4().hex[:12]}"
    proc = pyengine(*copy_args(azurite, tmp_path, src, dest))
    assert_one_line_error(proc, 2, dest, "--create-container")


def test_create_container_creates_a_missing_container_and_copies(
    azurite: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 7})
    dest = f"{azurite.account_url}/created-{uuid.uuid4().hex[:12]}"
    proc = pyengine(*copy_args(azurite, tmp_path, src, dest, "--create-container"))
    assert proc.returncode == 0, proc.stderr
    assert blobs_of(azurite, dest) == {"a.dcm": (src / "a.dcm").read_bytes()}
    with ContainerClient.from_connection_string(
        azurite.connection_string, container_of(dest)
    ) as cc:
        cc.delete_container()


def test_encrypt_without_kek_file_exits_2(azurite: Any, container: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    proc = pyengine(*copy_args(azurite, tmp_path, src, container, "--encrypt"))
    assert_one_line_error(proc, 2, "--encrypt", "--kek-file")
    assert blobs_of(azurite, container) == {}


@pytest.mark.parametrize("key_bytes", [0, 16, 33])
def test_kek_file_of_the_wrong_size_exits_2(
    azurite: Any, container: str, tmp_path: Path, key_bytes: int
) -> None:
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(key_bytes))
    proc = pyengine(
        *copy_args(azurite, tmp_path, src, container, "--encrypt", "--kek-file", str(kek_file))
    )
    assert_one_line_error(proc, 2, str(kek_file), "32")
    assert blobs_of(azurite, container) == {}


@pytest.mark.parametrize(
    ("block_mib", "encrypt", "says"),
    [(3, False, "power of two"), (2, True, "at least 4 MiB with --encrypt")],
)
def test_a_block_size_the_core_cannot_read_exits_2_before_any_file(
    azurite: Any, container: str, tmp_path: Path, block_mib: int, encrypt: bool, says: str
) -> None:
    """Not one "unexpected error" per multi-block file: the job does not start."""
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1, "big.bin": 9 << 20})
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    crypt = ("--encrypt", "--kek-file", str(kek_file)) if encrypt else ()
    proc = pyengine(
        *copy_args(azurite, tmp_path, src, container, "--block-size", str(block_mib), *crypt)
    )
    assert_one_line_error(proc, 2, "--block-size", says)
    assert blobs_of(azurite, container) == {}


def test_usage_error_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = pyengine("copy", str(tmp_path))  # no DEST
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "DEST" in lines[0] or "dest" in lines[0]
