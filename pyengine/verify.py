"""`pyengine verify`: compare a destination with what a job's journal says it committed.

For every file the job committed: the blob exists, its size is the plaintext size (or the CSE v2
size when encrypted), and its ``pyengine_blake3`` metadata equals the journaled BLAKE3. With
``deep`` every blob is also downloaded (decrypted by the Azure SDK's own code when encrypted) and
re-hashed. Memory stays bounded: the journal is streamed page by page, a fixed number of checks
run at once, and deep downloads share a byte budget.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .blob import BlobStore, Destination, parse_destination, resolve_credential
from .crypto import KEYED_DIGEST_METADATA, content_key_from_metadata, keyed_digest_hex
from .errors import ConfigError, JournalError, PyEngineError
from .journal import FileRecord, JobInfo, Journal, default_journal_path
from .options import MiB, RetryPolicy
from .plan import encrypted_bytes
from .source import display_path

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

#: problems kept (and shown) in full; the rest are only counted, so a broken million-file job
#: cannot make the report itself unbounded
MAX_PROBLEMS_KEPT = 20
#: Get Blob Properties requests in flight (each costs a round trip, no payload)
HEAD_CONCURRENCY = 32
#: deep mode: downloads in flight, and the bytes they may hold together. A blob larger than the
#: budget is verified alone (the native BLAKE3 is one-shot, so a blob is held whole).
DEEP_CONCURRENCY = 4
DEEP_BUDGET_BYTES = 256 * MiB

Problem = tuple[str, str, str]  # (path, kind, one-line reason)


@dataclass
class VerifyReport:
    job_id: str
    dest: str  # redacted
    deep: bool
    files_checked: int = 0
    files_ok: int = 0
    files_missing: int = 0
    files_size_mismatch: int = 0
    files_hash_mismatch: int = 0
    bytes_checked: int = 0
    #: files the journal does not show as committed (failed, skipped, pending): not verified
    files_not_committed: int = 0
    #: the first MAX_PROBLEMS_KEPT problems: (path, kind, reason)
    problems: list[Problem] = field(default_factory=list)

    @property
    def files_problem(self) -> int:
        return self.files_missing + self.files_size_mismatch + self.files_hash_mismatch

    @property
    def ok(self) -> bool:
        return self.files_problem == 0

    def add_problem(self, path: str, kind: str, reason: str) -> None:
        if kind == "missing":
            self.files_missing += 1
        elif kind == "size_mismatch":
            self.files_size_mismatch += 1
        else:
            self.files_hash_mismatch += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append((display_path(path), kind, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "dest": self.dest,
            "deep": self.deep,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "files_ok": self.files_ok,
            "files_missing": self.files_missing,
            "files_size_mismatch": self.files_size_mismatch,
            "files_hash_mismatch": self.files_hash_mismatch,
            "files_not_committed": self.files_not_committed,
            "bytes_checked": self.bytes_checked,
            "problems": [{"path": p, "kind": k, "reason": r} for p, k, r in self.problems],
        }


class _ByteBudget:
    """At most budget_bytes of downloads held at once; a larger request waits for all of it."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.free_bytes = budget_bytes
        self.cond = asyncio.Condition()

    async def acquire(self, n_bytes: int) -> int:
        n_bytes = min(n_bytes, self.budget_bytes)
        async with self.cond:
            await self.cond.wait_for(lambda: self.free_bytes >= n_bytes)
            self.free_bytes -= n_bytes
        return n_bytes

    async def release(self, n_bytes: int) -> None:
        async with self.cond:
            self.free_bytes += n_bytes
            self.cond.notify_all()


