"""kill -9 trials: `pyengine copy` killed at chosen moments, resumed by re-running the command.

A counting proxy (aiohttp, in a thread, on 127.0.0.1) sits between pyengine and Azurite. It
records every request (method, path, query, status) and kills the child itself at the moment a
trial asks for: when the k-th Put Block arrives (dropped, never forwarded), after the service
acknowledged the k-th Put Block (the answer never reaches the client), when the first Put Block
List arrives (dropped), or after the service committed it (answer lost). SharedKey signatures do
not cover the host, so forwarded requests stay valid.

After every trial: each blob equals its source (BLAKE3 of an SDK download), `pyengine verify
--deep` exits 0, no block the journal held as acknowledged at a kill was sent again later, and no
blob got two successful commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import blake3
import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient
from yarl import URL

from pyengine.engine.plan import block_id

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


# --- the counting proxy -------------------------------------------------------------------------


@dataclass
class Request:
    run: int
    op: str  # put_block | put_block_list | put_blob | other
    method: str
    blob: str
    query: dict[str, str]
    status: int | None = None  # None: never answered (dropped, or the client died)


Hook = Callable[[Request, str], bool]  # (request, "start" | "end") -> True: kill and drop it


@dataclass
class CountingProxy:
    upstream: str  # http://127.0.0.1:PORT
    container: str = ""
    run: int = 0
    hook: Hook | None = None
    requests: list[Request] = field(default_factory=list)
    inflight: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="proxy")

    def start(self) -> CountingProxy:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()

    @staticmethod
    def _op(method: str, query: dict[str, str], blob: str) -> str:
        comp = query.get("comp")
        if method == "PUT" and comp == "block":
            return "put_block"
        if method == "PUT" and comp == "blocklist":
            return "put_block_list"
        if method == "PUT" and comp is None and blob:
            return "put_blob"
        return "other"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # a body cut short by a kill is never forwarded
        parts = request.path.split("/", 3)  # "", account, container, blob
        blob = parts[3] if len(parts) > 3 else ""
        query = dict(request.query)
        with self.lock:
            req = Request(
                self.run, self._op(request.method, query, blob), request.method, blob, query
            )
            self.requests.append(req)
            self.inflight += 1
        try:
            if self.hook is not None and self.hook(req, "start"):
                request.transport.close()  # type: ignore[union-attr]
                return web.Response(status=599)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            has_body = request.method in ("PUT", "POST")
            async with self._session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=headers,
                data=body if has_body else None,
            ) as up:
                answer = await up.read()
                up_headers = [
                    (k, v) for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS
                ]
                status = up.status
                length = up.headers.get("Content-Length")
            req.status = status
            if self.hook is not None and self.hook(req, "end"):
                request.transport.close()  # type: ignore[union-attr]
                return web.Response(status=599)
            resp = web.StreamResponse(status=status)
            for k, v in up_headers:
                resp.headers.add(k, v)
            if request.method == "HEAD":
                # Get Blob Properties: the blob size travels in Content-Length, with no body
                if length is not None:
                    resp.headers["Content-Length"] = length
                await resp.prepare(request)
            else:
                resp.content_length = len(answer)
                await resp.prepare(request)
                await resp.write(answer)
            await resp.write_eof()
            return resp
        finally:
            with self.lock:
                self.inflight -= 1

    def wait_idle(self, quiet_s: float = 0.3, timeout_s: float = 20.0) -> None:
        """Until nothing is in flight and nothing new arrived for quiet_s."""
        deadline = time.monotonic() + timeout_s
        seen = -1
        while time.monotonic() < deadline:
            with self.lock:
                n, busy = len(self.requests), self.inflight
            if not busy and n == seen:
                return
            seen = n
            time.sleep(quiet_s)
        raise AssertionError("proxy never went idle")

    def of_run(self, run: int, op: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.run == run and (op is None or r.op == op)]


@pytest.fixture(scope="module")
def proxy(azurite):
    p = CountingProxy(f"http://127.0.0.1:{azurite.port}").start()
    yield p
    p.stop()


# --- the source tree (one per module: ~290 MB) ----------------------------------------------


def _write_tree(root: Path, seed: int) -> dict[str, str]:
    """Files of many 4 MiB blocks, many small files, empty ones; returns rel path -> BLAKE3."""
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    for i in range(6):
        sizes[f"big/series{i}/volume.dcm"] = 40 * MiB + (i * 4099 if i % 2 else 0)  # 10-11 blocks
    for i in range(2):
        sizes[f"mid/part{i}.dcm"] = 10 * MiB + 123  # 3 blocks
    for i in range(400):
        sizes[f"small/s{i // 50:02d}/img{i:04d}.dcm"] = rng.randint(1, 100_000)
    for i in range(30):
        sizes[f"empty/e{i:02d}.dcm"] = 0
    digests = {}
    for rel, n in sizes.items():
        data = rng.randbytes(n)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[rel] = blake3.blake3(data).hexdigest()
    return digests


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("tree") / "archive"
    return root, _write_tree(root, seed=20261124)


# --- running and killing the CLI ----------------------------------------------------------------


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyengine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
    )


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: kind and k (the k-th request of that kind in the run, from 1)."""

    kind: str  # scan | mid_block | block_acked | before_commit | in_commit | put_blob_done
    k: int = 1
    #: hold the proxy this long before killing: the child's 0.5 s group commit runs meanwhile
    delay_s: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind in ("scan",) else f"{self.kind}#{self.k}"


