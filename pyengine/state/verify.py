"""`pyengine verify`: check a destination against what the job store (journal) says is there.

Two targets:

- ``DEST`` (a blob URL): every blob the journal knows under DEST, i.e. the latest committed
  version of every path of every job whose destination is DEST or a prefix under it, merged with
  one listing of DEST (List Blobs with metadata: no request per blob). A job into a prefix
  above DEST counts for its blobs under DEST. A blob there that no job
  committed is *unknown*; a known blob that is not there is *missing*, unless a later completed
  ``--delete-destination`` job without that file removed it on purpose (its source was gone).
- ``JOB`` (a job id): that job's committed files, one Get Blob Properties each.

Per blob, the metadata check: the blob exists; its size is the plaintext size, or the CSE v2
size (:func:`pyengine.engine.plan.encrypted_bytes`) when encrypted; and its digest matches the
journaled plaintext BLAKE3. A plain blob carries ``pyengine_blake3`` (the plaintext BLAKE3); an
encrypted one
carries ``pyenginekeyedblake3`` (:func:`pyengine.crypto.keyed_digest_hex` under its content key),
checkable only with the KEK; an encrypted blob written before keyed digests carries
``pyengine_blake3`` and is checked like a plain one. Without a KEK an encrypted blob's keyed
digest is counted as not checked.

``deep`` reads every byte back: ranged GETs (``RANGE_REGIONS`` x 4 MiB each, ``RANGES_IN_FLIGHT``
per blob, ``DEEP_BLOBS_IN_FLIGHT`` blobs) under one byte budget (the copy's memory cap), each
region of an encrypted blob checked for its nonce (= its index) and decrypted with AES-256-GCM
(tag checked), and the plaintext hashed incrementally with BLAKE3. Memory is bounded by the cap,
not by the blob size. A bad blob never stops the run: each finding is one line.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyengine.crypto import (
    KEYED_DIGEST_METADATA,
    NONCE_BYTES,
    TAG_BYTES,
    content_key_from_metadata,
    keyed_digest_hex,
)
from pyengine.engine.plan import encrypted_bytes
from pyengine.engine.scan import display_path
from pyengine.errors import AuthError, ConfigError, DestinationError, PyEngineError
from pyengine.options import REGION_BYTES, CopyOptions, RetryPolicy
from pyengine.state.journal import FileRecord, JobInfo, Journal, default_journal_path
from pyengine.targets.azure_blob import (
    BlobProps,
    BlobStore,
    Destination,
    parse_destination,
    resolve_credential,
)

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

#: findings kept in the report object (--json); the rest are counted (each was printed as found)
MAX_FINDINGS_KEPT = 10_000
#: Get Blob Properties requests in flight for `verify JOB` (a round trip each, no payload)
HEAD_CONCURRENCY = 32
#: deep: blobs read at once, and ranged GETs in flight per blob
DEEP_BLOBS_IN_FLIGHT = 4
RANGES_IN_FLIGHT = 4
#: deep: plaintext regions per ranged GET (8 MiB): a few MiB each, as the brief asks; a range
#: holds whole CSE v2 regions so each one decrypts on its own
RANGE_REGIONS = 2
#: a range in flight is charged twice its stored size against the memory cap: aiohttp joins the
#: received chunks into one bytes object (2x for a moment), then the plaintext sits beside it
RANGE_COST_FACTOR = 2
STORED_REGION_BYTES = REGION_BYTES + NONCE_BYTES + TAG_BYTES
#: metadata name of a plain blob's plaintext BLAKE3 (and of encrypted blobs written before keyed
#: digests)
PLAIN_DIGEST_METADATA = "pyengine_blake3"

KINDS = ("damaged", "missing", "unknown", "unreadable")


@dataclass(frozen=True)
class Finding:
    #: full blob name within the container
    blob: str
    #: one of KINDS
    kind: str
    #: one line
    reason: str

    def line(self) -> str:
        return f"{self.kind}: {display_path(self.blob)}: {self.reason}"


@dataclass
class VerifyReport:
    #: the job id or the redacted destination URL that was asked for
    target: str
    #: redacted destination URL that was listed (DEST) or the job's destination (JOB)
    dest: str
    #: jobs whose committed files were checked (oldest first)
    job_ids: list[str]
    deep: bool
    #: known blobs looked at (ok + damaged + missing + unreadable)
    files_checked: int = 0
    files_ok: int = 0
    files_damaged: int = 0
    files_missing: int = 0
    files_unreadable: int = 0
    #: blobs under DEST that no job of the journal committed (DEST target only)
    blobs_unknown: int = 0
    #: ok blobs that are encrypted and whose keyed digest was not checked (no KEK): existence and
    #: size only (a deep run always checks the digest)
    files_digest_unchecked: int = 0
    #: known blobs that a later --delete-destination job removed because their source was gone
    files_deleted_at_source: int = 0
    #: files the job did not commit (failed, skipped, pending): not verified (JOB target only)
    files_not_committed: int = 0
    #: plaintext bytes of the blobs found ok
    bytes_checked: int = 0
    #: bytes downloaded (deep)
    bytes_read: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_left_out: int = 0
    #: called with each finding as it is found (the CLI prints it at once)
    on_finding: Callable[[Finding], None] | None = field(default=None, repr=False, compare=False)

    @property
    def findings_total(self) -> int:
        return self.files_damaged + self.files_missing + self.files_unreadable + self.blobs_unknown

    @property
    def ok(self) -> bool:
        return self.findings_total == 0

    def add(self, kind: str, blob: str, reason: str) -> None:
        finding = Finding(blob, kind, " ".join(reason.split()))
        if kind == "damaged":
            self.files_damaged += 1
        elif kind == "missing":
            self.files_missing += 1
        elif kind == "unreadable":
            self.files_unreadable += 1
        elif kind == "unknown":
            self.blobs_unknown += 1
        else:
            raise ValueError(f"unknown finding kind {kind!r}")
        if len(self.findings) < MAX_FINDINGS_KEPT:
            self.findings.append(finding)
        else:
            self.findings_left_out += 1
        if self.on_finding is not None:
            self.on_finding(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "verify",
            "target": self.target,
            "dest": self.dest,
            "job_ids": self.job_ids,
            "deep": self.deep,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "files_ok": self.files_ok,
            "files_damaged": self.files_damaged,
            "files_missing": self.files_missing,
            "files_unreadable": self.files_unreadable,
            "blobs_unknown": self.blobs_unknown,
            "files_digest_unchecked": self.files_digest_unchecked,
            "files_deleted_at_source": self.files_deleted_at_source,
            "files_not_committed": self.files_not_committed,
            "bytes_checked": self.bytes_checked,
            "bytes_read": self.bytes_read,
            "findings": [
                {"blob": display_path(f.blob), "kind": f.kind, "reason": f.reason}
                for f in self.findings
            ],
            "findings_left_out": self.findings_left_out,
        }


class _Bad(Exception):
    """A finding about one blob, raised inside its check."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


