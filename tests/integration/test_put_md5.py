"""--put-md5 (issue 11 item 5): a block-list blob carries the Content-MD5 of its stored bytes, so
AzCopy --check-md5, rclone check and Storage Explorer can verify it; read back with the official
SDK from Azurite."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobClient

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper
from pyengine.options import MiB

pytestmark = pytest.mark.integration

SIZE = 9 * MiB + 77  # blocks of 4 MiB: three blocks, Put Block List


def copy(src: Path, dest: str, azurite: Any, tmp_path: Path, **kw: Any) -> pyengine.CopyReport:
    opts = CopyOptions(
        threads=3,
        memory_cap_bytes=16 * MiB,
        single_put_max_bytes=MiB,
        block_bytes=4 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
        **kw,
    )
    report = asyncio.run(pyengine.copy(src, dest, opts))
    assert report.failures == []
    return report


def raw_blob(azurite: Any, container: str, name: str) -> BlobClient:
    """The blob as stored (no decryption): what AzCopy and rclone hash."""
    return BlobClient.from_connection_string(
        azurite.connection_string, container.rsplit("/", 1)[1], name
    )


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_put_md5_stores_the_md5_of_the_stored_bytes(
    azurite, container, sdk_blob, tmp_path, encrypt
):
    (tmp_path / "src").mkdir()
    data = os.urandom(SIZE)
    (tmp_path / "src" / "big.bin").write_bytes(data)
    key = os.urandom(32)
    kek = LocalKeyWrapper(key) if encrypt else None
    copy(tmp_path / "src", container, azurite, tmp_path, put_md5=True, encrypt=encrypt, kek=kek)
    raw = raw_blob(azurite, container, "big.bin")
    stored = raw.download_blob().readall()
    md5 = raw.get_blob_properties().content_settings.content_md5
    assert md5 is not None and bytes(md5) == hashlib.md5(stored).digest()
    if encrypt:
        assert len(stored) == SIZE + 3 * 28  # ciphertext frames: the MD5 is not the plaintext's
        assert bytes(md5) != hashlib.md5(data).digest()
        assert sdk_blob(container, "big.bin", key).download_blob().readall() == data
    else:
        assert stored == data


def test_without_put_md5_a_block_list_blob_has_no_content_md5(azurite, container, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(SIZE))
    copy(tmp_path / "src", container, azurite, tmp_path)
    props = raw_blob(azurite, container, "big.bin").get_blob_properties()
    assert props.content_settings.content_md5 is None


def test_put_md5_on_a_single_put_blob_is_accepted_and_stored(azurite, container, tmp_path):
    (tmp_path / "src").mkdir()
    data = os.urandom(1000)
    (tmp_path / "src" / "small.bin").write_bytes(data)
    copy(tmp_path / "src", container, azurite, tmp_path, put_md5=True)
    props = raw_blob(azurite, container, "small.bin").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()
