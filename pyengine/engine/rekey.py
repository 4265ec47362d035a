"""Key rotation: re-wrap the content keys of encrypted blobs under a new key-encryption key.

A 21-year retention outlives any key: rotating the KEK must not mean re-sending petabytes. Each
blob's content key is unwrapped with the old KEK and wrapped again with the new one, and only the
blob's ``encryptiondata`` metadata is rewritten (Set Blob Metadata with If-Match, so a blob that
changed meanwhile is left alone). The ciphertext and its keyed digest stay valid: the content key
itself does not change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyengine.crypto import content_key_from_metadata, encryption_metadata
from pyengine.engine.metadata_names import ENCRYPTION_DATA, renamed
from pyengine.errors import PyEngineError
from pyengine.options import RetryPolicy
from pyengine.targets.azure_blob import BlobStore, parse_destination, resolve_credential
from pyengine.targets.base import StoredBlob, Target
from pyengine.targets.profile import choose_profile

log = logging.getLogger("pyengine")


@dataclass
class RekeyReport:
    #: re-wrapped under the new KEK
    blobs_rewrapped: int = 0
    #: already wrapped by the new KEK (a re-run after an interruption finds these)
    blobs_already_new: int = 0
    #: not encrypted: nothing to re-wrap
    blobs_plain: int = 0
    #: (blob name, one-line reason): wrapped by neither key, or the update failed
    problems: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "blobs_rewrapped": self.blobs_rewrapped,
            "blobs_already_new": self.blobs_already_new,
            "blobs_plain": self.blobs_plain,
            "problems": [{"blob": b, "reason": r} for b, r in self.problems],
            "dry_run": self.dry_run,
        }


async def rewrap_in_place(store: Target, props: StoredBlob, content_key: bytes, kek: Any) -> None:
    """The same content key wrapped by ``kek``, written with Set Blob Metadata (If-Match: a blob
    changed since ``props`` was read is left alone). No byte of content is sent. Set Blob
    Metadata replaces the whole set: a blob written under the old ``pyengine_*`` names moves to
    the letter-and-digit ones, which pass through proxies (metadata_names)."""
    metadata = renamed(props.metadata)
    metadata[ENCRYPTION_DATA] = encryption_metadata(content_key, kek)
    await store.set_metadata(props.name, metadata, if_match=props.etag)


async def rekey(
    dest: str,
    old_kek: Any,
    new_kek: Any,
    *,
    connection_string: str | None = None,
    dry_run: bool = False,
    concurrency: int = 16,
) -> RekeyReport:
    """Re-wrap every encrypted blob under ``dest`` (a container URL with optional prefix) whose
    content key ``old_kek`` wraps, so that ``new_kek`` unwraps it. Idempotent."""
    destination = parse_destination(dest)
    credential = resolve_credential(destination, connection_string)
    report = RekeyReport(dry_run=dry_run)

    retry = RetryPolicy()
    # a Data Box host gets the REST version it accepts (targets/profile.py)
    profile = choose_profile(None, urlsplit(destination.account_url).hostname or "")
    async with BlobStore(
        destination, credential, retry=retry, max_connections=concurrency, profile=profile
    ) as blob_store:
        store: Target = blob_store  # the rest sees the interface only (targets/base.py)
        await store.ensure_container(create=False)

        async def one(props: StoredBlob) -> None:
            encryptiondata = props.metadata.get(ENCRYPTION_DATA)
            if not encryptiondata:
                report.blobs_plain += 1
                return
            if content_key_from_metadata(encryptiondata, new_kek) is not None:
                report.blobs_already_new += 1
                return
            cek = content_key_from_metadata(encryptiondata, old_kek)
            if cek is None:
                report.problems.append((props.name, "wrapped by neither the old nor the new KEK"))
                return
            if dry_run:
                report.blobs_rewrapped += 1
                return
            try:
                await rewrap_in_place(store, props, cek, new_kek)
            except PyEngineError as e:
                report.problems.append((props.name, e.reason))
                return
            report.blobs_rewrapped += 1

        pending: set[asyncio.Task[None]] = set()
        try:
            async for props in store.list_blobs(destination.prefix, metadata=True):
                if len(pending) >= concurrency * 2:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    for t in done:
                        t.result()
                pending.add(asyncio.ensure_future(one(props)))
            for t in asyncio.as_completed(list(pending)):
                await t
            pending.clear()
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    for name, reason in report.problems:
        log.warning("%s: %s", name, reason)
    return report


__all__ = ["RekeyReport", "rekey"]
