"""The scheduler's resume behaviour through the library API, against a real Azurite."""

from __future__ import annotations

import asyncio
import os

import pytest

import pyengine
from pyengine.crypto import LocalKeyWrapper

MiB = 1024 * 1024
pytestmark = pytest.mark.integration


async def interrupted_then_resumed(src, dest, options, stop_after_blocks, resume_options=None):
    """Runs a copy, cancels it after `stop_after_blocks` acknowledged blocks (the journal keeps
    them), then runs the copy again (with resume_options if given); returns the second report."""
    seen = 0
    main = None

    def on_event(ev):
        nonlocal seen
        if ev.kind == "progress":
            seen += 1
            if seen == stop_after_blocks:
                main.cancel()

    main = asyncio.ensure_future(pyengine.copy(src, dest, options, on_event=on_event))
    with pytest.raises(asyncio.CancelledError):
        await main
    return await pyengine.copy(src, dest, resume_options or options)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_resume_sends_only_blocks_not_acknowledged_before(
    tmp_path, azurite, container, sdk_blob, encrypt
):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(48 * MiB + 3)  # 13 blocks of 4 MiB
    (src / "slide.svs").write_bytes(data)
    key = os.urandom(32)
    options = pyengine.CopyOptions(
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "jobs.sqlite"),
        block_bytes=4 * MiB,
        threads=2,
        max_concurrency=2,
        memory_cap_bytes=16 * MiB,
        encrypt=encrypt,
        kek=LocalKeyWrapper(key) if encrypt else None,
    )
    report = asyncio.run(interrupted_then_resumed(str(src), container, options, 5))
    assert report.files_copied == 1 and report.files_failed == 0
    # at least the 5 acknowledged blocks came back from the journal + Get Block List
    assert report.blocks_resumed >= 5
    assert report.blocks_resumed + report.blocks_sent == 13
    blob = sdk_blob(container, "slide.svs", key if encrypt else None)
    assert blob.download_blob().readall() == data


def test_resume_with_another_kek_exits_2_and_the_same_kek_completes(
    tmp_path, azurite, container, sdk_blob
):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(24 * MiB)
    (src / "f.bin").write_bytes(data)
    first_key = os.urandom(32)
    first = pyengine.CopyOptions(
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "jobs.sqlite"),
        block_bytes=4 * MiB,
        max_concurrency=2,
        memory_cap_bytes=16 * MiB,
        encrypt=True,
        kek=LocalKeyWrapper(first_key),
    )
    second = pyengine.CopyOptions(**{**first.__dict__, "kek": LocalKeyWrapper(os.urandom(32))})
    # one job never mixes keys: a resume under another KEK is refused before anything is sent
    with pytest.raises(pyengine.ConfigError) as info:
        asyncio.run(interrupted_then_resumed(str(src), container, first, 3, second))
    assert info.value.subject == "--kek-file" and info.value.exit_code == 2
    report = asyncio.run(pyengine.copy(str(src), container, first))
    assert report.files_copied == 1 and report.blocks_resumed >= 1
    assert report.blocks_resumed + report.blocks_sent == 6
    blob = sdk_blob(container, "f.bin", first_key)
    assert blob.download_blob().readall() == data