# --- which jobs, which blobs -------------------------------------------------------------------


def _overlaps(dest: Destination, job_dest: Destination) -> bool:
    """Whether a job into job_dest may have written blobs under dest: the same container, and
    one prefix within the other (a job into the container's root wrote under every prefix)."""
    return (
        dest.account_url == job_dest.account_url
        and dest.container == job_dest.container
        and (job_dest.prefix.startswith(dest.prefix) or dest.prefix.startswith(job_dest.prefix))
    )


def _job_dest(info: JobInfo) -> Destination | None:
    try:
        return parse_destination(info.dest)
    except ConfigError:
        return None


def _select_jobs(jobs: list[JobInfo], target: str) -> tuple[list[JobInfo], Destination, bool]:
    """(the jobs to check, the destination to read, whether target named a destination)."""
    if "://" in target:
        dest = parse_destination(target)  # ConfigError for a malformed URL
        chosen = [
            info for info in jobs if (d := _job_dest(info)) is not None and _overlaps(dest, d)
        ]
        if not chosen:
            raise ConfigError(dest.redacted(), "no job in the journal copied to this destination")
        return chosen, dest, True
    for info in jobs:
        if info.job_id == target:
            dest = _job_dest(info)
            if dest is None:
                raise ConfigError(target, f"the job's destination is not a blob URL: {info.dest}")
            return [info], dest, False
    raise ConfigError(target, "no such job in the journal")


