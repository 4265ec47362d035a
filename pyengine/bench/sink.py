"""nginx as a discard sink for throughput benchmarks.

Azurite caps near 60 MB/s on loopback, so throughput is measured against nginx instead: a front
server reads every request body in full (``proxy_request_buffering on``) and only then asks an
upstream server block on a unix socket for the answer, so a 2xx response proves the whole body
was received. The upstream answers like Blob Storage does for the calls the uploader and the
azure-storage-blob SDK make (Put Blob, Put Block, Put Block List, Create Container, HEAD/GET
properties) and checks nothing: any SharedKey or SAS signature is accepted. The configuration
is :mod:`pyengine.bench.nginx_conf`; this module runs nginx and counts what it read.

Every request is logged to an access log in the sink's temp dir (``$status $request_length
$content_length``); :meth:`DiscardSink.counted` sums it, so a benchmark can prove the bytes it
claims to have sent were read.

Usage::

    with DiscardSink() as sink:
        run_upload(sink.url, sink.connection_string)
        assert sink.counted().body_bytes >= payload_bytes

From asyncio code use ``async with DiscardSink() as sink`` and ``await sink.acounted()``: both run
the blocking parts (start, log settling, stop) in a worker thread.

``PYENGINE_BENCH_SINK_CPUS`` (a ``taskset -c`` CPU list such as ``2-15``): when set, every nginx
a bench starts (this sink, and ``bench download``'s file server) runs under ``taskset -c`` on
those CPUs, so the client under test can be pinned apart from it, e.g.
``PYENGINE_BENCH_SINK_CPUS=2-15 taskset -c 0,1 pyengine bench download ...`` measures a 2-core
client against a server on the other 14. The nginx binary is the first ``nginx`` on PATH, else
/usr/sbin/nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyengine.bench.nginx_conf import render_config
from pyengine.errors import ConfigError

log = logging.getLogger("pyengine")

MiB = 1024 * 1024

#: Azurite's well-known development account (public, documented by Microsoft): any key works
#: against the sink, this one keeps the connection string in the familiar Azurite shape.
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEFAULT_CONTAINER = "bench"

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_PORT_TRIES = 5
_MAX_WORKER_PROCESSES = 64

#: CPUs every bench nginx runs on (``taskset -c`` list); unset: wherever the kernel puts it
SINK_CPUS_ENV = "PYENGINE_BENCH_SINK_CPUS"
_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


@dataclass(frozen=True)
class SinkCount:
    """What the sink has read since its last reset.

    ``body_bytes`` sums ``$content_length`` over requests answered 2xx: with request buffering
    on, nginx only forwards a request upstream (and so only answers 2xx) once the whole body has
    been read, so every byte counted here was received. For a chunked body nginx sets
    ``$content_length`` to the decoded length once it has read it all, so those count too.
    """

    requests: int
    body_bytes: int
    #: requests not answered 2xx (4xx/5xx, client gone mid-body = 499/400)
    failed_requests: int = 0
    #: bytes read from the sockets, request line and headers included
    wire_bytes: int = 0

    def __sub__(self, other: SinkCount) -> SinkCount:
        return SinkCount(
            requests=self.requests - other.requests,
            body_bytes=self.body_bytes - other.body_bytes,
            failed_requests=self.failed_requests - other.failed_requests,
            wire_bytes=self.wire_bytes - other.wire_bytes,
        )


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_nginx() -> str:
    """Path of the nginx binary, or a one-line ConfigError saying how to get it."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError("nginx", "not installed; run `make bench` (it installs nginx-light)")


def sink_cpus_prefix(environ: Mapping[str, str] | None = None) -> list[str]:
    """``["taskset", "-c", CPUS]`` when ``PYENGINE_BENCH_SINK_CPUS`` is set (see the module
    docstring), else ``[]``: what goes before an nginx command line."""
    cpus = (os.environ if environ is None else environ).get(SINK_CPUS_ENV, "").strip()
    if not cpus:
        return []
    if not _CPU_LIST.fullmatch(cpus):
        raise ConfigError(SINK_CPUS_ENV, f"not a CPU list like 2-15 or 0,2,4: {cpus!r}")
    taskset = shutil.which("taskset")
    if taskset is None:
        raise ConfigError(SINK_CPUS_ENV, "is set but taskset (util-linux) is not on PATH")
    return [taskset, "-c", cpus]


