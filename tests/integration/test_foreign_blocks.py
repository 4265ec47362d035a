"""Uncommitted blocks left on a blob by another tool (issue 16 item 5).

AzCopy stages 48-character block IDs, pyengine 52; the service (and Azurite, checked here with a
real staging through the SDK) refuses a Put Block whose ID length differs from the blocks already
staged: 400 InvalidBlobOrBlock on every block, forever. The engine discards the foreign blocks
without changing what readers of the blob see, starts the file over, says so once, and never
loops. Outcomes are read back with the official SDK.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobBlock, ContainerClient, ContentSettings

import pyengine
from pyengine import CopyOptions, Event
from pyengine.engine.send import FOREIGN_AGAIN_REASON
from pyengine.errors import DestinationError
from pyengine.options import MiB, RetryPolicy
from pyengine.targets.auth import SharedKeyCredential, parse_destination
from pyengine.targets.azure_blob import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME, BlobStore

pytestmark = pytest.mark.integration

#: an AzCopy-style block ID: base64 of 36 bytes, 48 characters
AZCOPY_ID = base64.b64encode(b"azcopy-" + b"0" * 29).decode()
#: a pyengine-length block ID (52 characters) that is not ours
OTHER_52_ID = base64.b64encode(b"q" * 39).decode()


def container_client(azurite: Any, container_url: str) -> ContainerClient:
    name = container_url.rstrip("/").rsplit("/", 1)[1]
    return ContainerClient.from_connection_string(azurite.connection_string, name)


def options(azurite: Any, tmp_path: Path) -> CopyOptions:
    # 1 MiB blocks: big.dcm goes up as three Put Blocks and a Put Block List
    return CopyOptions(
        threads=2,
        memory_cap_bytes=32 * MiB,
        block_bytes=1 * MiB,
        single_put_max_bytes=1 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
    )


def tree(root: Path) -> dict[str, bytes]:
    files = {
        "big.dcm": bytes(range(251)) * (2 * MiB // 251 + 5000),  # ~3.2 MiB: 4 blocks
        "small.dcm": b"s" * 5000,
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return files


def test_azurite_refuses_a_put_block_beside_foreign_staged_blocks(azurite, container) -> None:
    # the premise of everything below, on the real emulator
    with container_client(azurite, container) as cc:
        blob = cc.get_blob_client("x")
        blob.stage_block(AZCOPY_ID, b"foreign")
        with pytest.raises(HttpResponseError) as err:
            blob.stage_block(OTHER_52_ID, b"ours")
        assert (err.value.status_code, err.value.error_code) == (400, "InvalidBlobOrBlock")


def test_copy_discards_foreign_blocks_starts_the_file_over_and_says_so_once(
    azurite, container, tmp_path, caplog
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = tree(src)
    with container_client(azurite, container) as cc:
        cc.get_blob_client("big.dcm").stage_block(AZCOPY_ID, b"left by an AzCopy that died")
    events: list[Event] = []
    with caplog.at_level(logging.WARNING, logger="pyengine"):
        report = asyncio.run(
            pyengine.copy(src, container, options(azurite, tmp_path), on_event=events.append)
        )
    assert report.failures == [] and report.files_copied == 2
    assert report.foreign_blocks_discarded == 1
    said = [e for e in events if e.kind == "foreign_blocks_discarded"]
    assert [(e.path, e.blob) for e in said] == [("big.dcm", "big.dcm")]
    warnings = [r.getMessage() for r in caplog.records if "another tool" in r.getMessage()]
    assert len(warnings) == 1 and "big.dcm" in warnings[0]
    with container_client(azurite, container) as cc:
        blob = cc.get_blob_client("big.dcm")
        assert blob.download_blob().readall() == files["big.dcm"]
        committed, uncommitted = blob.get_block_list("all")
        assert uncommitted == [] and len(committed) == 4
        # ours only (the SDK shows IDs decoded): "<upload id>-<index>", blocks 0..3 in order
        assert [b.id.rsplit("-", 1)[1] for b in committed] == [f"{i:06d}" for i in range(4)]


def test_foreign_blocks_staged_again_after_discarding_fail_the_file_without_a_loop(
    azurite, container, tmp_path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = tree(src)
    cc = container_client(azurite, container)
    cc.get_blob_client("big.dcm").stage_block(AZCOPY_ID, b"left by an AzCopy that died")
    events: list[Event] = []

    def other_tool_still_writing(event: Event) -> None:
        events.append(event)
        if event.kind == "foreign_blocks_discarded":  # the other tool stages again at once
            cc.get_blob_client("big.dcm").stage_block(AZCOPY_ID, b"and again")

    with cc:
        report = asyncio.run(
            pyengine.copy(src, container, options(azurite, tmp_path), other_tool_still_writing)
        )
        assert report.failures == [("big.dcm", FOREIGN_AGAIN_REASON)]
        assert report.foreign_blocks_discarded == 1  # one discard, then the file fails
        assert report.files_copied == 1  # the rest of the job goes on
        assert cc.get_blob_client("small.dcm").download_blob().readall() == files["small.dcm"]
        assert not cc.get_blob_client("big.dcm").exists()
    assert sum(e.kind == "foreign_blocks_discarded" for e in events) == 1


def _store(azurite: Any, container: str) -> BlobStore:
    return BlobStore(
        parse_destination(container),
        SharedKeyCredential(DEV_ACCOUNT_NAME, DEV_ACCOUNT_KEY),
        retry=RetryPolicy(),
    )


async def _discard(azurite: Any, container: str, name: str) -> None:
    async with _store(azurite, container) as store:
        await store.discard_uncommitted(name)


def test_discarding_keeps_a_committed_blob_content_metadata_and_headers(azurite, container) -> None:
    with container_client(azurite, container) as cc:
        blob = cc.get_blob_client("study/a.dcm")
        ids = [base64.b64encode(f"azcopy-{i:029d}".encode()).decode() for i in range(2)]
        blob.stage_block(ids[0], b"first part ")
        blob.stage_block(ids[1], b"second part")
        blob.commit_block_list(
            [BlobBlock(i) for i in ids],
            metadata={"origin": "azcopy"},
            content_settings=ContentSettings(
                content_type="application/dicom", cache_control="no-cache"
            ),
        )
        # an interrupted overwrite that even reuses the ID of a committed block: the re-commit
        # must keep the committed bytes, not the staged ones
        assert ids[0] == AZCOPY_ID
        blob.stage_block(AZCOPY_ID, b"an interrupted overwrite")
        asyncio.run(_discard(azurite, container, "study/a.dcm"))
        committed, uncommitted = blob.get_block_list("all")
        assert uncommitted == [] and [b.id for b in committed] == ids
        props = blob.get_blob_properties()
        assert blob.download_blob().readall() == b"first part second part"
        assert props.metadata == {"origin": "azcopy"}
        assert props.content_settings.content_type == "application/dicom"
        assert props.content_settings.cache_control == "no-cache"
        blob.stage_block(OTHER_52_ID, b"now accepted")  # no foreign block left in the way


def test_discarding_on_a_name_without_a_committed_blob_leaves_no_blob(azurite, container) -> None:
    with container_client(azurite, container) as cc:
        blob = cc.get_blob_client("b.dcm")
        blob.stage_block(AZCOPY_ID, b"foreign")
        asyncio.run(_discard(azurite, container, "b.dcm"))
        assert not blob.exists()  # no empty blob left behind for a reader to mistake
        blob.stage_block(OTHER_52_ID, b"now accepted")


def test_discarding_refuses_to_truncate_a_blob_made_by_one_put_blob(azurite, container) -> None:
    with container_client(azurite, container) as cc:
        blob = cc.get_blob_client("c.dcm")
        blob.upload_blob(b"whole blob, no block list")
        blob.stage_block(AZCOPY_ID, b"foreign")
        with pytest.raises(DestinationError, match="delete the blob"):
            asyncio.run(_discard(azurite, container, "c.dcm"))
        assert blob.download_blob().readall() == b"whole blob, no block list"


def test_cli_summary_says_foreign_blocks_were_discarded(azurite, container, tmp_path) -> None:
    from cli_harness import copy_args
    from cli_harness import pyengine as run_cli

    src = tmp_path / "src"
    src.mkdir()
    # over the 8 MiB single-Put threshold: sent as Put Blocks, which the foreign blocks refuse
    (src / "big.dcm").write_bytes(bytes(range(251)) * (9 * MiB // 251))
    with container_client(azurite, container) as cc:
        cc.get_blob_client("big.dcm").stage_block(AZCOPY_ID, b"left by an AzCopy that died")
    proc = run_cli(*copy_args(azurite, tmp_path, src, container, "--block-size", "1"))
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "uncommitted blocks" in line]
    assert said == [
        "1 files had another tool's uncommitted blocks on their blob: discarded, and the file "
        "sent again from its start"
    ], proc.stderr
