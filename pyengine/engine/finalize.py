"""`pyengine finalize JOB --dest URL`: the second step of a Data Box migration (README
"Two-phase migration"). Once the device's data has landed in the storage account, every
committed file of the device job is checked at DEST and given what the device could not carry,
with control-plane calls only (no byte of content is sent again):

- a Data Box REST job (pyengine.targets.profile.DATABOX): the blob already has its metadata;
  the journal's pending properties (pyengine.state.pending: tags, tier, immutability, metadata)
  are stamped, and the pyengine metadata is rebuilt from the journal where the blob lacks it;
- a Data Box share job (pyengine.targets.local_share): the share carried bytes only; the whole
  metadata record, tier, tags and content headers come from the ShareState beside the journal.

Per blob: HEAD at DEST (the job's blob name with the job's prefix replaced by DEST's: the
account, container and prefix may differ from the device's); absent -> *missing*; another
stored size (an encrypted blob's CSE v2 size), another BLAKE3 or upload id in its metadata ->
*mismatched*; with ``deep`` (all, or a deterministic ``sample_percent``: finalize_report.in_sample)
the content is read back and re-hashed (pyengine.state.verify_deep) before anything is stamped.
Then Set Blob Metadata (the blob's own metadata merged with the wanted one, If-Match its ETag),
Set Blob Properties (content headers), Set Blob Tags, Set Blob Tier, and immutability / legal
hold last (an immutable blob takes no more metadata). Done blobs are marked (journal
``finalized_blobs``, or ShareState.mark_stamped): a re-run checks them again and stamps nothing,
so a killed run is resumed by running it again.

Once a run has found the job's blobs at DEST (any of them), the journal records that the job's
files live there (table ``job_locations``): `pyengine verify URL` of DEST then checks them
against this job's records instead of listing them as unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyengine.crypto import content_key_from_metadata
from pyengine.engine import metadata_names as mn
from pyengine.engine.finalize_report import FinalizeFinding, FinalizeReport, in_sample
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.plan import blob_metadata, encrypted_bytes
from pyengine.errors import AuthError, ConfigError, DestinationError, JournalError
from pyengine.options import CopyOptions, RetryPolicy
from pyengine.state import pending as pending_mod
from pyengine.state.journal import Journal, default_journal_path
from pyengine.state.records import FileRecord
from pyengine.state.verify_check import HEAD_CONCURRENCY
from pyengine.state.verify_deep import (
    DEEP_BLOBS_IN_FLIGHT,
    ByteBudget,
    deep_blake3,
    range_regions_for,
)
from pyengine.state.verify_report import BadBlob, VerifyReport
from pyengine.targets import blob_properties as bp
from pyengine.targets.azure_blob import BlobStore, parse_destination, resolve_credential
from pyengine.targets.open import destination, is_share, share_state_path
from pyengine.targets.share_state import ShareState

#: journal marks written in one transaction (a killed run re-stamps at most this many: harmless)
MARK_BATCH = 500
_IMMUTABILITY_PREFIXES = ("x-ms-immutability-", "x-ms-legal-hold")


@dataclass
class _Item:
    """One committed file of the job, as it should be at DEST."""

    #: the journal's record with blob_name, size_bytes, blake3_hex as at DEST
    record: FileRecord
    #: the name relative to the job's prefix (the sample's key)
    rel_name: str
    #: bytes the blob holds (CSE v2 size when encrypted)
    stored_bytes: int
    #: pyengine metadata the blob must carry (merged over its own); None: cannot be rebuilt
    #: without the KEK (encrypted), so the blob must already carry it
    metadata: dict[str, str] | None
    content_key: bytes | None = None
    tier: str | None = None
    tags: dict[str, str] | None = None
    content_headers: dict[str, str] = field(default_factory=dict)
    immutability: dict[str, str] = field(default_factory=dict)
    already_stamped: bool = False
    #: the job's own blob name (journal mark / ShareState row)
    job_blob: str = ""


def _split_headers(headers: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(content headers for Set Blob Properties, immutability / legal-hold headers)."""
    content, held = {}, {}
    for k, v in (headers or {}).items():
        if bp.is_content_header(k):
            content[k.lower()] = v
        elif k.lower().startswith(_IMMUTABILITY_PREFIXES):
            held[k.lower()] = v
    return content, held


