"""The `pyengine copy` contract, run as a real subprocess against the real Azurite.

Exit codes: 0 everything copied, 1 some files failed, 2 usage or configuration error (the job
cannot start). Every user error is one line ``error: <subject>: <reason>`` on stderr and never a
traceback; secrets (account key, SAS signature) appear nowhere: not on stdout or stderr, not in
the journal, not in the manifest.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import blake3
import pytest
from azure.storage.blob import (
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from pyengine.options import MiB

pytestmark = pytest.mark.integration

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


# ------------------------------------------------------------------------------------------
# successful copies


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
            assert metadata["pyengine_blake3"] == blake3.blake3(data).hexdigest(), rel
            assert metadata["pyengine_size"] == str(len(data)), rel
            assert metadata["pyengine_mtime_ns"] == str((src / rel).stat().st_mtime_ns), rel
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


# ------------------------------------------------------------------------------------------
# bad input: one line, the right exit code, the rest goes on


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


def test_wrong_account_key_exits_2_naming_authentication_without_the_key(
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
    assert_one_line_error(proc, 2, container, "authentication")
    for secret in (wrong_key, azurite.account_key):
        assert secret not in proc.stdout + proc.stderr
    assert blobs_of(azurite, container) == {}


def test_no_credential_at_all_exits_2_with_one_line_error(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    # no SAS, no connection string, no AZURE_STORAGE_KEY: azure-identity is the last resort
    # and finds nothing (limited to EnvironmentCredential, see pyengine())
    src = tmp_path / "src"
    make_tree(src, {"a.dcm": 1})
    proc = pyengine("copy", str(src), container, "--journal", str(tmp_path / "j.sqlite"))
    assert_one_line_error(proc, 2, container, "credential")


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


def test_usage_error_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = pyengine("copy", str(tmp_path))  # no DEST
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "DEST" in lines[0] or "dest" in lines[0]


# ------------------------------------------------------------------------------------------
# secrets


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
