"""`pyengine bench download` on a tiny tree against a real nginx (skipped only without nginx):
each side's CPU seconds per GB are reported, ours split into its event loop and the rest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyengine.bench.download import FileServer, run_download
from pyengine.bench.sink import SINK_CPUS_ENV
from pyengine.options import MiB

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
    reason="nginx is not installed (`make bench` installs it)",
)


def test_bench_download_reports_cpu_seconds_per_gb_of_both_clients(tmp_path):
    args = SimpleNamespace(
        size_bytes=9 * MiB, small_files=3, encrypt=True, threads=2,
        memory_cap_bytes=64 * MiB, max_concurrency=8, workdir=str(tmp_path), server_workers=1,
    )  # fmt: skip
    results = run_download(args, lambda text: None)
    for run in results["runs"]:
        ours, sdk = run["ours"], run["sdk"]
        assert ours["total_bytes"] > 0 and ours["gbps"] > 0
        assert 0 < ours["loop_cpu_s"] <= ours["cpu_s"]
        assert ours["cpu_s_per_gb"] > 0 and sdk["cpu_s_per_gb"] > 0


def test_file_server_runs_on_the_cpus_the_sink_variable_names(tmp_path, monkeypatch):
    monkeypatch.setenv(SINK_CPUS_ENV, "0")
    with FileServer(tmp_path) as server:
        assert server._proc is not None
        status = Path(f"/proc/{server._proc.pid}/status").read_text()
        assert "Cpus_allowed_list:\t0\n" in status
