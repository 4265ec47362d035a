"""Faults between pyengine and a real Azurite: throttling storms, resets, stalls, truncated and
lost answers, injected by the fault proxy (tests/faultproxy.py). Every job must finish with every
file copied, and the official SDK must read back (and decrypt) exactly the source bytes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, has_body, is_put_block_list

from pyengine import CopyOptions, copy
from pyengine.cli.main import _Presenter, main
from pyengine.crypto import LocalKeyWrapper
from pyengine.engine.report import CopyReport, Event
from pyengine.options import MiB, RetryPolicy

pytestmark = pytest.mark.integration

#: short waits so a storm of a few seconds is ridden out quickly; the policy under test is the
#: elapsed-time bound, which defaults to 15 minutes
FAST = RetryPolicy(base_delay_s=0.05, max_delay_s=0.5, stall_timeout_s=1.0)


def make_tree(root: Path, files: int, *, seed: int, big_every: int = 0) -> dict[str, bytes]:
    """``files`` files of 1-64 KiB in a few directories; every ``big_every``-th one of 5 MiB
    (several blocks). Returns name -> content."""
    rng = random.Random(seed)
    out: dict[str, bytes] = {}
    for i in range(files):
        rel = f"p{i % 4}/s{i % 7}/{i:04d}.dcm"
        size_bytes = 5 * MiB + 17 if big_every and i % big_every == 0 else rng.randint(1, 64) << 10
        data = rng.randbytes(size_bytes)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = data
    return out


def options(azurite: Any, tmp_path: Path, **kw: Any) -> CopyOptions:
    base: dict[str, Any] = {
        "connection_string": azurite.connection_string,
        "journal_path": str(tmp_path / "journal.db"),
        "threads": 2,
        "retry": FAST,
    }
    base.update(kw)
    return CopyOptions(**base)


def assert_all_copied(
    report: CopyReport, tree: dict[str, bytes], container: str, sdk_blob: Any, key: bytes | None
) -> None:
    assert (report.files_copied, report.files_failed, report.files_skipped) == (len(tree), 0, 0)
    assert report.bytes_copied == sum(len(d) for d in tree.values())
    assert report.failures == []
    for name, data in tree.items():
        assert sdk_blob(container, name, key).download_blob().readall() == data, name


def run_copy(src: Path, dest: str, opts: CopyOptions, events: list[Event] | None = None) -> Any:
    on_event = events.append if events is not None else None
    return asyncio.run(copy(src, dest, opts, on_event=on_event))


# ------------------------------------------------------------------------------------------
# Throttling storms


def test_a_503_storm_over_the_container_check_slows_the_job_instead_of_failing_it(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path, sdk_blob: Any
) -> None:
    tree = make_tree(tmp_path / "src", 30, seed=1)
    # 4 s of 503s from the first request: more than 8 tries of up to 0.5 s could wait out
    fault_proxy.storm(4.0, retry_after_ms=200)
    t0 = time.monotonic()
    report = run_copy(tmp_path / "src", fault_proxy.url(container), options(azurite, tmp_path))
    assert time.monotonic() - t0 >= 4.0
    assert fault_proxy.injected["storm"] >= 1
    assert report.retries >= 1
    assert report.throttled_s >= 0.2
    assert_all_copied(report, tree, container, sdk_blob, None)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_a_storm_mid_job_cuts_concurrency_and_every_file_still_arrives(
    azurite: Any,
    container: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    sdk_blob: Any,
    encrypt: bool,
) -> None:
    tree = make_tree(tmp_path / "src", 60, seed=2)
    key = os.urandom(32) if encrypt else None
    kw: dict[str, Any] = {"encrypt": True, "kek": LocalKeyWrapper(key)} if key else {}
    # 30 requests/s stretches the job to ~2 s, so the storm (0.5 s in, 2 s long) lands inside it
    opts = options(azurite, tmp_path, max_requests_per_s=30.0, max_concurrency=16, **kw)
    fault_proxy.storm(2.0, start_in_s=0.5, retry_after_ms=300)
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts)
    assert fault_proxy.injected["storm"] >= 1
    assert report.retries >= fault_proxy.injected["storm"] > 0
    assert report.throttled_s > 0
    # throttled: the job sent less at once, then grew back
    assert report.concurrency_min < report.concurrency_max == 16
    assert_all_copied(report, tree, container, sdk_blob, key)


def test_a_storm_longer_than_the_retry_window_fails_files_with_one_line(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src", 5, seed=3)
    opts = options(
        azurite, tmp_path, retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_elapsed_s=1.0)
    )
    # the container check and the listing pass; every Put Blob meets the storm
    fault_proxy.fault("error", every=1, match=has_body)
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts)
    assert report.files_failed == 5
    for _, reason in report.failures:
        assert "\n" not in reason
        assert "put blob: HTTP 500 InternalError" in reason
        assert "tries in" in reason


# ------------------------------------------------------------------------------------------
# Transport faults


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_resets_truncations_stalls_and_errors_are_retried_until_every_file_arrives(
    azurite: Any,
    container: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    sdk_blob: Any,
    encrypt: bool,
) -> None:
    tree = make_tree(tmp_path / "src", 40, seed=4, big_every=20)
    key = os.urandom(32) if encrypt else None
    kw: dict[str, Any] = {"encrypt": True, "kek": LocalKeyWrapper(key)} if key else {}
    opts = options(
        azurite, tmp_path, single_put_max_bytes=1 * MiB, block_bytes=4 * MiB if key else MiB, **kw
    )
    fault_proxy.fault("mixed", rate=0.15, stall_s=5.0)
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts)
    injected = sum(fault_proxy.injected.values())
    assert injected > 3, fault_proxy.injected
    # aiohttp itself resends an idempotent request once when a reused connection is reset, so
    # a reset may not reach the pacer; every other fault costs one retry
    assert report.retries >= injected - fault_proxy.injected["reset"]
    assert report.stalls >= fault_proxy.injected["stall"]
    assert_all_copied(report, tree, container, sdk_blob, key)


def test_a_stalled_response_is_aborted_and_retried_within_the_stall_timeout(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path, sdk_blob: Any
) -> None:
    tree = make_tree(tmp_path / "src", 3, seed=5)
    # one Put Blob gets no answer for 20 s; the stall watch gives up on it after 1 s
    fault_proxy.fault("stall", every=1, times=1, match=has_body, stall_s=20.0)
    t0 = time.monotonic()
    report = run_copy(tmp_path / "src", fault_proxy.url(container), options(azurite, tmp_path))
    assert time.monotonic() - t0 < 8.0
    assert fault_proxy.injected["stall"] == 1
    assert report.stalls == 1 and report.retries >= 1
    assert_all_copied(report, tree, container, sdk_blob, None)


def test_a_lost_put_block_list_answer_is_retried_and_the_blob_is_committed_whole(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path, sdk_blob: Any
) -> None:
    tree = make_tree(tmp_path / "src", 3, seed=6, big_every=1)
    # Azurite commits every list, the client sees a 500 for the first three
    fault_proxy.fault("commit_lost", every=1, times=3, match=is_put_block_list)
    opts = options(azurite, tmp_path, single_put_max_bytes=MiB, block_bytes=MiB)
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts)
    assert fault_proxy.injected["commit_lost"] == 3
    assert report.retries >= 3
    assert_all_copied(report, tree, container, sdk_blob, None)
    for name, data in tree.items():
        committed = sdk_blob(container, name).get_block_list("committed")[0]
        assert len(committed) == -(-len(data) // MiB)


# ------------------------------------------------------------------------------------------
# Caps


def test_bandwidth_cap_holds_within_ten_percent_over_eight_seconds(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.bin").write_bytes(os.urandom(MiB))
    cap_mbps = 8.0  # 1 MB/s: 8 MiB in ~8.4 s
    opts = options(azurite, tmp_path, cap_mbps=cap_mbps)
    report = run_copy(src, fault_proxy.url(container), opts)
    assert report.files_copied == 8
    log = fault_proxy.body_log
    span_s = log[-1][0] - log[0][0]
    rate_mbps = sum(n for _, n in log) * 8 / span_s / 1e6
    assert span_s > 7.0
    assert abs(rate_mbps - cap_mbps) / cap_mbps <= 0.10, rate_mbps


def test_request_rate_cap_holds_within_ten_percent(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src", 60, seed=7)
    opts = options(azurite, tmp_path, max_requests_per_s=20.0, check="none")
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts)
    assert report.files_copied == 60
    times = fault_proxy.request_times
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert abs(rate - 20.0) / 20.0 <= 0.10, rate


# ------------------------------------------------------------------------------------------
# Progress totals and the CLI


def test_progress_totals_equal_the_source_tree_when_retried_files_fail(
    azurite: Any, container: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The events of a job whose retries ran out for some files (started, then failed) must
    still add up to the tree: every file once, every byte once."""
    tree = make_tree(tmp_path / "src", 20, seed=8, big_every=5)
    opts = options(
        azurite,
        tmp_path,
        single_put_max_bytes=MiB,
        block_bytes=MiB,
        retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.1, max_elapsed_s=0.5),
    )
    # Two files fail for good (500 until the retry window closes): a big one whose blocks are
    # all acknowledged (progress events) before its Put Block List fails, and a small one.
    fault_proxy.fault("error", every=1, match=lambda m, p: "0005.dcm?comp=blocklist" in p)
    fault_proxy.fault("error", every=1, match=lambda m, p: m == "PUT" and p.endswith("0001.dcm"))
    events: list[Event] = []
    report = run_copy(tmp_path / "src", fault_proxy.url(container), opts, events)
    assert report.files_failed == 2 and report.retries > 2
    presenter = _Presenter(as_json=False)
    with presenter:
        for ev in events:
            presenter.on_event(ev)
    total_bytes = sum(len(d) for d in tree.values())
    assert (presenter.files_done, presenter.files_known) == (len(tree), len(tree))
    assert presenter.bytes_known == total_bytes
    assert presenter.progress is not None
    task = presenter.progress.tasks[0]
    assert (task.completed, task.total) == (total_bytes, total_bytes)


