"""Stopping a running `pyengine copy` with SIGTERM or SIGINT, or killing it: the exit code, the
job state the journal and `pyengine jobs` show, and a resume that completes with every blob equal
to its source (read back with the official SDK).

A fault proxy stalls some Put Block requests of the large file, so the job is reliably mid-run
(blocks acknowledged, others in flight) when the signal arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_harness import PYENGINE, blobs_of, make_tree, pyengine

from pyengine.state.journal import Journal

pytestmark = pytest.mark.integration

MiB = 1 << 20
#: the moment the job is mid-run must come quickly; a hang is a bug
WAIT_S = 30


def _env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "COLUMNS"))}
    base.update({"AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential", "COLUMNS": "80"})
    return base


class Running:
    """A `pyengine ...` child whose stdout JSON events are read by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PYENGINE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def wait_for(self, predicate: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(predicate(ev) for ev in self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"not reached; events: {self.seen[-5:]}"
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.events.get(timeout=left))

    def finish(self) -> tuple[int, str]:
        rc = self.proc.wait(timeout=WAIT_S)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()


def _tree(root: Path) -> dict[str, bytes]:
    # big.dcm: 12 blocks of 1 MiB (over the 8 MiB Put Blob limit); the small ones: one Put Blob each
    sizes = {"big.dcm": 12 * MiB, **{f"s/{i:02d}.dcm": 10_000 + i for i in range(6)}}
    return make_tree(root, sizes)


def _stall_big_blocks(fault_proxy: Any) -> None:
    """Every other Put Block of big.dcm hangs 60 s: some blocks are acknowledged, the rest are
    in flight when the test stops the job."""
    fault_proxy.fault(
        "stall",
        every=2,
        stall_s=60,
        match=lambda m, p: (
            m == "PUT" and "big.dcm" in p and "comp=block" in p and "blocklist" not in p
        ),
    )


def _start_copy(azurite: Any, tmp_path: Path, dest: str) -> Running:
    return Running(
        "copy",
        str(tmp_path / "src"),
        dest,
        "--connection-string",
        azurite.connection_string,
        "--journal",
        str(tmp_path / "journal.sqlite"),
        "--block-size",
        "1",
        "--threads",
        "2",
        "--json",
    )


def _big_mid_run(ev: dict[str, Any]) -> bool:
    return ev.get("kind") == "progress" and ev.get("path") == "big.dcm"


def _only_job(journal_path: Path) -> Any:
    with Journal.open_existing(journal_path) as journal:
        (info,) = journal.list_jobs()
        big = journal.file_record(info.job_id, "big.dcm")
    return info, big


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_signal_stops_the_copy_gracefully_marks_it_interrupted_and_resume_completes(
    azurite: Any, container: str, fault_proxy: Any, tmp_path: Path, signum: int, exit_code: int
) -> None:
    files = _tree(tmp_path / "src")
    _stall_big_blocks(fault_proxy)
    run = _start_copy(azurite, tmp_path, fault_proxy.url(container))
    run.wait_for(_big_mid_run)
    run.proc.send_signal(signum)
    rc, stderr = run.finish()

    assert rc == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
    info, big = _only_job(tmp_path / "journal.sqlite")
    assert info.status == "interrupted"
    # the blocks the service acknowledged before the stop are durable in the journal
    assert big is not None and big.state != "committed" and big.acked_blocks
    listed = pyengine("jobs", "list", "--journal", str(tmp_path / "journal.sqlite"), "--json")
    assert json.loads(listed.stdout)["status"] == "interrupted"

    fault_proxy.clear()
    resumed = pyengine(
        "resume",
        info.job_id,
        "--connection-string",
        azurite.connection_string,
        "--journal",
        str(tmp_path / "journal.sqlite"),
        "--json",
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["job_id"] == info.job_id and summary["blocks_resumed"] >= 1
    assert blobs_of(azurite, container) == files
    info, _ = _only_job(tmp_path / "journal.sqlite")
    assert info.status == "completed"
    listed = pyengine("jobs", "list", "--journal", str(tmp_path / "journal.sqlite"), "--json")
    assert json.loads(listed.stdout)["status"] == "done"


def test_killed_copy_is_listed_as_interrupted_holder_gone_and_a_live_one_as_running(
    azurite: Any, container: str, fault_proxy: Any, tmp_path: Path
) -> None:
    _tree(tmp_path / "src")
    _stall_big_blocks(fault_proxy)
    run = _start_copy(azurite, tmp_path, fault_proxy.url(container))
    run.wait_for(_big_mid_run)
    journal = str(tmp_path / "journal.sqlite")
    live = pyengine("jobs", "list", "--journal", journal, "--json")
    assert json.loads(live.stdout)["status"] == "running"

    run.proc.kill()
    run.finish()
    dead = pyengine("jobs", "list", "--journal", journal, "--json")
    assert json.loads(dead.stdout)["status"] == "interrupted (holder gone)"
    table = pyengine("jobs", "list", "--journal", journal)
    assert "holder gone" in table.stdout


# In the imports (about 0.7 s of them; the handlers come after the first ~50 ms, Python's own
# start-up, which no Python program can cover) or, on a fast machine, just after them.
@pytest.mark.parametrize("delay_s", [0.15, 0.3])
def test_sigint_during_start_up_prints_one_line_and_no_traceback(
    azurite: Any, container: str, tmp_path: Path, delay_s: float
) -> None:
    make_tree(tmp_path / "src", {"a.dcm": 10})
    run = Running(
        "copy",
        str(tmp_path / "src"),
        container,
        "--connection-string",
        azurite.connection_string,
        "--journal",
        str(tmp_path / "journal.sqlite"),
    )
    time.sleep(delay_s)
    run.proc.send_signal(signal.SIGINT)
    rc, stderr = run.finish()
    if rc == 0:
        pytest.skip("the copy finished before the signal")  # a very fast machine
    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[-1].startswith("interrupted"), stderr
