"""Metadata names (issue 16 item 1): pyengine writes letter-and-digit names only (proxies drop
header names holding ``_``), and blobs written under the old ``pyengine_*`` names are still read:
copy's up-to-date check skips them, verify passes them, rekey moves them onto the new names.
Everything is written and read back with the official SDK against the real Azurite."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper
from pyengine.engine import metadata_names as mn
from pyengine.engine.rekey import rekey
from pyengine.options import MiB
from pyengine.state.verify import verify

pytestmark = pytest.mark.integration

KiB = 1024
LETTERS_AND_DIGITS = re.compile(r"[A-Za-z0-9]+")
#: a single-Put file, a multi-block one (1 MiB blocks over 1 MiB, below) and an empty one
SIZES = {"a/one.dcm": 3 * KiB, "a/big.dcm": 5 * MiB // 2, "empty.bin": 0}


def make_tree(root: Path) -> None:
    for i, (rel, size_bytes) in enumerate(sorted(SIZES.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes((j * 7 + i) % 251 for j in range(size_bytes)))


def copy(src: Path, dest: str, azurite: Any, journal: Path, **kw: Any) -> pyengine.CopyReport:
    opts = CopyOptions(
        threads=2,
        memory_cap_bytes=32 * MiB,
        # a file over 1 MiB takes the block path; encrypted blocks are whole 4 MiB regions
        block_bytes=4 * MiB if kw.get("encrypt") else 1 * MiB,
        single_put_max_bytes=1 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(journal),
        **kw,
    )
    return asyncio.run(pyengine.copy(src, dest, opts))


def client(azurite: Any, container: str) -> ContainerClient:
    return ContainerClient.from_connection_string(
        azurite.connection_string, container.rstrip("/").rsplit("/", 1)[1]
    )


def to_old_names(cc: ContainerClient) -> dict[str, str]:
    """Rewrite every blob's metadata under the names versions before issue 16 wrote (what an
    old pyengine left behind); returns the ETags after the rewrite."""
    etags = {}
    for blob in cc.list_blobs(include=["metadata"]):
        metadata = {mn.OLD_NAMES.get(k, k): v for k, v in blob.metadata.items()}
        assert any("_" in k for k in metadata)
        etags[blob.name] = (
            cc.get_blob_client(blob.name).set_blob_metadata(metadata)["etag"].strip('"')
        )
    return etags


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_copy_writes_only_letter_and_digit_metadata_names(
    tmp_path: Path, azurite: Any, container: str, encrypt: bool
) -> None:
    make_tree(tmp_path / "src")
    kek = LocalKeyWrapper(os.urandom(32)) if encrypt else None
    report = copy(
        tmp_path / "src", container, azurite, tmp_path / "j.sqlite", encrypt=encrypt, kek=kek
    )
    assert report.files_copied == len(SIZES), report
    with client(azurite, container) as cc:
        for name in SIZES:
            metadata = cc.get_blob_client(name).get_blob_properties().metadata
            bad = [k for k in metadata if not LETTERS_AND_DIGITS.fullmatch(k)]
            assert not bad, (name, bad)
            digest = mn.KEYED_BLAKE3 if encrypt else mn.BLAKE3
            want = {mn.SIZE, mn.MTIME_NS, mn.CTIME_NS, mn.UPLOAD_ID, mn.JOB_ID, digest}
            if encrypt:
                want.add(mn.ENCRYPTION_DATA)
            assert set(metadata) == want, name
            assert metadata[mn.SIZE] == str(SIZES[name])


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_blobs_under_the_old_names_are_up_to_date_for_copy_and_pass_verify(
    tmp_path: Path, azurite: Any, container: str, encrypt: bool
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    kek = LocalKeyWrapper(os.urandom(32)) if encrypt else None
    journal = tmp_path / "j.sqlite"
    first = copy(src, container, azurite, journal, encrypt=encrypt, kek=kek)
    assert first.files_copied == len(SIZES)
    with client(azurite, container) as cc:
        etags = to_old_names(cc)

        # a new job (a fresh journal): only the destination's metadata can say "up to date"
        again = copy(src, container, azurite, tmp_path / "j2.sqlite", encrypt=encrypt, kek=kek)
        assert (again.files_skipped, again.files_copied) == (len(SIZES), 0), again
        assert {b.name: b.etag for b in cc.list_blobs()} == etags  # nothing rewritten

        checked = asyncio.run(
            verify(
                first.job_id,
                journal_path=journal,
                kek=kek,
                connection_string=azurite.connection_string,
            )
        )
        assert checked.ok, checked.findings
        assert checked.files_ok == len(SIZES)
        assert checked.files_digest_unchecked == 0


def test_rekey_moves_blobs_under_the_old_names_onto_the_new_ones(
    tmp_path: Path, azurite: Any, container: str
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    old, new = LocalKeyWrapper(os.urandom(32)), LocalKeyWrapper(os.urandom(32))
    copy(src, container, azurite, tmp_path / "j.sqlite", encrypt=True, kek=old)
    with client(azurite, container) as cc:
        to_old_names(cc)
        report = asyncio.run(
            rekey(container, old, new, connection_string=azurite.connection_string)
        )
        assert report.blobs_rewrapped == len(SIZES), report.problems
        for name in SIZES:
            metadata = cc.get_blob_client(name).get_blob_properties().metadata
            assert all(LETTERS_AND_DIGITS.fullmatch(k) for k in metadata), metadata.keys()
            assert metadata[mn.SIZE] == str(SIZES[name])