def _find_job(journal: Journal, target: str) -> tuple[JobInfo, Destination]:
    """The job named by target (a job id, or a destination URL: its latest job)."""
    if "://" in target:
        dest = parse_destination(target)  # ConfigError for a malformed URL
        shown = dest.redacted()
        matches = [info for info in journal.list_jobs() if info.dest == shown]
        if not matches:
            raise ConfigError(shown, "no job in the journal copied to this destination")
        return matches[-1], dest  # list_jobs is oldest first
    try:
        info = journal.get_job(target)
    except JournalError:
        raise ConfigError(target, "no such job in the journal") from None
    return info, parse_destination(info.dest)


async def verify(
    target: str,
    *,
    journal_path: str | os.PathLike[str] | None = None,
    deep: bool = False,
    kek: Any = None,
    connection_string: str | None = None,
) -> VerifyReport:
    """Check every file the job committed against its blob; see the module docstring.

    Raises ConfigError (unknown job, missing journal, encrypted job with deep but no kek) and
    DestinationError / AuthError when the destination cannot be reached.
    """
    path = os.fspath(journal_path) if journal_path is not None else str(default_journal_path())
    if not os.path.exists(path):
        raise ConfigError(path, "no journal here (--journal PATH)")
    with Journal.open(path) as journal:
        info, dest = _find_job(journal, target)
        if deep and info.options.get("encrypt") and kek is None:
            raise ConfigError(info.job_id, "the job encrypted its blobs: --deep needs --kek-file")
        report = VerifyReport(job_id=info.job_id, dest=info.dest, deep=deep)
        summary = journal.summary(info.job_id)
        report.files_not_committed = summary.files_total - summary.files_copied
        credential = resolve_credential(dest, connection_string)
        async with BlobStore(
            dest, credential, retry=RetryPolicy(), max_connections=HEAD_CONCURRENCY
        ) as store:
            await _check_all(journal, info.job_id, store, report, deep, kek)
    return report


async def _check_all(
    journal: Journal,
    job_id: str,
    store: BlobStore,
    report: VerifyReport,
    deep: bool,
    kek: Any,
) -> None:
    slots = asyncio.Semaphore(HEAD_CONCURRENCY)
    downloads = asyncio.Semaphore(DEEP_CONCURRENCY)
    budget = _ByteBudget(DEEP_BUDGET_BYTES)
    running: set[asyncio.Task[None]] = set()
    failure: list[BaseException] = []

    async def one(record: FileRecord) -> None:
        try:
            await _check_one(record, store, report, deep, kek, downloads, budget)
        except PyEngineError as e:  # a destination error aborts the run: stop the others
            failure.append(e)
        finally:
            slots.release()

    loop = asyncio.get_running_loop()
    # iter_files pages through the journal: only the files in flight are held at once
    for record in journal.iter_files(job_id, states=("committed",)):
        await slots.acquire()
        if failure:
            break
        t = loop.create_task(one(record))
        running.add(t)
        t.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)
    if failure:
        raise failure[0]


async def _check_one(
    record: FileRecord,
    store: BlobStore,
    report: VerifyReport,
    deep: bool,
    kek: Any,
    downloads: asyncio.Semaphore,
    budget: _ByteBudget,
) -> None:
    report.files_checked += 1
    rel = record.rel_path
    props = await store.get_properties(record.blob_name)
    if props is None:
        report.add_problem(rel, "missing", f"blob {record.blob_name} does not exist")
        return
    want_bytes = encrypted_bytes(record.size_bytes) if record.encrypted else record.size_bytes
    if props.size_bytes != want_bytes:
        report.add_problem(
            rel, "size_mismatch", f"blob holds {props.size_bytes} bytes, expected {want_bytes}"
        )
        return
    want_hex = record.blake3_hex or ""
    got_hex = props.metadata.get("pyengine_blake3", "")
    keyed_hex = props.metadata.get(KEYED_DIGEST_METADATA)
    if keyed_hex is not None and want_hex:
        # an encrypted blob keeps its digest keyed by its content key: checkable with the KEK only
        got_hex = want_hex  # without a KEK: existence and size were checked, not the digest
        if kek is not None:
            encryptiondata = props.metadata.get("encryptiondata", "")
            cek = content_key_from_metadata(encryptiondata, kek)
            if cek is None:
                reason = "cannot decrypt: this KEK does not unwrap the blob's content key"
                report.add_problem(rel, "hash_mismatch", reason)
                return
            if keyed_digest_hex(cek, want_hex) != keyed_hex:
                got_hex = "keyed digest differs"
    if not want_hex or got_hex != want_hex:
        reason = (
            "the journal has no BLAKE3 for this file"
            if not want_hex
            else f"metadata BLAKE3 {got_hex[:16] or '(none)'}... != journal {want_hex[:16]}..."
        )
        report.add_problem(rel, "hash_mismatch", reason)
        return
    if deep:
        async with downloads:
            held = await budget.acquire(props.size_bytes)
            try:
                reason = await _deep_check(record, props.metadata, store, kek, want_hex)
            finally:
                await budget.release(held)
        if reason is not None:
            report.add_problem(rel, "hash_mismatch", reason)
            return
    report.files_ok += 1
    report.bytes_checked += record.size_bytes