# --- the metadata check ------------------------------------------------------------------------


def _check_metadata(record: FileRecord, props: BlobProps, kek: Any) -> tuple[bytes | None, bool]:
    """(the content key when the blob is encrypted and kek unwraps it, whether the digest in the
    metadata was checked). Raises _Bad with the reason when the blob does not match."""
    want_bytes = encrypted_bytes(record.size_bytes) if record.encrypted else record.size_bytes
    if props.size_bytes != want_bytes:
        detail = f" (CSE v2 of {record.size_bytes} plaintext bytes)" if record.encrypted else ""
        raise _Bad("damaged", f"blob holds {props.size_bytes} bytes, expected {want_bytes}{detail}")
    want_hex = record.blake3_hex
    if not want_hex:
        raise _Bad("damaged", "the journal has no BLAKE3 for this file")
    metadata = props.metadata
    content_key = None
    if record.encrypted:
        encryptiondata = metadata.get("encryptiondata")
        if not encryptiondata:
            raise _Bad("damaged", "encrypted in the journal, but the blob has no encryptiondata")
        if kek is not None:
            content_key = content_key_from_metadata(encryptiondata, kek)
            if content_key is None:
                raise _Bad(
                    "damaged", "cannot decrypt: this KEK does not unwrap the blob's content key"
                )
        keyed_hex = metadata.get(KEYED_DIGEST_METADATA)
        if keyed_hex is not None:
            if content_key is None:
                return None, False  # existence and size only: the keyed digest needs the KEK
            if keyed_digest_hex(content_key, want_hex) != keyed_hex:
                raise _Bad("damaged", "keyed BLAKE3 in metadata does not match the journal's")
            return content_key, True
        # written before keyed digests: the plaintext BLAKE3 in clear (no digest is printed)
        plain_hex = metadata.get(PLAIN_DIGEST_METADATA)
        if not plain_hex:
            raise _Bad("damaged", "no BLAKE3 (keyed or plain) in the blob's metadata")
        if plain_hex != want_hex:
            raise _Bad("damaged", "metadata BLAKE3 does not match the journal's")
        return content_key, True
    plain_hex = metadata.get(PLAIN_DIGEST_METADATA)
    if not plain_hex:
        raise _Bad("damaged", "no BLAKE3 in the blob's metadata")
    if plain_hex != want_hex:
        raise _Bad("damaged", f"metadata BLAKE3 {plain_hex[:16]}... != journal {want_hex[:16]}...")
    return None, True


# --- the deep check ----------------------------------------------------------------------------


