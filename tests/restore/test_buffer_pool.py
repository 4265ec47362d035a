"""Restore's download buffers: a hard cap on bytes allocated, reuse by size, first come first
served."""

from __future__ import annotations

import asyncio

from pyengine.engine.restore.download import BufferPool, crc64_from_header

KiB = 1024


def test_pool_never_allocates_past_its_cap_and_reuses_buffers():
    async def main() -> tuple[int, int, list[int]]:
        pool = BufferPool(256 * KiB)
        order: list[int] = []
        ids: set[int] = set()

        async def use(i: int) -> None:
            async with pool.buffer(100 * KiB) as buf:  # 128 KiB class: two fit
                ids.add(id(buf.obj))
                order.append(i)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use(i) for i in range(6)))
        return pool.peak_bytes, len(ids), order

    peak, distinct, order = asyncio.run(main())
    assert peak == 256 * KiB
    assert distinct == 2  # six ranges, two buffers
    assert order == list(range(6))


def test_pool_drops_free_buffers_of_another_size_to_make_room():
    async def main() -> int:
        pool = BufferPool(256 * KiB)
        async with pool.buffer(200 * KiB):
            pass
        async with pool.buffer(250 * KiB) as buf:  # needs the room the free 256 KiB one holds
            return len(buf)

    assert asyncio.run(main()) == 256 * KiB


def test_a_range_larger_than_the_cap_still_runs_alone():
    async def main() -> int:
        pool = BufferPool(64 * KiB)
        async with pool.buffer(300 * KiB) as buf:
            return len(buf)

    assert asyncio.run(main()) >= 300 * KiB


def test_service_crc64_header_is_base64_of_8_little_endian_bytes():
    assert crc64_from_header("AQAAAAAAAAA=") == 1
    assert crc64_from_header(None) is None
    assert crc64_from_header("not base64!") is None