def test_progress_counts_a_restarted_file_and_resent_bytes_once() -> None:
    events = [
        Event("file_started", path="a", bytes=100),
        Event("progress", path="a", bytes=60),
        Event("file_started", path="a", bytes=100),  # started over
        Event("progress", path="a", bytes=60),
        Event("progress", path="a", bytes=40),
        Event("file_copied", path="a", bytes=100),
        Event("file_started", path="b", bytes=50),
        Event("progress", path="b", bytes=20),
        Event("file_failed", path="b", bytes=50, reason="x"),
        Event("file_copied", path="c", bytes=30),  # committed by an earlier run
    ]
    presenter = _Presenter(as_json=False)
    with presenter:
        for ev in events:
            presenter.on_event(ev)
    assert (presenter.files_done, presenter.files_known) == (3, 3)
    assert presenter.progress is not None
    task = presenter.progress.tasks[0]
    assert (task.completed, task.total) == (180, 180)


def test_cli_copy_through_faults_exits_0_with_the_exact_summary(
    azurite: Any,
    container: str,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    sdk_blob: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = make_tree(tmp_path / "src", 25, seed=9)
    fault_proxy.storm(1.5, retry_after_ms=200)
    fault_proxy.fault("mixed", rate=0.1, stall_s=5.0)
    argv = [
        "copy",
        str(tmp_path / "src"),
        fault_proxy.url(container),
        "--connection-string",
        azurite.connection_string,
        "--journal",
        str(tmp_path / "journal.db"),
        "--stall-timeout",
        "1",
        "--retry-window",
        "60",
        "--max-requests-per-s",
        "200",
        "--cap-mbps",
        "400",
        "--json",
    ]
    assert main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["kind"] == "summary"
    assert (summary["files_copied"], summary["files_failed"]) == (len(tree), 0)
    assert summary["files_total"] == len(tree)
    assert summary["retries"] >= fault_proxy.injected["storm"] > 0
    assert summary["throttled_s"] > 0
    assert 1 <= summary["concurrency_min"] <= summary["concurrency_max"] == 64
    for name, data in tree.items():
        assert sdk_blob(container, name).download_blob().readall() == data

    # the plain summary line names them too (a re-run skips everything: nothing to throttle)
    fault_proxy.clear()
    assert main(argv[:-1]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "copied 0 files" in err and f"skipped {len(tree)}" in err
    assert "0 retries, throttled 0.0 s, concurrency 64-64" in err