def _wanted_metadata(record: FileRecord, content_key: bytes | None) -> dict[str, str] | None:
    if not record.blake3_hex:
        return None
    if record.encrypted and (content_key is None or not record.encryptiondata):
        return None
    return blob_metadata(
        size_bytes=record.size_bytes,
        mtime_ns=record.mtime_ns,
        blake3_hex=record.blake3_hex,
        upload_id=record.upload_id,
        job_id=record.job_id,
        encryptiondata=record.encryptiondata if record.encrypted else None,
        content_key=content_key,
        ctime_ns=record.ctime_ns,
    )


class _Finalizer:
    def __init__(
        self, store: BlobStore, report: FinalizeReport, memory_cap_bytes: int, deep: bool
    ) -> None:
        self.store = store
        self.report = report
        self.deep = deep
        self.budget = ByteBudget(memory_cap_bytes)
        self.regions_per_range = range_regions_for(memory_cap_bytes)
        self.deep_slots = asyncio.Semaphore(DEEP_BLOBS_IN_FLIGHT)

    async def one(self, item: _Item) -> bool:
        """Check one blob and stamp it; True when it is stamped (now or earlier)."""
        report, store, name = self.report, self.store, item.record.blob_name
        report.files_checked += 1
        try:
            state = await bp.head(store, name)
            if state is None:
                report.add("missing", name, "not at the destination")
                return False
            props = state.props
            md = {k.lower(): v for k, v in props.metadata.items()}
            if self._superseded(item, md):
                report.files_superseded += 1
                return False
            if props.size_bytes != item.stored_bytes:
                report.add(
                    "mismatched",
                    name,
                    f"blob holds {props.size_bytes} bytes, expected {item.stored_bytes}",
                )
                return False
            why = self._metadata_mismatch(item, md)
            if why:
                report.add("mismatched", name, why)
                return False
            sample = self.report.sample_percent
            chosen = sample is None or in_sample(item.rel_name, sample)
            if self.deep and chosen and not await self._deep_ok(item):
                return False
            if item.already_stamped:
                report.files_already_stamped += 1
                return True
            if item.metadata is None and meta_get(md, mn.UPLOAD_ID) is None:
                report.add(
                    "failed",
                    name,
                    "encrypted blob without its metadata: finalize needs --kek-file to rebuild it",
                )
                return False
            await self._stamp(item, state, md)
            report.files_stamped += 1
            return True
        except BadBlob as bad:  # deep: deleted or cut short while read back
            report.add("missing" if bad.kind == "missing" else "mismatched", name, bad.reason)
            return False
        except AuthError:
            raise
        except DestinationError as e:
            report.add("failed", name, e.reason)
            return False

    @staticmethod
    def _superseded(item: _Item, md: dict[str, str]) -> bool:
        """A later job (an online delta) committed another version of the file over the one the
        device brought: that job's journal and verify answer for it; nothing to stamp."""
        writer, upload = meta_get(md, mn.JOB_ID), meta_get(md, mn.UPLOAD_ID)
        return (
            writer is not None
            and writer != item.record.job_id
            and upload is not None
            and upload != item.record.upload_id
        )

    @staticmethod
    def _metadata_mismatch(item: _Item, md: dict[str, str]) -> str | None:
        """Why the blob's own metadata says it is another file version (None: it does not)."""
        want = item.metadata or {}
        have_upload = meta_get(md, mn.UPLOAD_ID)
        if have_upload is not None and have_upload != item.record.upload_id:
            return "holds another version of the file (its upload id differs from the journal's)"
        have_b3 = meta_get(md, mn.BLAKE3)
        if have_b3 is not None and want.get(mn.BLAKE3) not in (None, have_b3):
            return "metadata BLAKE3 differs from the journal's"
        return None

    async def _deep_ok(self, item: _Item) -> bool:
        record, name = item.record, item.record.blob_name
        if record.encrypted and item.content_key is None:
            self.report.add("failed", name, "encrypted blob: --deep needs --kek-file")
            return False
        # deep_blake3 counts the bytes it reads into a VerifyReport: one per blob read
        counter = VerifyReport(target=name, dest="", job_ids=[], deep=True)
        async with self.deep_slots:
            try:
                got = await deep_blake3(
                    self.store,
                    record,
                    item.content_key,
                    self.budget,
                    self.regions_per_range,
                    counter,
                )
            finally:
                self.report.bytes_read += counter.bytes_read
        self.report.files_deep_checked += 1
        if got != record.blake3_hex:
            self.report.add("mismatched", name, "content BLAKE3 differs from the journal's")
            return False
        return True

    async def _stamp(self, item: _Item, state: bp.BlobState, md: dict[str, str]) -> None:
        store, name = self.store, item.record.blob_name
        etag = state.props.etag
        merged = {**md, **(item.metadata or {})}
        if merged != md:
            etag = await store.set_metadata(name, merged, if_match=etag)
            self.report.requests_stamping += 1
        have = {k.lower(): v for k, v in state.content_headers.items()}
        if any(have.get(k) != v for k, v in item.content_headers.items()):
            await bp.set_content_headers(store, name, have, item.content_headers)
            self.report.requests_stamping += 1
        if item.tags:
            await bp.set_tags(store, name, item.tags)
            self.report.requests_stamping += 1
        if item.tier and (state.tier or "").lower() != item.tier.lower():
            await store.set_tier(name, item.tier)
            self.report.requests_stamping += 1
        if item.immutability:
            await bp.set_immutability(store, name, item.immutability)
            self.report.requests_stamping += 1


