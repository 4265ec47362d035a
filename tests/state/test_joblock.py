"""A job runs at most once at a time: the lock beside the journal, held by real processes.

The unit tests hold the lock from a helper process (the holder must be another process: flock is
per open file, and the point is the kernel's release when a process dies). The CLI tests run two
real `pyengine copy` processes on one job against Azurite: the first is paused (SIGSTOP) while it
holds the lock, so the second certainly meets a running job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from pyengine.errors import JobLockedError
from pyengine.state.joblock import JobLock, job_lock_path, read_holder_pid

MiB = 1024 * 1024

_HOLDER = """
import sys, time
from pyengine.state.joblock import JobLock
with JobLock(sys.argv[1], subject="holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A helper process holding the lock of a job beside tmp_path/jobs.sqlite."""
    path = job_lock_path(tmp_path / "jobs.sqlite", "/src", "https://acct/c")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_second_lock_of_a_job_is_refused_naming_the_holder_pid(holder) -> None:
    proc, path = holder
    with pytest.raises(JobLockedError) as info:
        JobLock(path, subject="/src -> https://acct/c").acquire()
    assert info.value.holder_pid == proc.pid
    assert info.value.exit_code == 2
    line = info.value.one_line()
    assert "\n" not in line
    assert line.startswith("/src -> https://acct/c: ")
    assert f"pid {proc.pid}" in line


def test_lock_of_a_killed_holder_is_taken_over(holder) -> None:
    proc, path = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert read_holder_pid(path) == proc.pid  # the dead holder's file is still there
    with JobLock(path, subject="x"):
        assert read_holder_pid(path) == os.getpid()


def test_stale_pid_file_without_a_lock_does_not_block(tmp_path: Path) -> None:
    path = job_lock_path(tmp_path / "jobs.sqlite", "/src", "https://acct/c")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("1\n")  # pid 1 is alive: a pid check alone would wrongly refuse
    with JobLock(path, subject="x"):
        assert read_holder_pid(path) == os.getpid()


def test_two_locks_of_one_job_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    path = job_lock_path(tmp_path / "jobs.sqlite", "/src", "https://acct/c")
    with JobLock(path, subject="x"), pytest.raises(JobLockedError, match=f"pid {os.getpid()}"):
        JobLock(path, subject="x").acquire()


def test_release_removes_the_lock_file_and_the_job_can_run_again(tmp_path: Path) -> None:
    path = job_lock_path(tmp_path / "jobs.sqlite", "/src", "https://acct/c")
    lock = JobLock(path, subject="x")
    lock.acquire()
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    lock.release()
    assert not path.exists()
    lock.release()  # idempotent
    with JobLock(path, subject="x"):
        pass


def test_lock_file_sits_beside_the_journal_one_per_source_and_destination(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "jobs.sqlite"
    a = job_lock_path(journal, "/src", "https://acct/c")
    assert a.parent == tmp_path / "state" and a.name.startswith("jobs.sqlite.job-")
    assert a == job_lock_path(journal, "/src", "https://acct/c")
    assert a != job_lock_path(journal, "/src", "https://acct/c/other-prefix")
    assert a != job_lock_path(journal, "/src2", "https://acct/c")
    # two different jobs can run at once from one journal
    with (
        JobLock(a, subject="a"),
        JobLock(job_lock_path(journal, "/src2", "https://acct/c"), subject="b"),
    ):
        pass


# --- two real CLI runs of one job against Azurite ---------------------------------------------


def _cli_args(src: Path, dest: str, journal: Path, azurite) -> list[str]:
    return [
        sys.executable, "-m", "pyengine.cli", "copy", str(src), dest, "--json",
        "--block-size", "4", "--threads", "2", "--journal", str(journal),
        "--connection-string", azurite.connection_string,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""}


def _start_and_wait_for_job_started(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"job_started"' in line:
            return proc
    proc.kill()
    raise AssertionError(f"no job_started event: {proc.communicate()[1]}")


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {f"s{i:02d}.dcm": os.urandom(2000 + i) for i in range(30)}
    files["big.dcm"] = os.urandom(20 * MiB + 1)  # six blocks: the run lasts a while
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _blobs(azurite, container: str) -> dict[str, bytes]:
    name = container.rstrip("/").rsplit("/", 1)[1]
    with ContainerClient.from_connection_string(azurite.connection_string, name) as cc:
        return {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}


@pytest.mark.integration
def test_second_cli_run_of_a_running_job_exits_2_naming_the_holder_and_copies_nothing(
    tmp_path: Path, azurite, container
) -> None:
    src = tmp_path / "src"
    files = _make_tree(src)
    journal = tmp_path / "jobs.sqlite"
    args = _cli_args(src, container, journal, azurite)
    first = _start_and_wait_for_job_started(args)
    try:
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, sends nothing until SIGCONT
        second = subprocess.run(args, capture_output=True, text=True, timeout=60, env=_env())
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err

    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, second.stderr
    assert f"already running (pid {first.pid})" in errors[0]
    assert not [e for e in map(json.loads, second.stdout.splitlines()) if e["kind"] != "error"]

    # The first run alone wrote the job: one manifest line per file, every blob its source.
    summary = json.loads(out.splitlines()[-1])
    assert summary["kind"] == "summary" and summary["files_copied"] == len(files)
    lines = Path(summary["manifest_path"]).read_text().splitlines()
    assert sorted(json.loads(ln)["path"] for ln in lines) == sorted(files)
    assert _blobs(azurite, container) == files
    assert not list(tmp_path.glob("jobs.sqlite.job-*.lock"))  # released


@pytest.mark.integration
def test_cli_run_takes_over_the_lock_of_a_killed_run_and_completes_the_job(
    tmp_path: Path, azurite, container
) -> None:
    src = tmp_path / "src"
    files = _make_tree(src)
    journal = tmp_path / "jobs.sqlite"
    args = _cli_args(src, container, journal, azurite)
    first = _start_and_wait_for_job_started(args)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    lock_file = job_lock_path(journal, str(src), container)
    assert read_holder_pid(lock_file) == first.pid  # left behind by the kill

    second = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env())
    assert second.returncode == 0, second.stderr
    events = [json.loads(ln) for ln in second.stdout.splitlines()]
    assert events[0]["kind"] == "job_started" and events[0]["extra"]["resumed"]
    assert events[-1]["files_failed"] == 0
    assert _blobs(azurite, container) == files
    assert not lock_file.exists()
