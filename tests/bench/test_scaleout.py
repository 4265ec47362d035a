"""`python -m pyengine.bench.scaleout`: its modes (--workers-list) and a tiny run into the sink."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest

from pyengine.bench import scaleout


def test_workers_list_parses_counts_in_order_with_zero_in_process() -> None:
    assert scaleout.parse_workers_list("0,1,2,4,8,16") == [0, 1, 2, 4, 8, 16]
    assert [scaleout.mode_name(n) for n in (0, 1, 16)] == [
        "in-process",
        "--workers 1",
        "--workers 16",
    ]


@pytest.mark.parametrize("text", ["", "1,,2", "a", "1,-1", "2,2", "1.5"])
def test_workers_list_refuses_what_is_not_distinct_counts(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        scaleout.parse_workers_list(text)


@pytest.mark.skipif(
    shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
    reason="nginx is not installed (`make bench` installs it)",
)
def test_in_process_run_writes_its_tree_under_workdir_and_its_json_to_a_file(
    tmp_path, capsys
) -> None:
    # in process only: a LocalCluster's start would cost seconds
    argv = [
        "--small",
        "3",
        "--large",
        "0",
        "--repeats",
        "1",
        "--workers-list",
        "0",
        "--sink-workers",
        "3",
        "--encrypt",
        "--json",
    ]
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = tmp_path / "scale.json"
    rc = scaleout.main([*argv, "--workdir", str(workdir), "--json-out", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert list(result["modes"]) == ["in-process"]
    row = result["modes"]["in-process"]
    assert row["files_per_s"] > 0 and row["speedup"] == 1.0 and row["sink_cpu_s"] >= 0
    assert row["workers_cpu_s"] == 0  # no worker process in process
    assert result["sink_workers"] == 3 and result["workers1_overhead_pct"] is None
    assert result["encrypt"] is True
    assert list(workdir.iterdir()) == []  # its temp dir was there, and is gone