def _rest_items(
    journal: Journal, job_id: str, job_prefix: str, dest_prefix: str, kek: Any
) -> Iterator[_Item]:
    pending = pending_mod.pending_by_blob(journal, job_id)
    for record in journal.iter_files(job_id, states=("committed",)):
        rel = record.blob_name[len(job_prefix) :]
        props = pending.get(record.blob_name, {})
        cek = None
        if record.encrypted and kek is not None and record.encryptiondata:
            cek = content_key_from_metadata(record.encryptiondata, kek)
        metadata = _wanted_metadata(record, cek)
        if metadata is not None and isinstance(props.get("metadata"), dict):
            metadata.update(props["metadata"])
        tags = props.get("tags")
        if isinstance(tags, str):  # an x-ms-tags header value kept as sent
            from urllib.parse import parse_qsl

            tags = dict(parse_qsl(tags, keep_blank_values=True))
        yield _Item(
            record=dataclasses.replace(record, blob_name=dest_prefix + rel),
            rel_name=rel,
            stored_bytes=(
                encrypted_bytes(record.size_bytes) if record.encrypted else record.size_bytes
            ),
            metadata=metadata,
            content_key=cek,
            tier=props.get("tier"),
            tags=tags or None,
            immutability={k.lower(): v for k, v in (props.get("immutability") or {}).items()},
            already_stamped=pending_mod.is_finalized(journal, job_id, record.blob_name),
            job_blob=record.blob_name,
        )


def _share_items(
    journal: Journal, job_id: str, share: ShareState, job_prefix: str, dest_prefix: str
) -> Iterator[_Item | FinalizeFinding]:
    for record in journal.iter_files(job_id, states=("committed",)):
        rel = record.blob_name[len(job_prefix) :]
        rec = share.get(record.blob_name)
        if rec is None:
            yield FinalizeFinding(dest_prefix + rel, "missing", "no longer on the share")
            continue
        content, held = _split_headers(rec.headers)
        at_dest = dataclasses.replace(
            record,
            blob_name=dest_prefix + rel,
            size_bytes=rec.size_bytes,
            blake3_hex=meta_get(rec.metadata, mn.BLAKE3) or record.blake3_hex,
            upload_id=meta_get(rec.metadata, mn.UPLOAD_ID) or record.upload_id,
        )
        yield _Item(
            record=at_dest,
            rel_name=rel,
            stored_bytes=rec.size_bytes,
            metadata=dict(rec.metadata),
            tier=rec.tier,
            tags=rec.tags,
            content_headers=content,
            immutability=held,
            already_stamped=not rec.pending,
            job_blob=record.blob_name,
        )