def nginx_command(nginx: str, prefix_dir: Path, conf: Path) -> list[str]:
    """The command line of a bench nginx in the foreground, pinned as ``sink_cpus_prefix`` says
    (taskset execs nginx: the pid is nginx's master, so stopping it stops nginx)."""
    return [
        *sink_cpus_prefix(),
        nginx,
        "-p",
        str(prefix_dir),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
    ]


class DiscardSink:
    """A running nginx discard sink on a free 127.0.0.1 port (see the module docstring).

    ``worker_processes`` is 1 by default: the client under test must keep most of the 2 cores
    CI has (a many-core host scaling many clients asks for more: ``bench.scaleout
    --sink-workers``). Measured here, nginx spends about 0.3-0.5 core per GB/s of bodies read, so
    one worker keeps up with a client up to about 2 GB/s; with 2 workers the bare aiohttp client got
    up to ~30 % more (sink and client then fight for the same 2 cores; see :meth:`cpu_seconds`).
    ``body_buffer_bytes``: bodies up to 1.25 × this stay in memory, larger ones are spooled to
    a temp file in the sink's temp dir (slower: keep it above the benchmarked block size).
    """

    def __init__(
        self,
        *,
        worker_processes: int = 1,
        body_buffer_bytes: int = 32 * MiB,
        container: str = DEFAULT_CONTAINER,
        nginx_path: str | None = None,
    ) -> None:
        if not 1 <= worker_processes <= _MAX_WORKER_PROCESSES:
            raise ConfigError(
                "sink",
                f"worker_processes must be 1 to {_MAX_WORKER_PROCESSES}, not {worker_processes}",
            )
        if nginx_path is not None and not os.access(nginx_path, os.X_OK):
            raise ConfigError(nginx_path, "not executable; run `make bench` (it installs nginx)")
        self._nginx = nginx_path or find_nginx()
        self._worker_processes = worker_processes
        self._body_buffer_bytes = body_buffer_bytes
        self.container = container
        self.tmpdir: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DiscardSink:
        if self._proc is not None:
            return self
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pyengine-sink-"))
        try:
            self._start_on_free_port()
        except BaseException:
            self._cleanup_tmpdir()
            raise
        return self

    def _start_on_free_port(self) -> None:
        assert self.tmpdir is not None
        last_error = ""
        # Probing a free port and binding it are two steps: another process may take the port
        # between them, so a bind failure is retried on a fresh port.
        for _ in range(_PORT_TRIES):
            port = _free_loopback_port()
            conf = self.tmpdir / "nginx.conf"
            conf.write_text(
                render_config(
                    self.tmpdir,
                    port,
                    worker_processes=self._worker_processes,
                    body_buffer_bytes=self._body_buffer_bytes,
                    run_as_root=os.geteuid() == 0,
                )
            )
            (self.tmpdir / "access.log").write_bytes(b"")
            (self.tmpdir / "upstream.sock").unlink(missing_ok=True)
            stderr_path = self.tmpdir / "stderr.log"
            with open(stderr_path, "wb") as stderr:
                proc = subprocess.Popen(
                    nginx_command(self._nginx, self.tmpdir, conf),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    # its own process group: a Ctrl-C in the terminal reaches the bench, and
                    # the bench stops nginx (stop()) instead of both racing to die.
                    start_new_session=True,
                )
            if self._wait_ready(proc, port):
                self._proc = proc
                self.port = port
                self._log_offset = 0
                log.debug("sink: nginx pid %d on 127.0.0.1:%d", proc.pid, port)
                return
            last_error = self._last_error_line()
            if "in use" not in last_error:
                break
        raise ConfigError("nginx", f"sink did not start: {last_error or 'no error logged'}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        assert self.tmpdir is not None
        upstream_sock = self.tmpdir / "upstream.sock"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if upstream_sock.exists():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        return True
                except OSError:
                    pass
            time.sleep(0.01)
        _terminate(proc)
        return False

    def _last_error_line(self) -> str:
        assert self.tmpdir is not None
        lines: list[str] = []
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                lines += (self.tmpdir / name).read_text(errors="replace").splitlines()
        emerg = [line for line in lines if "[emerg]" in line or "[alert]" in line]
        return (emerg or lines or [""])[-1].strip()

    def stop(self) -> None:
        """Stop nginx (master and workers) and delete the temp dir. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        self._cleanup_tmpdir()

    def _cleanup_tmpdir(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """PID of the nginx master, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) nginx's master and workers have used so far.

        The sink shares the machine with the client under test: a bench reports this delta so
        the reader sees how much of the cores the sink itself took (about 0.3-0.5 core per GB/s
        of bodies measured here).
        """
        master_pid = self.pid
        if master_pid is None:
            raise ConfigError("sink", "not running; use it as a context manager or call start()")
        ticks = 0
        for pid in [master_pid, *_children_of(master_pid)]:
            with contextlib.suppress(OSError):
                fields = _proc_stat_fields(pid)
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
        return ticks / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> DiscardSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> DiscardSink:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- addresses -------------------------------------------------------------------------

    def _require_running(self) -> int:
        if self._proc is None or self.port is None:
            raise ConfigError("sink", "not running; use it as a context manager or call start()")
        return self.port

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self._require_running()}/{DEV_ACCOUNT_NAME}"

    @property
    def url(self) -> str:
        """Container URL in account-style path form (like Azurite): ``…/devstoreaccount1/bench``."""
        return f"{self.account_url}/{self.container}"

    @property
    def connection_string(self) -> str:
        """Azurite-style dev-account connection string pointing at the sink."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT_NAME};"
            f"AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={self.account_url};"
        )

    # -- List Blobs ------------------------------------------------------------------------

    def serve_listing(self, pages: Iterable[bytes]) -> int:
        """From now on List Blobs answers with ``pages`` (whole EnumerationResults documents):
        the first for a request without a marker, page k for marker ``m<k>``; each page but the
        last must name the next in its NextMarker (:func:`listing_marker`). Pages are files
        nginx sends as they are, so a bench measures the client's side of a listing, not the
        sink's. Returns the count of pages."""
        assert self.tmpdir is not None
        self._require_running()
        directory = self.tmpdir / "listing"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        count = 0
        for count, page in enumerate(pages, start=1):
            (directory / f"page-{listing_marker(count - 1)}.xml").write_bytes(page)
        return count

    # -- counting --------------------------------------------------------------------------

    @property
    def access_log_path(self) -> Path:
        self._require_running()
        assert self.tmpdir is not None
        return self.tmpdir / "access.log"

    def counted(self, *, settle_s: float = 0.02) -> SinkCount:
        """Sum the access log since the last reset.

        nginx writes a request's log line right after it sends the response, so a client that
        has just read its last response may be a few microseconds ahead of the log: the log is
        re-read every ``settle_s`` until its size stops changing.
        """
        path = self.access_log_path
        size_bytes = self._settled_log_size(settle_s=settle_s)
        with open(path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read(size_bytes - self._log_offset)
        return _parse_access_log(data)

    def _settled_log_size(self, *, settle_s: float) -> int:
        path = self.access_log_path
        size_bytes = path.stat().st_size
        while True:
            time.sleep(settle_s)
            new_size_bytes = path.stat().st_size
            if new_size_bytes == size_bytes:
                return size_bytes
            size_bytes = new_size_bytes

    async def acounted(self, *, settle_s: float = 0.02) -> SinkCount:
        return await asyncio.to_thread(self.counted, settle_s=settle_s)

    def reset_counts(self) -> None:
        """Count from now on: later counted() calls ignore what the log holds so far."""
        # An offset rather than truncating: nginx keeps the file open in O_APPEND mode and
        # a truncation racing a write could lose or split a line.
        self._log_offset = self._settled_log_size(settle_s=0.02)


def listing_marker(page_index: int) -> str:
    """The marker that asks the sink for page ``page_index`` (0: no marker)."""
    return f"m{page_index}" if page_index else ""


def _parse_access_log(data: bytes) -> SinkCount:
    requests = body_bytes = failed = wire_bytes = 0
    for line in data.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        status, request_length, content_length = fields[0], fields[1], fields[2]
        requests += 1
        wire_bytes += int(request_length)
        if not status.startswith(b"2"):
            failed += 1
        elif content_length != b"-":  # "-": no body (GET, HEAD)
            body_bytes += int(content_length)
    return SinkCount(
        requests=requests,
        body_bytes=body_bytes,
        failed_requests=failed,
        wire_bytes=wire_bytes,
    )


def _proc_stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name, which may itself hold spaces: [0] is
    the state, [1] the ppid, [11] utime, [12] stime."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_proc_stat_fields(int(entry))[1]) == pid:
                    children.append(int(entry))
    return children


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM is nginx's fast shutdown: the master stops its workers, then exits."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # a wedged master: take its whole process group (workers included) down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
