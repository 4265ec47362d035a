"""Every file counted once, and the same everywhere: the run's summary, the progress bar,
`pyengine jobs show` and the audit manifest agree on a tree where some files fail at the scan (a
FIFO, a symlink loop) and one at planning (a name with a backslash)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli_harness import copy_args, json_lines, make_tree, pyengine

pytestmark = pytest.mark.integration


def _awkward_tree(src: Path) -> None:
    make_tree(src, {"a.dcm": 1000, "d/b.dcm": 2000, "back\\slash.dcm": 30})
    os.mkfifo(src / "fifo.dcm")
    (src / "d" / "loop").symlink_to("..")


def test_summary_jobs_show_and_manifest_count_scan_and_name_failures_once(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _awkward_tree(src)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container), "--json")
    assert proc.returncode == 1, proc.stderr
    (summary,) = [ev for ev in json_lines(proc.stdout) if ev["kind"] == "summary"]
    assert (summary["files_copied"], summary["files_failed"]) == (2, 3)

    shown = pyengine(
        "jobs", "show", summary["job_id"], "--journal", str(tmp_path / "journal.sqlite"), "--json"
    )
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["status"] == "failed"
    js = job["summary"]
    assert (js["files_copied"], js["files_failed"], js["files_pending"]) == (2, 3, 0)
    assert sorted(f["path"] for f in job["failures"]) == sorted(
        p for p, _ in (f.values() for f in summary["failures"])
    )

    last: dict[str, str] = {}
    for line in Path(summary["manifest_path"]).read_text().splitlines():
        entry = json.loads(line)
        last[entry["path"]] = entry["status"]
    assert Counter(last.values()) == {"copied": 2, "failed": 3}


def test_progress_bar_ends_with_each_file_counted_once(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _awkward_tree(src)
    proc = pyengine(*copy_args(azurite, tmp_path, src, container))
    assert proc.returncode == 1, proc.stderr
    counts = re.findall(r"(\d+)/(\d+) files", proc.stderr)
    assert counts and counts[-1] == ("5", "5"), proc.stderr
    flat = " ".join(proc.stderr.split())
    assert "copied 2 files" in flat and "failed 3," in flat