async def finalize(
    job_id: str,
    dest_url: str,
    *,
    journal_path: str | os.PathLike[str] | None = None,
    connection_string: str | None = None,
    deep: bool = False,
    sample_percent: float | None = None,
    kek: Any = None,
    memory_cap_bytes: int = CopyOptions.memory_cap_bytes,
    on_event: Callable[[FinalizeFinding], None] | None = None,
) -> FinalizeReport:
    """Check and stamp the blobs of device job ``job_id`` at ``dest_url`` (module docstring).
    ``sample_percent`` implies ``deep``. Findings go into the report (and to ``on_event`` as
    found); they never raise. Raises ConfigError (no journal, unknown job, bad options) and
    DestinationError / AuthError when DEST cannot be used at all."""
    if sample_percent is not None and not 0 < sample_percent <= 100:
        raise ConfigError("--sample", "PERCENT must be above 0 and at most 100")
    deep = deep or sample_percent is not None
    path = os.fspath(journal_path) if journal_path is not None else str(default_journal_path())
    if not os.path.exists(path):
        raise ConfigError(path, "no journal here (--journal PATH)")
    dest = parse_destination(dest_url)
    with Journal.open(path) as journal:
        try:
            info = journal.get_job(job_id)
        except JournalError:
            raise ConfigError(job_id, "no such job in the journal") from None
        job_dest = destination(info.dest)
        if deep and kek is None and info.options.get("encrypt"):
            raise ConfigError(job_id, "encrypted blobs: --deep needs --kek-file")
        report = FinalizeReport(
            job_id=job_id,
            dest=dest.redacted(),
            deep=deep,
            sample_percent=sample_percent,
            on_finding=on_event,
        )
        share = None
        if is_share(job_dest):
            share = ShareState(share_state_path(job_dest, path))
            items: Iterator[Any] = _share_items(
                journal, job_id, share, job_dest.prefix, dest.prefix
            )
        else:
            pending_mod.ensure_table(journal)
            items = _rest_items(journal, job_id, job_dest.prefix, dest.prefix, kek)
        try:
            async with BlobStore(
                dest,
                resolve_credential(dest, connection_string),
                retry=RetryPolicy(),
                max_connections=HEAD_CONCURRENCY,
            ) as store:
                await _run(_Finalizer(store, report, memory_cap_bytes, deep), items, journal, share)
        finally:
            if share is not None:
                share.close()
        if report.files_checked == 0 or report.files_missing < report.files_checked:
            # From now on `verify URL` judges these blobs by this job's records. Not when none
            # was found: DEST is then most likely mistyped, and must not expect the job's files.
            journal.record_location(job_id, dest.redacted(), job_dest.prefix)
            report.location_recorded = True
    return report


async def _run(
    fin: _Finalizer, items: Iterator[Any], journal: Journal, share: ShareState | None
) -> None:
    """Every item, HEAD_CONCURRENCY at once; marks written in batches as blobs are stamped."""
    slots = asyncio.Semaphore(HEAD_CONCURRENCY)
    running: set[asyncio.Task[None]] = set()
    failure: list[BaseException] = []
    marks: list[str] = []
    job_id = fin.report.job_id

    def flush_marks() -> None:
        if share is None:
            pending_mod.mark_finalized(journal, job_id, marks)
        marks.clear()

    async def run(item: _Item) -> None:
        try:
            if await fin.one(item) and not item.already_stamped:
                if share is not None:
                    share.mark_stamped(item.job_blob)
                else:
                    marks.append(item.job_blob)
                    if len(marks) >= MARK_BATCH:
                        flush_marks()
        except BaseException as e:  # AuthError, or a journal that cannot be written
            failure.append(e)
        finally:
            slots.release()

    try:
        for item in items:
            if isinstance(item, FinalizeFinding):
                fin.report.files_checked += 1
                fin.report.add(item.kind, item.blob, item.reason)
                continue
            await slots.acquire()
            if failure:
                slots.release()
                break
            task = asyncio.get_running_loop().create_task(run(item))
            running.add(task)
            task.add_done_callback(running.discard)
        while running:
            await asyncio.gather(*list(running))
    finally:
        for task in running:
            task.cancel()
        flush_marks()
    if failure:
        raise failure[0]


__all__ = ["FinalizeFinding", "FinalizeReport", "finalize"]
