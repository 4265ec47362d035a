"""The README's code runs as written (issue 16 item 5): the "Reading encrypted blobs" snippet is
extracted from README.md and executed against the real Azurite, on a blob pyengine encrypted, so
the documentation cannot rot."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

import pyengine
from pyengine.options import MiB

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block_of(section: str) -> str:
    """The first ```python block under the README heading ``## {section}``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match is not None, f"no python block under '## {section}'"
    return match.group(1)


def test_readme_snippet_decrypts_a_blob_pyengine_encrypted_and_a_plain_get_does_not(
    azurite, tmp_path, monkeypatch
) -> None:
    snippet = python_block_of("Reading encrypted blobs")
    # the names the snippet uses: container "archive", blob "site-a/1.2.840.1/CT0001.dcm"
    src = tmp_path / "src"
    (src / "1.2.840.1").mkdir(parents=True)
    dicom = os.urandom(5 * MiB + 123)  # two CSE v2 regions, several blocks
    (src / "1.2.840.1" / "CT0001.dcm").write_bytes(dicom)
    key = os.urandom(32)
    (tmp_path / "kek.bin").write_bytes(key)
    container = f"archive-{uuid.uuid4().hex[:8]}"  # a unique container, renamed in the snippet
    snippet = snippet.replace('"archive"', repr(container))
    assert repr(container) in snippet
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        svc.create_container(container)
        try:
            opts = pyengine.CopyOptions(
                encrypt=True,
                kek=pyengine.load_kek_file(str(tmp_path / "kek.bin")),
                block_bytes=4 * MiB,
                threads=2,
                connection_string=azurite.connection_string,
                journal_path=str(tmp_path / "j.sqlite"),
            )
            dest = f"{azurite.account_url}/{container}/site-a"
            report = asyncio.run(pyengine.copy(src, dest, opts))
            assert report.files_copied == 1 and report.failures == []

            monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
            monkeypatch.chdir(tmp_path)  # the snippet reads "kek.bin"
            namespace: dict[str, object] = {}
            exec(compile(snippet, str(README), "exec"), namespace)
            assert namespace["plaintext"] == dicom

            # what AzCopy or rclone get: a plain download, ciphertext without a warning
            raw = (
                svc.get_blob_client(container, "site-a/1.2.840.1/CT0001.dcm")
                .download_blob()
                .readall()
            )
            assert raw != dicom and len(raw) == len(dicom) + 2 * (12 + 16)
        finally:
            svc.delete_container(container)