class _ByteBudget:
    """Bytes of ranges in flight, over every blob, at most cap_bytes. One event loop: no lock."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.free_bytes = cap_bytes
        self._released = asyncio.Event()

    def cost(self, n_bytes: int) -> int:
        # a range larger than the whole cap still goes, alone (else it could never go)
        return min(n_bytes, self.cap_bytes)

    def try_take(self, n_bytes: int) -> bool:
        if self.free_bytes < n_bytes:
            return False
        self.free_bytes -= n_bytes
        return True

    def give(self, n_bytes: int) -> None:
        self.free_bytes += n_bytes
        self._released.set()

    async def wait_release(self) -> None:
        self._released.clear()
        await self._released.wait()


def range_regions_for(memory_cap_bytes: int) -> int:
    """Regions per GET: RANGE_REGIONS, or 1 where the cap would not hold two such ranges."""
    two_ranges = 2 * RANGE_COST_FACTOR * RANGE_REGIONS * STORED_REGION_BYTES
    return RANGE_REGIONS if memory_cap_bytes >= two_ranges else 1


def _ranges(
    plain_bytes: int, encrypted: bool, regions_per_range: int
) -> Iterator[tuple[int, int, int, list[int]]]:
    """(stored offset, stored length, first region index, plaintext bytes of each region)."""
    n_regions = -(-plain_bytes // REGION_BYTES)
    overhead = NONCE_BYTES + TAG_BYTES if encrypted else 0
    for first in range(0, n_regions, regions_per_range):
        last = min(first + regions_per_range, n_regions)
        lengths = [min(REGION_BYTES, plain_bytes - i * REGION_BYTES) for i in range(first, last)]
        offset = first * (REGION_BYTES + overhead)
        yield offset, sum(lengths) + overhead * len(lengths), first, lengths


def decrypt_regions(
    aes: AESGCM, stored: bytes | memoryview, first_region: int, plain_lengths: list[int]
) -> list[bytes]:
    """The plaintext of consecutive CSE v2 regions ``nonce(12) | ciphertext | tag(16)`` starting
    at region ``first_region``. Raises _Bad naming the region when its nonce is not its index
    (12 bytes big-endian) or its GCM tag does not match (altered bytes)."""
    view = memoryview(stored)
    out = []
    pos = 0
    for k, plain_len in enumerate(plain_lengths):
        index = first_region + k
        region = view[pos : pos + NONCE_BYTES + plain_len + TAG_BYTES]
        nonce = bytes(region[:NONCE_BYTES])
        if nonce != index.to_bytes(NONCE_BYTES, "big"):
            raise _Bad("damaged", f"region {index}: its nonce is not its index (altered bytes)")
        try:
            out.append(aes.decrypt(nonce, region[NONCE_BYTES:], None))
        except InvalidTag:
            raise _Bad(
                "damaged", f"region {index}: AES-GCM tag does not match (altered bytes)"
            ) from None
        pos += len(region)
    return out


async def _deep_blake3(
    store: BlobStore,
    record: FileRecord,
    content_key: bytes | None,
    budget: _ByteBudget,
    regions_per_range: int,
    report: VerifyReport,
) -> str:
    """The plaintext BLAKE3 (hex) of the blob, read in ranges and decrypted on the way."""
    aes = AESGCM(content_key) if content_key is not None else None
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    name = record.blob_name

    async def fetch(offset: int, length: int, first: int, lengths: list[int]) -> list[bytes]:
        body = await store.download_range(name, offset, length)
        if body is None:
            raise _Bad("missing", "deleted while it was being verified")
        report.bytes_read += len(body)
        if len(body) != length:
            raise _Bad("damaged", f"shorter than its size: {len(body)} bytes at offset {offset}")
        if aes is None:
            return [body]
        return await asyncio.to_thread(decrypt_regions, aes, body, first, lengths)

    pending: deque[tuple[asyncio.Task[list[bytes]], int]] = deque()

    async def consume() -> None:
        task, cost = pending.popleft()
        try:
            for piece in await task:
                await asyncio.to_thread(hasher.update, piece)
        finally:
            budget.give(cost)

    loop = asyncio.get_running_loop()
    try:
        for offset, length, first, lengths in _ranges(
            record.size_bytes, aes is not None, regions_per_range
        ):
            cost = budget.cost(RANGE_COST_FACTOR * length)
            while len(pending) >= RANGES_IN_FLIGHT:
                await consume()
            # Hash what this blob already holds before waiting for budget: a blob never waits
            # while holding budget it could free, so blobs sharing the budget cannot deadlock.
            while not budget.try_take(cost):
                if pending:
                    await consume()
                else:
                    await budget.wait_release()
            pending.append((loop.create_task(fetch(offset, length, first, lengths)), cost))
        while pending:
            await consume()
    finally:
        for task, cost in pending:
            task.cancel()
            budget.give(cost)
        await asyncio.gather(*(t for t, _ in pending), return_exceptions=True)
    return hasher.hexdigest()


# --- the run -----------------------------------------------------------------------------------


class _Checker:
    """Checks known blobs (metadata at once, deep ones as bounded tasks) and records findings."""

    def __init__(
        self,
        journal: Journal,
        store: BlobStore,
        report: VerifyReport,
        *,
        deep: bool,
        kek: Any,
        memory_cap_bytes: int,
        all_jobs: list[JobInfo],
    ) -> None:
        self.journal = journal
        self.store = store
        self.report = report
        self.deep = deep
        self.kek = kek
        self.budget = _ByteBudget(memory_cap_bytes)
        self.regions_per_range = range_regions_for(memory_cap_bytes)
        self.slots = asyncio.Semaphore(DEEP_BLOBS_IN_FLIGHT if deep else HEAD_CONCURRENCY)
        self.running: set[asyncio.Task[None]] = set()
        self.failure: list[BaseException] = []
        self.created = {info.job_id: (info.created_ns, info.job_id) for info in all_jobs}
        # completed jobs into this container that deleted blobs whose source was gone (any job
        # of the journal: one to a prefix under DEST or above it may have removed a blob)
        self.deleters = [
            (info, d)
            for info in all_jobs
            if info.options.get("delete_destination")
            and info.status == "completed"
            and (d := _job_dest(info)) is not None
            and d.account_url == store.dest.account_url
            and d.container == store.dest.container
        ]

    async def spawn(self, coro: Any) -> None:
        """Run coro as a task once a slot is free; re-raise the first aborting error."""
        await self.slots.acquire()
        if self.failure:
            self.slots.release()
            coro.close()
            raise self.failure[0]

        async def run() -> None:
            try:
                await coro
            except PyEngineError as e:  # the destination cannot be used at all: stop the run
                self.failure.append(e)
            finally:
                self.slots.release()

        task = asyncio.get_running_loop().create_task(run())
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def drain(self) -> None:
        while self.running:
            await asyncio.gather(*list(self.running))
        if self.failure:
            raise self.failure[0]

    async def check(self, record: FileRecord, props: BlobProps) -> None:
        """The checks of one known blob that exists (props from a listing or a HEAD)."""
        report = self.report
        report.files_checked += 1
        try:
            content_key, digest_checked = _check_metadata(record, props, self.kek)
            if self.deep:
                if record.encrypted and content_key is None:  # only a KEK-less run gets here
                    raise _Bad("damaged", "encrypted blob: --deep needs --kek-file")
                got_hex = await _deep_blake3(
                    self.store,
                    record,
                    content_key,
                    self.budget,
                    self.regions_per_range,
                    report,
                )
                if got_hex != record.blake3_hex:
                    shown = (
                        "decrypted content's BLAKE3 differs from the journal's"
                        if record.encrypted
                        else f"content BLAKE3 {got_hex[:16]}... != journal "
                        f"{(record.blake3_hex or '')[:16]}..."
                    )
                    raise _Bad("damaged", shown)
                digest_checked = True
        except _Bad as bad:
            report.add(bad.kind, record.blob_name, bad.reason)
            return
        except AuthError:
            raise
        except DestinationError as e:  # this blob could not be read (after the retries)
            report.add("unreadable", record.blob_name, e.reason)
            return
        report.files_ok += 1
        report.bytes_checked += record.size_bytes
        if not digest_checked:
            report.files_digest_unchecked += 1

    def missing(self, record: FileRecord) -> None:
        if self._deleted_by(record) is not None:
            self.report.files_deleted_at_source += 1
            return
        self.report.files_checked += 1
        self.report.add(
            "missing", record.blob_name, f"committed by job {record.job_id}, not at the destination"
        )

    def _deleted_by(self, record: FileRecord) -> str | None:
        """A later completed --delete-destination job covering the blob that did not have its
        file: the source was gone, so the blob was removed on purpose."""
        after = self.created.get(record.job_id)
        for info, dest in self.deleters:
            if (
                after is not None
                and (info.created_ns, info.job_id) > after
                and record.blob_name.startswith(dest.prefix)
                and not self.journal.job_has_blob(info.job_id, record.blob_name)
            ):
                return info.job_id
        return None


async def _check_dest(checker: _Checker, dest: Destination, job_ids: list[str]) -> None:
    """Merge the journal's known blobs with one listing of DEST, both in name order."""
    records = checker.journal.iter_committed_by_blob(job_ids, name_prefix=dest.prefix)
    listing: AsyncIterator[BlobProps] = checker.store.list_blobs(dest.prefix, metadata=True)
    record = next(records, None)
    props = await anext(listing, None)
    last_listed = ""
    while record is not None or props is not None:
        if props is not None:
            if props.name < last_listed:
                # The merge needs the listing in code-point order (the order of the service
                # and of Azurite for every name that is not a supplementary-plane character).
                raise DestinationError(
                    dest.redacted(),
                    f"the listing is not in name order at {display_path(props.name)!r}",
                )
            last_listed = props.name
        if props is None or (record is not None and record.blob_name < props.name):
            assert record is not None
            checker.missing(record)
            record = next(records, None)
        elif record is None or props.name < record.blob_name:
            _unknown(checker.report, props, set(job_ids))
            props = await anext(listing, None)
        else:
            lowered = BlobProps(
                name=props.name,
                size_bytes=props.size_bytes,
                etag=props.etag,
                metadata={k.lower(): v for k, v in props.metadata.items()},
            )
            if checker.deep:
                await checker.spawn(checker.check(record, lowered))
            else:  # no request: the listing brought the metadata
                await checker.check(record, lowered)
            record = next(records, None)
            props = await anext(listing, None)
        if checker.failure:
            break
    await checker.drain()