_TRIGGERS = {
    # kind: (op, phase)
    "mid_block": ("put_block", "start"),
    "block_acked": ("put_block", "end"),
    "before_commit": ("put_block_list", "start"),
    "in_commit": ("put_block_list", "end"),
    "put_blob_done": ("put_blob", "end"),
}


@dataclass
class RunResult:
    rc: int | None
    killed: bool
    stdout: str
    stderr: str
    journaled_acks: set[tuple[str, str]]  # (blob, block id) durable in the journal at the end


def _journaled_acks(journal: Path) -> set[tuple[str, str]]:
    if not journal.exists():
        return set()
    conn = sqlite3.connect(journal)
    try:
        rows = conn.execute(
            "SELECT f.blob_name, f.upload_id, b.block_index FROM blocks b JOIN files f"
            " USING (file_id)"
        ).fetchall()
    except sqlite3.OperationalError:  # killed before the schema was written
        return set()
    finally:
        conn.close()
    return {(name, block_id(upload, i)) for name, upload, i in rows}


def _run_once(proxy: CountingProxy, args: list[str], kill: KillPoint | None, journal: Path):
    proxy.run += 1
    counts: dict[str, int] = {}
    killed = threading.Event()
    child = _spawn(args)

    def hook(req: Request, phase: str) -> bool:
        if kill is None or killed.is_set() or req.run != proxy.run:
            return False
        op, when = _TRIGGERS.get(kill.kind, ("", ""))
        if req.op != op or phase != when:
            return False
        counts[op] = counts.get(op, 0) + 1
        if counts[op] < kill.k:
            return False
        time.sleep(kill.delay_s)
        os.kill(child.pid, signal.SIGKILL)
        killed.set()
        return True

    proxy.hook = hook
    if kill is not None and kill.kind == "scan":
        time.sleep(0.05)  # the interpreter is still starting: the scan has not begun
        os.kill(child.pid, signal.SIGKILL)
        killed.set()
    try:
        stdout, stderr = child.communicate(timeout=120)
    finally:
        proxy.hook = None
    proxy.wait_idle()
    return RunResult(child.returncode, killed.is_set(), stdout, stderr, _journaled_acks(journal))


@dataclass
class TrialOutcome:
    runs: list[RunResult]
    job_ids: set[str]
    resent_blocks: int
    acked_before_kills: list[int]


