"""An expired SAS (issue 16 item 5): the service answers only "403 AuthenticationFailed"; the
job says in one line when the SAS expired (its own se= field) and what to do, never its
signature. Against the real Azurite with SAS tokens the official SDK generated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

import pyengine
from pyengine.errors import AuthError
from pyengine.targets.auth import parse_destination

pytestmark = pytest.mark.integration


def sas_for(azurite: Any, container_url: str, expiry: datetime) -> str:
    dest = parse_destination(container_url)
    return generate_container_sas(
        dest.account_name,
        dest.container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
        start=expiry - timedelta(days=2),
        expiry=expiry,
    )


def expired_url(azurite: Any, container: str) -> tuple[str, str, str]:
    """(URL with a SAS that expired an hour ago, its signature, the expiry as shown)."""
    expiry = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sas = sas_for(azurite, container, expiry)
    sig = next(p for p in sas.split("&") if p.startswith("sig="))[4:]
    return f"{container}?{sas}", sig, expiry.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_copy_with_an_expired_sas_is_one_auth_error_naming_its_expiry(
    azurite, container, tmp_path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.dcm").write_bytes(b"a" * 1000)
    url, sig, shown = expired_url(azurite, container)
    opts = pyengine.CopyOptions(threads=1, journal_path=str(tmp_path / "j.sqlite"))
    with pytest.raises(AuthError) as info:
        asyncio.run(pyengine.copy(tmp_path / "src", url, opts))
    line = info.value.one_line()
    assert line.endswith(f": SAS token expired at {shown}; issue a new one"), line
    assert sig not in line and "sig=" not in line


def test_cli_with_an_expired_sas_prints_one_line_without_the_signature(
    azurite, container, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.dcm").write_bytes(b"a" * 1000)
    url, sig, shown = expired_url(azurite, container)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyengine.cli",
            "copy",
            str(tmp_path / "src"),
            url,
            "--journal",
            str(tmp_path / "j.sqlite"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # exit 3 for AuthError comes with the CLI's exit-code change (another branch): non-zero here
    assert proc.returncode != 0, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].endswith(f"SAS token expired at {shown}; issue a new one")
    assert sig not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_a_valid_sas_that_is_refused_is_not_called_expired(azurite, container, tmp_path) -> None:
    # a wrong signature on a SAS that has not expired: the generic message, not "expired"
    expiry = datetime.now(UTC) + timedelta(hours=1)
    sas = sas_for(azurite, container, expiry).replace("sig=", "sig=AAAA")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.dcm").write_bytes(b"a")
    opts = pyengine.CopyOptions(threads=1, journal_path=str(tmp_path / "j.sqlite"))
    with pytest.raises(AuthError, match="authentication failed") as info:
        asyncio.run(pyengine.copy(tmp_path / "src", f"{container}?{sas}", opts))
    assert "expired" not in str(info.value)