def _unknown(report: VerifyReport, props: BlobProps, job_ids: set[str]) -> None:
    writer = {k.lower(): v for k, v in props.metadata.items()}.get("pyengine_job_id")
    if writer in job_ids:
        reason = f"written by job {writer}, never journaled as committed (resume that job)"
    elif writer:
        reason = f"written by job {writer}, which this journal does not hold"
    else:
        reason = "not written by any job of this journal"
    report.add("unknown", props.name, reason)


async def _check_job(checker: _Checker, job_id: str) -> None:
    """One HEAD per committed file of the job (a listing could be far larger than the job)."""

    async def one(record: FileRecord) -> None:
        props = await checker.store.get_properties(record.blob_name)
        if props is None:
            checker.missing(record)
        else:
            await checker.check(record, props)

    # iter_files pages through the journal: only the files in flight are held at once
    for record in checker.journal.iter_files(job_id, states=("committed",)):
        await checker.spawn(one(record))
        if checker.failure:
            break
    await checker.drain()


async def verify(
    target: str,
    *,
    journal_path: str | os.PathLike[str] | None = None,
    deep: bool = False,
    kek: Any = None,
    connection_string: str | None = None,
    memory_cap_bytes: int = CopyOptions.memory_cap_bytes,
    on_finding: Callable[[Finding], None] | None = None,
) -> VerifyReport:
    """Check a destination (``target`` = a blob URL) or one job (``target`` = a job id) against
    the journal; see the module docstring. Findings go into the report (and to ``on_finding``
    as they are found); they never raise.

    Raises ConfigError (unknown job or destination, missing journal, --deep over encrypted jobs
    without a kek) and DestinationError / AuthError when the destination cannot be used.
    """
    path = os.fspath(journal_path) if journal_path is not None else str(default_journal_path())
    if not os.path.exists(path):
        raise ConfigError(path, "no journal here (--journal PATH)")
    if memory_cap_bytes <= 0:
        raise ConfigError("--memory-cap", "must be positive")
    with Journal.open(path) as journal:
        all_jobs = journal.list_jobs()
        jobs, dest, by_dest = _select_jobs(all_jobs, target)
        if deep and kek is None and any(info.options.get("encrypt") for info in jobs):
            subject = dest.redacted() if by_dest else jobs[0].job_id
            raise ConfigError(subject, "encrypted blobs: --deep needs --kek-file")
        report = VerifyReport(
            target=dest.redacted() if by_dest else target,
            dest=dest.redacted(),
            job_ids=[info.job_id for info in jobs],
            deep=deep,
            on_finding=on_finding,
        )
        if not by_dest:
            summary = journal.summary(jobs[0].job_id)
            report.files_not_committed = summary.files_total - summary.files_copied
        # the user's URL (it may carry a SAS) for a destination; the journaled one for a job
        credential = resolve_credential(dest, connection_string)
        async with BlobStore(
            dest, credential, retry=RetryPolicy(), max_connections=HEAD_CONCURRENCY
        ) as store:
            checker = _Checker(
                journal,
                store,
                report,
                deep=deep,
                kek=kek,
                memory_cap_bytes=memory_cap_bytes,
                all_jobs=all_jobs,
            )
            if by_dest:
                await _check_dest(checker, dest, report.job_ids)
            else:
                await _check_job(checker, jobs[0].job_id)
    return report


