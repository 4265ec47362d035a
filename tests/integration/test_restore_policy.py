"""`pyengine restore --policy FILE` against Azurite: a two-tenant policy copy (each tenant's files
encrypted under its own KEK) is restored with each blob's key taken from the tenant whose
destination covers it; keys given to the wrong tenants fail those files with one line each."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyengine
from pyengine import CopyOptions, RestoreOptions
from pyengine.options import MiB, RetryPolicy
from pyengine.policy import load_policy

pytestmark = pytest.mark.integration

TREE = {"a/one.bin": 3000, "a/deep/two.bin": 4 * MiB + 1, "b/three.bin": 1, "b/four.bin": 70_000}


def _policy(tmp_path: Path, container: str, keys: dict[str, str], name: str) -> Path:
    """Tenant ta holds a/** under prefix ta/, tenant tb b/** under tb/; ``keys`` names the
    key file of each."""
    text = "".join(
        f'[tenants.{t}]\ndest = "{container}/{t}"\nkek_file = "keys/{keys[t]}"\n'
        f'paths = ["{t[1]}/**"]\n\n'
        for t in ("ta", "tb")
    )
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def policy_copy(azurite: Any, container: str, tmp_path: Path) -> dict[str, Any]:
    src = tmp_path / "src"
    files = {}
    for seed, (rel, size_bytes) in enumerate(sorted(TREE.items())):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(bytes([seed]) * 7 + os.urandom(size_bytes)[7:])
        files[rel] = (src / rel).read_bytes()
    (tmp_path / "keys").mkdir()
    for t in ("ta", "tb"):
        (tmp_path / "keys" / f"{t}.kek").write_bytes(os.urandom(32))
    policy = _policy(tmp_path, container, {"ta": "ta.kek", "tb": "tb.kek"}, "policy.toml")
    opts = CopyOptions(
        threads=2,
        memory_cap_bytes=64 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "copy.sqlite"),
    )
    report = asyncio.run(pyengine.copy(src, options=opts, policy=load_policy(policy)))
    assert report.ok and report.files_copied == len(TREE), report.failures
    return {"files": files, "policy": policy}


def _restore(azurite: Any, tmp_path: Path, url: str, out: Path, policy: Path):
    opts = RestoreOptions(
        threads=2,
        memory_cap_bytes=64 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "restore.sqlite"),
        retry=RetryPolicy(max_elapsed_s=2.0),
        policy=load_policy(policy),
    )
    return asyncio.run(pyengine.restore(url, out, opts))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine", *args], capture_output=True, text=True, timeout=120
    )


def test_restore_policy_of_each_tenants_url_decrypts_all_its_files(
    azurite, container, tmp_path, policy_copy
):
    files = policy_copy["files"]
    for t in ("ta", "tb"):
        out = tmp_path / f"out-{t}"
        proc = _cli(
            "restore", f"{container}/{t}/", str(out), "--policy", str(policy_copy["policy"]),
            "--connection-string", azurite.connection_string,
            "--journal", str(tmp_path / "restore.sqlite"),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        mine = {rel: data for rel, data in files.items() if rel.startswith(t[1] + "/")}
        got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert got == mine


def test_restore_policy_of_the_whole_container_takes_each_blobs_key_from_its_tenant(
    azurite, container, tmp_path, policy_copy
):
    out = tmp_path / "out"
    report = _restore(azurite, tmp_path, container, out, policy_copy["policy"])
    assert report.ok and report.files_copied == len(TREE), report.failures
    for rel, data in policy_copy["files"].items():
        assert (out / f"t{rel[0]}" / rel).read_bytes() == data


def test_restore_policy_with_the_tenants_keys_swapped_fails_each_file_cleanly(
    azurite, container, tmp_path, policy_copy
):
    swapped = _policy(tmp_path, container, {"ta": "tb.kek", "tb": "ta.kek"}, "swapped.toml")
    out = tmp_path / "out"
    report = _restore(azurite, tmp_path, container, out, swapped)
    assert report.files_failed == len(TREE) and report.files_copied == 0
    for shown, why in report.failures:
        tenant = "ta" if shown.startswith("ta/") else "tb"
        assert why == f"tenant {tenant}'s key-encryption key cannot unwrap this blob's content key"
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing at a final path, no part
    proc = _cli(
        "restore", f"{container}/ta/", str(tmp_path / "out-cli"), "--policy", str(swapped),
        "--connection-string", azurite.connection_string,
        "--journal", str(tmp_path / "restore.sqlite"),
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("cannot unwrap" in line for line in errors)
    assert "Traceback" not in proc.stderr


def test_restore_refuses_policy_with_kek_file(azurite, container, tmp_path, policy_copy):
    proc = _cli(
        "restore", container, str(tmp_path / "out"), "--policy", str(policy_copy["policy"]),
        "--kek-file", str(tmp_path / "keys" / "ta.kek"),
        "--connection-string", azurite.connection_string,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "error: --kek-file: not with --policy" in proc.stderr
