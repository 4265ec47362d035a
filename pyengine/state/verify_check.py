"""How one known blob is checked against its journal record: the metadata check (exists, size,
digest), the deep read when asked for, and the bookkeeping of a run's checks (bounded
concurrency, the first error that stops the run, blobs missing on purpose).

The metadata check: the blob's size is the plaintext size, or the CSE v2 size
(:func:`pyengine.engine.plan.encrypted_bytes`) when encrypted; and its digest matches the
journaled plaintext BLAKE3. A plain blob carries ``pyengineblake3`` (the plaintext BLAKE3); an
encrypted one carries ``pyenginekeyedblake3`` (:func:`pyengine.crypto.keyed_digest_hex` under its
content key), checkable only with the KEK; an encrypted blob written before keyed digests
carries ``pyengineblake3`` and is checked like a plain one. Blobs written before issue 16 carry
``pyengine_blake3`` instead, read through :func:`~pyengine.engine.metadata_names.meta_get`.
Without a KEK an encrypted blob's keyed digest is counted as not checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyengine.crypto import content_key_from_metadata, keyed_digest_hex
from pyengine.engine import metadata_names as mn
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.plan import encrypted_bytes
from pyengine.errors import AuthError, DestinationError, PyEngineError
from pyengine.state.journal import Journal
from pyengine.state.records import FileRecord, JobInfo
from pyengine.state.verify_deep import (
    DEEP_BLOBS_IN_FLIGHT,
    ByteBudget,
    deep_blake3,
    range_regions_for,
)
from pyengine.state.verify_report import BadBlob, VerifyReport
from pyengine.targets.azure_blob import BlobProps, BlobStore, Destination

#: Get Blob Properties requests in flight for `verify JOB` (a round trip each, no payload)
HEAD_CONCURRENCY = 32
#: metadata name of a plain blob's plaintext BLAKE3 (and of encrypted blobs written before keyed
#: digests); read with meta_get, which falls back to the old ``pyengine_blake3``
PLAIN_DIGEST_METADATA = mn.BLAKE3


def check_metadata(record: FileRecord, props: BlobProps, kek: Any) -> tuple[bytes | None, bool]:
    """(the content key when the blob is encrypted and kek unwraps it, whether the digest in the
    metadata was checked). Raises BadBlob with the reason when the blob does not match."""
    want_bytes = encrypted_bytes(record.size_bytes) if record.encrypted else record.size_bytes
    if props.size_bytes != want_bytes:
        detail = f" (CSE v2 of {record.size_bytes} plaintext bytes)" if record.encrypted else ""
        raise BadBlob(
            "damaged", f"blob holds {props.size_bytes} bytes, expected {want_bytes}{detail}"
        )
    want_hex = record.blake3_hex
    if not want_hex:
        raise BadBlob("damaged", "the journal has no BLAKE3 for this file")
    metadata = props.metadata
    content_key = None
    if record.encrypted:
        encryptiondata = metadata.get(mn.ENCRYPTION_DATA)
        if not encryptiondata:
            raise BadBlob("damaged", "encrypted in the journal, but the blob has no encryptiondata")
        if kek is not None:
            content_key = content_key_from_metadata(encryptiondata, kek)
            if content_key is None:
                raise BadBlob(
                    "damaged", "cannot decrypt: this KEK does not unwrap the blob's content key"
                )
        keyed_hex = meta_get(metadata, mn.KEYED_BLAKE3)
        if keyed_hex is not None:
            if content_key is None:
                return None, False  # existence and size only: the keyed digest needs the KEK
            if keyed_digest_hex(content_key, want_hex) != keyed_hex:
                raise BadBlob("damaged", "keyed BLAKE3 in metadata does not match the journal's")
            return content_key, True
        # written before keyed digests: the plaintext BLAKE3 in clear (no digest is printed)
        plain_hex = meta_get(metadata, PLAIN_DIGEST_METADATA)
        if not plain_hex:
            raise BadBlob("damaged", "no BLAKE3 (keyed or plain) in the blob's metadata")
        if plain_hex != want_hex:
            raise BadBlob("damaged", "metadata BLAKE3 does not match the journal's")
        return content_key, True
    plain_hex = meta_get(metadata, PLAIN_DIGEST_METADATA)
    if not plain_hex:
        raise BadBlob("damaged", "no BLAKE3 in the blob's metadata")
    if plain_hex != want_hex:
        raise BadBlob(
            "damaged", f"metadata BLAKE3 {plain_hex[:16]}... != journal {want_hex[:16]}..."
        )
    return None, True


class BlobChecker:
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
        deleters: list[tuple[JobInfo, Destination]],
    ) -> None:
        self.journal = journal
        self.store = store
        self.report = report
        self.deep = deep
        self.kek = kek
        self.budget = ByteBudget(memory_cap_bytes)
        self.regions_per_range = range_regions_for(memory_cap_bytes)
        self.slots = asyncio.Semaphore(DEEP_BLOBS_IN_FLIGHT if deep else HEAD_CONCURRENCY)
        self.running: set[asyncio.Task[None]] = set()
        self.failure: list[BaseException] = []
        self.created = {info.job_id: (info.created_ns, info.job_id) for info in all_jobs}
        #: completed --delete-destination jobs into this container, with their destinations:
        #: a known blob missing after one of them may have been removed on purpose
        self.deleters = deleters

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
            content_key, digest_checked = check_metadata(record, props, self.kek)
            if self.deep:
                if record.encrypted and content_key is None:  # only a KEK-less run gets here
                    raise BadBlob("damaged", "encrypted blob: --deep needs --kek-file")
                got_hex = await deep_blake3(
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
                    raise BadBlob("damaged", shown)
                digest_checked = True
        except BadBlob as bad:
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
