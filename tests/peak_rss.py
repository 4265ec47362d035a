"""Run the CLI in a child process and measure its own peak RSS (VmHWM from /proc), not
ru_maxrss, which would count the fork of the test process itself."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def run_cli_measured(
    args: list[str], *, merge_stderr: bool = False, env: dict[str, str] | None = None
) -> tuple[int, str, float, int]:
    """(exit code, output, seconds, peak RSS bytes) of `pyengine ARGS`. The output is stderr,
    or stdout and stderr together with ``merge_stderr``; stdout is dropped otherwise."""
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "pyengine.cli", *args],
        stdout=subprocess.PIPE if merge_stderr else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": "", **(env or {})},
    )
    stream = child.stdout if merge_stderr else child.stderr
    assert stream is not None
    peak_bytes = 0
    done = threading.Event()

    def poll_hwm() -> None:
        nonlocal peak_bytes
        while not done.is_set():
            try:
                with open(f"/proc/{child.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):  # monotonic: the last read is the peak
                            peak_bytes = max(peak_bytes, int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll_hwm, daemon=True)
    poller.start()
    output = stream.read()  # drained while it runs: a full pipe would block it
    done.set()
    child.wait()
    poller.join()
    return child.returncode, output, time.monotonic() - start, peak_bytes
