"""No (content key, nonce) pair ever covers two plaintexts, even when a resumed encrypted file
changed without its attributes showing it (an NFS client with stale attributes). Every Put Block
payload of both runs is recorded and decrypted region by region; the blob is checked with the
official SDK."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import pyengine
from pyengine import CopyOptions
from pyengine.crypto import LocalKeyWrapper, content_key_from_metadata
from pyengine.engine.plan import parse_block_id
from pyengine.targets.azure_blob import BlobStore

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
REGION = 4 * MiB
STORED_REGION = 12 + REGION + 16


def test_changed_bytes_of_a_resumed_encrypted_file_never_reuse_a_key_nonce_pair(
    tmp_path: Path, azurite, container: str, sdk_blob, monkeypatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "series.dcm"
    old = os.urandom(3 * REGION)
    path.write_bytes(old)
    kek_bytes = os.urandom(32)
    kek = LocalKeyWrapper(kek_bytes)
    journal = tmp_path / "j.sqlite"
    opts = CopyOptions(
        journal_path=str(journal),
        connection_string=azurite.connection_string,
        encrypt=True,
        kek=kek,
        block_bytes=REGION,
        threads=2,
        max_concurrency=1,
    )
    sent: list[tuple[str, bytes]] = []  # (block id, payload) of every acknowledged Put Block
    real_put_block = BlobStore.put_block

    async def recording_put_block(self, name, block_id, data, **kw):
        _, index = parse_block_id(block_id) or ("", -1)
        if index == 2 and state["first_run"]:
            await asyncio.Event().wait()  # the last block is never answered: a crash comes first
        result = await real_put_block(self, name, block_id, data, **kw)
        sent.append((block_id, bytes(data)))
        return result

    state = {"first_run": True}
    monkeypatch.setattr(BlobStore, "put_block", recording_put_block)

    def acked_rows() -> int:
        try:
            with sqlite3.connect(journal) as db:
                return db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    async def first_run() -> None:
        # a crash once two acknowledged blocks are journaled: the job stays unfinished
        main = asyncio.ensure_future(pyengine.copy(src, container, opts))
        deadline = asyncio.get_running_loop().time() + 60
        while acked_rows() < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        main.cancel()
        with pytest.raises(asyncio.CancelledError):
            await main
        state["first_run"] = False

    asyncio.run(first_run())
    db = sqlite3.connect(journal)
    (encryptiondata,) = db.execute("SELECT encryptiondata FROM files").fetchone()
    acked = db.execute("SELECT count(*) FROM blocks").fetchone()[0]
    assert acked >= 1, "the first run must leave acknowledged blocks to resume"
    first_key = content_key_from_metadata(encryptiondata, kek)
    assert first_key is not None

    # Block 0 changes, same size; the archiver restores mtime, and the client's attributes are
    # stale: the journal's ctime is what this run will see (simulated by writing it there).
    new = os.urandom(REGION) + old[REGION:]
    st = path.stat()
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    db.execute("UPDATE files SET ctime_ns = ?", (path.stat().st_ctime_ns,))
    db.commit()
    db.close()

    report = asyncio.run(pyengine.copy(src, container, opts))
    assert report.ok and report.files_copied == 1

    with sdk_blob(container, "series.dcm", kek_bytes) as bc:
        assert bc.download_blob().readall() == new
        final_key = content_key_from_metadata(
            bc.get_blob_properties().metadata["encryptiondata"], kek
        )
    assert final_key is not None and final_key != first_key

    # every payload decrypts under its version's key; no (key, nonce) covers two plaintexts
    keys: dict[str, bytes] = {}
    for block_id, _ in sent:
        upload_id, _ = parse_block_id(block_id) or ("", 0)
        keys.setdefault(upload_id, first_key if len(keys) == 0 else final_key)
    assert len(keys) == 2, "the changed file must restart under a new upload id"
    seen: dict[tuple[bytes, bytes], set[bytes]] = defaultdict(set)
    for block_id, payload in sent:
        upload_id, _ = parse_block_id(block_id) or ("", 0)
        key = keys[upload_id]
        for at in range(0, len(payload), STORED_REGION):
            region = payload[at : at + STORED_REGION]
            nonce, body = region[:12], region[12:]
            plain = AESGCM(key).decrypt(nonce, body, None)
            seen[(key, nonce)].add(hashlib.sha256(plain).digest())
    assert all(len(plains) == 1 for plains in seen.values())
