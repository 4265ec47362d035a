"""`pyengine bench delta`'s parts against a real nginx sink: the listing it serves page by page,
and a re-run of an unchanged tree that the listing says is there (skipped only without nginx)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

import pyengine
from pyengine import CopyOptions
from pyengine.bench import delta as bench_delta
from pyengine.bench.delta import listing_pages, write_tree
from pyengine.bench.sink import DiscardSink
from pyengine.targets.azure_blob import resolve_credential
from pyengine.targets.open import destination, open_target

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
    reason="nginx is not installed (`make bench` installs it)",
)


def test_sink_serves_a_listing_page_per_marker_in_scan_order(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bench_delta, "PAGE_BLOBS", 40)
    write_tree(tmp_path / "t", 250)

    async def listed() -> list[str]:
        async with DiscardSink() as sink:
            assert sink.serve_listing(listing_pages(tmp_path / "t")) == 7
            dest = destination(sink.url)
            opts = CopyOptions(connection_string=sink.connection_string)
            cred = resolve_credential(dest, opts.connection_string)
            async with open_target(dest, cred, opts) as store:
                return [b.name async for b in store.list_blobs("", metadata=True)]

    names = asyncio.run(listed())
    assert len(names) == 250 and names == sorted(names, key=str.encode)


def test_rerun_against_the_sink_listing_skips_every_file_with_no_head(tmp_path: Path):
    write_tree(tmp_path / "t", 300)

    async def rerun():
        async with DiscardSink() as sink:
            sink.serve_listing(listing_pages(tmp_path / "t"))
            sink.reset_counts()
            opts = CopyOptions(
                connection_string=sink.connection_string,
                journal_path=str(tmp_path / "j.db"),
            )
            report = await pyengine.copy(tmp_path / "t", sink.url, opts)
            return report, await sink.acounted()

    report, count = asyncio.run(rerun())
    assert report.files_skipped == 300 and report.files_copied == 0
    # container check, "is the prefix empty", one listing page: no HEAD, no PUT
    assert count.requests == 3
