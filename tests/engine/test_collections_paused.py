"""The collector tuning a job holds (engine/collections_paused.py): tuned while any job runs,
the embedding program's own settings back once the last one ends, whatever the order."""

from __future__ import annotations

import asyncio
import gc

import pytest

import pyengine
from pyengine import CopyOptions
from pyengine.engine.collections_paused import JOB_THRESHOLDS, fewer_collections


def test_thresholds_are_tuned_while_jobs_overlap_and_restored_after_the_last():
    old = gc.get_threshold()
    gc.set_threshold(123, 4, 5)
    try:
        first, second = fewer_collections(), fewer_collections()
        first.__enter__()
        assert gc.get_threshold() == JOB_THRESHOLDS and gc.get_freeze_count() > 0
        second.__enter__()
        first.__exit__(None, None, None)  # the first one out is not the last
        assert gc.get_threshold() == JOB_THRESHOLDS
        second.__exit__(None, None, None)
        assert gc.get_threshold() == (123, 4, 5) and gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*old)


def test_a_copy_runs_tuned_and_gives_the_settings_back_whether_it_ends_or_fails(
    tmp_path, azurite, container
):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x" * 100)
    before, during = gc.get_threshold(), []
    opts = CopyOptions(
        connection_string=azurite.connection_string, journal_path=str(tmp_path / "j.db")
    )
    report = asyncio.run(
        pyengine.copy(src, container, opts, on_event=lambda e: during.append(gc.get_threshold()))
    )
    assert report.files_copied == 1
    assert during and set(during) == {JOB_THRESHOLDS}
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    with pytest.raises(pyengine.ConfigError):  # no such source: the job fails to start
        asyncio.run(pyengine.copy(tmp_path / "missing", container, opts))
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