def _trial(
    proxy, azurite, container, src: Path, tmp: Path, kills: list[KillPoint], after_kill=None
):
    proxy_url = (
        f"http://127.0.0.1:{proxy.port}/{azurite.account_name}/{container.rsplit('/', 1)[1]}"
    )
    proxy_cs = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.account_name};"
        f"AccountKey={azurite.account_key};BlobEndpoint=http://127.0.0.1:{proxy.port}/"
        f"{azurite.account_name};"
    )
    journal = tmp / "jobs.sqlite"
    args = [
        "copy", str(src), proxy_url, "--json", "--block-size", "4", "--journal", str(journal),
        "--connection-string", proxy_cs,
    ]  # fmt: skip
    first_run = proxy.run + 1
    runs: list[RunResult] = []
    plan = list(kills)
    while True:
        assert len(runs) < len(kills) + 3, (
            f"still not done after {len(runs)} runs; last rc={runs[-1].rc}, stderr tail: "
            f"{runs[-1].stderr[-1500:]}"
        )
        kill = plan.pop(0) if plan else None
        result = _run_once(proxy, args, kill, journal)
        runs.append(result)
        if result.killed and after_kill is not None:
            after_kill()
        if not result.killed:
            assert result.rc in (0, 1), result.stderr
            if result.rc == 0:
                break
    last = runs[-1]
    assert last.rc == 0, last.stderr[-2000:]
    job_ids = set()
    for r in runs:
        for line in r.stdout.splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if ev.get("kind") == "job_started":
                job_ids.add(ev["extra"]["job_id"])
    # No block journaled as acknowledged at a kill is sent again by a later run.
    resent = 0
    acked_counts = []
    for i, r in enumerate(runs):
        if not r.killed:
            continue
        acked_counts.append(len(r.journaled_acks))
        for later in range(i + 1, len(runs)):
            for req in proxy.of_run(first_run + later, "put_block"):
                key = (req.blob, req.query["blockid"])
                assert key not in r.journaled_acks, f"journaled block sent again: {key}"
    # Blocks sent again because their acknowledgement was not journaled yet (allowed).
    acked_before: set[tuple[str, str]] = set()
    for i in range(len(runs)):
        reqs = proxy.of_run(first_run + i, "put_block")
        resent += sum(1 for q in reqs if (q.blob, q.query["blockid"]) in acked_before)
        acked_before |= {(q.blob, q.query["blockid"]) for q in reqs if q.status == 201}
    # No blob committed twice (each source file has one version in these trials).
    commits: dict[str, int] = {}
    for i in range(len(runs)):
        for q in proxy.of_run(first_run + i):
            if q.op in ("put_block_list", "put_blob") and q.status in (200, 201):
                commits[q.blob] = commits.get(q.blob, 0) + 1
    twice = {b: n for b, n in commits.items() if n > 1}
    assert not twice, f"blobs committed more than once: {twice}"
    return TrialOutcome(runs, job_ids, resent, acked_counts), journal


def _assert_destination_equals(container: str, azurite, digests: dict[str, str]) -> None:
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    with ContainerClient.from_container_url(container, credential=cred) as client:
        names = {b.name for b in client.list_blobs()}
        assert names == set(digests)
        for name, want in digests.items():
            got = blake3.blake3(client.download_blob(name).readall()).hexdigest()
            assert got == want, name


def _verify_deep(job_id: str, journal: Path, azurite) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", "verify", job_id, "--deep", "--json",
         "--journal", str(journal), "--connection-string", azurite.connection_string],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# --- the trials ----------------------------------------------------------------------------------

#: seeded trials: each a list of kill points, one per run; the run after the last one is not killed
_RNG = random.Random(4)
TRIALS: list[list[KillPoint]] = [
    [KillPoint("scan")],
    [KillPoint("mid_block", 3)],
    [KillPoint("mid_block", _RNG.randint(20, 45))],
    [KillPoint("block_acked", _RNG.randint(5, 30))],
    [KillPoint("before_commit")],
    [KillPoint("in_commit")],
    [KillPoint("put_blob_done", _RNG.randint(10, 200))],
    [KillPoint("in_commit", 3), KillPoint("before_commit")],
    [KillPoint("mid_block", _RNG.randint(1, 60)), KillPoint("block_acked", _RNG.randint(1, 20))],
    [KillPoint("scan"), KillPoint("before_commit", 2), KillPoint("mid_block", 10)],
    [KillPoint("block_acked", 40), KillPoint("in_commit", 2), KillPoint("put_blob_done", 5)],
]

#: the trial table, printed at the end of the module (pytest -s) and kept for the report
TABLE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if TABLE:
        print(
            "\ntrial | kill points | runs | journaled acks at kills | blocks resent | verified"
            " | time"
        )
        print("\n".join(TABLE))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(len(TRIALS)), ids=lambda i: f"trial{i}")
def test_killed_copy_resumes_to_a_verified_destination(
    trial: int, proxy, azurite, container, tree, tmp_path
) -> None:
    src, digests = tree
    kills = TRIALS[trial]
    t0 = time.monotonic()
    outcome, journal = _trial(proxy, azurite, container, src, tmp_path, kills)
    t1 = time.monotonic()
    assert len(outcome.job_ids) == 1, f"a resumed run started another job: {outcome.job_ids}"
    (job_id,) = outcome.job_ids
    summary = json.loads(outcome.runs[-1].stdout.strip().splitlines()[-1])
    assert summary["files_failed"] == 0
    assert summary["files_copied"] + summary["files_skipped"] == len(digests)
    _assert_destination_equals(container, azurite, digests)
    verified = _verify_deep(job_id, journal, azurite)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # verify checks what the journal holds as committed; a file whose begin_file batch was lost
    # at the kill is found at the destination on resume and counted as skipped (not verified)
    assert json.loads(verified.stdout)["files_ok"] == summary["files_copied"]
    TABLE.append(
        f"{trial} | {', '.join(map(str, kills))} | {len(outcome.runs)} | "
        f"{outcome.acked_before_kills} | {outcome.resent_blocks} | yes"
        f" | copy {t1 - t0:.1f} s, check {time.monotonic() - t1:.1f} s"
    )