async def _deep_check(
    record: FileRecord, metadata: dict[str, str], store: BlobStore, kek: Any, want_hex: str
) -> str | None:
    """None when the downloaded (decrypted) content hashes to want_hex, else the reason."""
    payload = await store.download(record.blob_name)
    if record.encrypted:
        encryptiondata = metadata.get("encryptiondata")
        if not encryptiondata:
            return "encrypted in the journal but the blob has no encryptiondata"
        if kek is None:
            return "encrypted blob: --deep needs --kek-file"
        from .crypto import decrypt_with_sdk

        try:
            payload = await asyncio.to_thread(decrypt_with_sdk, payload, encryptiondata, kek)
        except Exception as e:  # the SDK raises ValueError / InvalidTag / InvalidUnwrap
            return f"cannot decrypt ({type(e).__name__}): wrong key or altered bytes"
    if len(payload) != record.size_bytes:
        return f"content holds {len(payload)} bytes, expected {record.size_bytes}"
    got_hex = (await asyncio.to_thread(_core.blake3, payload)).hex()
    if got_hex != want_hex:
        return f"content BLAKE3 {got_hex[:16]}... != journal {want_hex[:16]}..."
    return None


def _print_table(report: VerifyReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    mode = "deep (downloaded and re-hashed)" if report.deep else "metadata"
    console.print(
        f"verify job {report.job_id} -> {report.dest}: {mode}", markup=False, soft_wrap=True
    )
    table = Table("", "files")
    table.add_row("ok", str(report.files_ok))
    table.add_row("missing", str(report.files_missing))
    table.add_row("size mismatch", str(report.files_size_mismatch))
    table.add_row("hash mismatch", str(report.files_hash_mismatch))
    table.add_row("not committed (not checked)", str(report.files_not_committed))
    console.print(table)
    for path, kind, reason in report.problems:
        # soft_wrap: one problem per line even on a pipe (rich wraps at 80 columns there)
        console.print(f"{kind}: {path}: {reason}", markup=False, soft_wrap=True)
    hidden = report.files_problem - len(report.problems)
    if hidden > 0:
        console.print(f"... and {hidden} more problems", markup=False)


def run_verify(args: Any) -> int:
    """The `pyengine verify` command: 0 all ok, 1 mismatches; usage errors raise ConfigError
    (exit 2 through cli.main)."""
    kek = None
    if args.kek_file:
        from .crypto import load_kek_file

        kek = load_kek_file(args.kek_file)
    coro: Awaitable[VerifyReport] = verify(
        args.target,
        journal_path=args.journal,
        deep=args.deep,
        kek=kek,
        connection_string=args.connection_string,
    )
    report = asyncio.run(coro)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
    else:
        _print_table(report)
    return EXIT_OK if report.ok else EXIT_MISMATCH


__all__ = ["VerifyReport", "run_verify", "verify"]