# --- presentation ------------------------------------------------------------------------------


def _print_summary(report: VerifyReport, kek_given: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    mode = "deep (read back, decrypted, re-hashed)" if report.deep else "metadata"
    jobs = ", ".join(report.job_ids)
    console.print(f"verify {report.target}: {mode}; jobs {jobs}", markup=False, soft_wrap=True)
    table = Table("", "blobs")
    table.add_row("ok", str(report.files_ok))
    table.add_row("damaged", str(report.files_damaged))
    table.add_row("missing", str(report.files_missing))
    table.add_row("unknown", str(report.blobs_unknown))
    if report.files_unreadable:
        table.add_row("unreadable", str(report.files_unreadable))
    if report.files_deleted_at_source:
        table.add_row("deleted at source (not checked)", str(report.files_deleted_at_source))
    if report.files_not_committed:
        table.add_row("not committed (not checked)", str(report.files_not_committed))
    console.print(table)
    if report.files_digest_unchecked:
        why = "this run had no --kek-file" if not kek_given else "no KEK"
        console.print(
            f"{report.files_digest_unchecked} encrypted blobs: existence and size checked, "
            f"digest not checked ({why})",
            markup=False,
            soft_wrap=True,
        )


def run_verify(args: Any) -> int:
    """The `pyengine verify` command: 0 all ok, 1 any finding; usage errors raise ConfigError
    (exit 2 through cli.main)."""
    kek = None
    if args.kek_file:
        from pyengine.crypto import load_kek_file

        kek = load_kek_file(args.kek_file)

    def print_finding(finding: Finding) -> None:
        # one line each, as found: an operator sees them during a long deep run
        print(finding.line(), flush=True)

    report = asyncio.run(
        verify(
            args.target,
            journal_path=args.journal,
            deep=args.deep,
            kek=kek,
            connection_string=args.connection_string,
            memory_cap_bytes=getattr(args, "memory_cap", CopyOptions.memory_cap_bytes),
            on_finding=None if args.json else print_finding,
        )
    )
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
    else:
        _print_summary(report, kek is not None)
    return EXIT_OK if report.ok else EXIT_FINDINGS


__all__ = ["Finding", "VerifyReport", "decrypt_regions", "run_verify", "verify"]