def _small_tree(root: Path, big_bytes: int) -> dict[str, bytes]:
    rng = random.Random(7)
    files = {"big.dcm": rng.randbytes(big_bytes), "a.txt": b"a" * 10, "b.txt": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_file_modified_between_kill_and_resume_is_uploaded_whole(
    proxy, azurite, container, tmp_path
) -> None:
    src = tmp_path / "src"
    files = _small_tree(src, 40 * MiB)  # 10 blocks
    first_run = proxy.run + 1
    # after the last block's acknowledgement: the first nine are journaled by then
    kill = [KillPoint("block_acked", 10, delay_s=1.5)]
    new = random.Random(8).randbytes(40 * MiB)

    def modify() -> None:
        (src / "big.dcm").write_bytes(new)
        st = os.stat(src / "big.dcm")
        os.utime(src / "big.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    outcome, journal = _trial(proxy, azurite, container, src, tmp_path, kill, after_kill=modify)
    assert outcome.runs[0].killed
    assert len(outcome.acked_before_kills) == 1 and outcome.acked_before_kills[0] >= 9
    resumed_blocks = [q for q in proxy.of_run(first_run + 1, "put_block") if q.blob == "big.dcm"]
    assert len(resumed_blocks) == 10  # the new version, whole: nothing of the old one reused
    files["big.dcm"] = new
    _assert_destination_equals(
        container, azurite, {k: blake3.blake3(v).hexdigest() for k, v in files.items()}
    )
    (job_id,) = outcome.job_ids
    assert _verify_deep(job_id, journal, azurite).returncode == 0


def test_file_modified_during_copy_is_read_again_and_never_committed_torn(
    proxy, azurite, container, tmp_path
) -> None:
    src = tmp_path / "src"
    _small_tree(src, 64 * MiB)  # 16 blocks; the 8 MiB memory cap holds two
    big = src / "big.dcm"
    changed = threading.Event()
    proxy.run += 1
    run = proxy.run

    def modify_on_first_block(req: Request, phase: str) -> bool:
        if req.op == "put_block" and phase == "start" and not changed.is_set():
            with open(big, "r+b") as f:  # same size, other bytes, a later mtime
                f.seek(40 * MiB)
                f.write(b"\xff" * 4096)
            st = os.stat(big)
            os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            changed.set()
        return False

    proxy.hook = modify_on_first_block
    proxy_url = (
        f"http://127.0.0.1:{proxy.port}/{azurite.account_name}/{container.rsplit('/', 1)[1]}"
    )
    proxy_cs = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.account_name};"
        f"AccountKey={azurite.account_key};BlobEndpoint=http://127.0.0.1:{proxy.port}/"
        f"{azurite.account_name};"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pyengine.cli", "copy", str(src), proxy_url, "--json",
             "--block-size", "4", "--memory-cap", "8", "--threads", "1",
             "--journal", str(tmp_path / "j.sqlite"), "--connection-string", proxy_cs],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        proxy.hook = None
    proxy.wait_idle()
    assert changed.is_set()
    # The change is seen (FileFailed "changed") and the file is read again from scratch: one
    # commit, of the bytes as they are now, never of the read that straddled the change.
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["files_failed"] == 0 and summary["files_copied"] == 3
    commits = [q for q in proxy.of_run(run) if q.blob == "big.dcm" and q.op == "put_block_list"]
    assert len(commits) == 1
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    with ContainerClient.from_container_url(container, credential=cred) as client:
        assert client.download_blob("big.dcm").readall() == big.read_bytes()


def test_kill_at_commit_request_finds_every_block_journaled(
    proxy, azurite, container, tmp_path
) -> None:
    # upload.py must make "committing" (and the acks batched before it) durable BEFORE it sends
    # Put Block List (journal.mark_committing's contract); then a resume resends no block.
    src = tmp_path / "src"
    files = _small_tree(src, 40 * MiB)  # 10 blocks
    first_run = proxy.run + 1
    outcome, _ = _trial(proxy, azurite, container, src, tmp_path, [KillPoint("before_commit")])
    assert outcome.runs[0].killed
    assert outcome.acked_before_kills == [10]
    assert not [q for q in proxy.of_run(first_run + 1, "put_block") if q.blob == "big.dcm"]
    _assert_destination_equals(
        container, azurite, {k: blake3.blake3(v).hexdigest() for k, v in files.items()}
    )
