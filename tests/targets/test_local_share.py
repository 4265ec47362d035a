"""ShareTarget's block staging on a temporary directory: offsets when the last block comes
first, Get Block List after a sidecar outran its data, and the CRC64 combine."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pyengine import _core
from pyengine.engine.plan import block_id, new_upload_id
from pyengine.targets.local_share import ShareTarget
from pyengine.targets.open import share_destination
from pyengine.targets.share_state import crc64_combine, crc64_of_blocks

KiB = 1024


def _target(tmp_path: Path) -> ShareTarget:
    (tmp_path / "acct_BlockBlob" / "cont").mkdir(parents=True, exist_ok=True)
    dest = share_destination(str(tmp_path / "acct_BlockBlob" / "cont"))
    return ShareTarget(dest, state_path=tmp_path / "state.sqlite")


def _blocks(data: bytes, block_bytes: int) -> list[bytes]:
    return [data[i : i + block_bytes] for i in range(0, len(data), block_bytes)]


def test_blocks_staged_last_first_land_at_their_offsets(tmp_path: Path) -> None:
    data = os.urandom(3 * 64 * KiB + 100)
    blocks = _blocks(data, 64 * KiB)
    uid = new_upload_id()

    async def go() -> str:
        async with _target(tmp_path) as t:
            for i in (3, 1, 2, 0):  # the short last block first: its offset is not known yet
                await t.put_block(
                    "a/b.dcm", block_id(uid, i), blocks[i], crc64=_core.crc64(blocks[i])
                )
            ids = [block_id(uid, i) for i in range(4)]
            return await t.put_block_list("a/b.dcm", ids, metadata={"pyenginemtimens": "5"})

    etag = asyncio.run(go())
    out = tmp_path / "acct_BlockBlob" / "cont" / "a" / "b.dcm"
    assert out.read_bytes() == data
    assert out.stat().st_mtime_ns == 5
    assert etag == f"crc64:{_core.crc64(data):016x}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.dcm"]


def test_get_block_list_leaves_out_a_staged_block_whose_bytes_never_reached_the_file(
    tmp_path: Path,
) -> None:
    data = os.urandom(4 * 64 * KiB)
    blocks = _blocks(data, 64 * KiB)
    uid = new_upload_id()

    async def stage() -> None:
        async with _target(tmp_path) as t:
            for i in range(3):
                await t.put_block(
                    "f.dcm", block_id(uid, i), blocks[i], crc64=_core.crc64(blocks[i])
                )

    asyncio.run(stage())
    (part,) = (tmp_path / "acct_BlockBlob" / "cont").glob(".pyengine-*.part")
    with open(part, "r+b") as f:  # as after a power loss: block 1's line survived, its data not
        f.seek(64 * KiB)
        f.write(b"\0" * 64 * KiB)

    async def listed() -> list[tuple[str, int]]:
        async with _target(tmp_path) as t:
            return await t.get_block_list("f.dcm")

    assert sorted(listed_ids := asyncio.run(listed())) == sorted(
        [(block_id(uid, 0), 64 * KiB), (block_id(uid, 2), 64 * KiB)]
    )
    assert block_id(uid, 1) not in dict(listed_ids)


def test_crc64_combined_from_blocks_equals_the_whole_file_crc64() -> None:
    data = os.urandom(5 * 1000 + 17)
    parts = [data[:0], data[:1000], data[1000:1001], data[1001:]]
    crc = 0
    for p in parts:
        crc = crc64_combine(crc, _core.crc64(p), len(p))
    assert crc == _core.crc64(data)
    blocks = _blocks(data, 1000)
    assert crc64_of_blocks([(len(b), _core.crc64(b)) for b in blocks]) == _core.crc64(data)
