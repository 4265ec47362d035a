"""Per file, what to do: nothing (already at the destination, or up to date: --check, with a
key re-wrap at most), resume (which staged blocks still count, under which content key), or send.

The rules that keep encryption safe live here:
- one job never mixes encryption modes or key-encryption keys (check_same_encryption);
- a blob counts as up to date only when stored the way this run asks (the same mode, and a
  content key this run's KEK unwraps);
- a resumed encrypted file keeps its journaled content key only when every staged block still
  holds the bytes it was encrypted from (region nonces repeat per key: see
  Decider._staged_blocks_still_match); any doubt starts the file over under a new key.
"""

from __future__ import annotations

import logging
from typing import Any

from pyengine.crypto import (
    content_key_from_metadata,
    encryption_metadata,
    keyed_digest_hex,
    new_content_key,
)
from pyengine.engine import metadata_names as mn
from pyengine.engine.context import FileTask, JobContext
from pyengine.engine.delta import UNKNOWN
from pyengine.engine.metadata_names import meta_get
from pyengine.engine.plan import block_id
from pyengine.engine.rekey import rewrap_in_place
from pyengine.engine.scan import SourceFile, display_path
from pyengine.engine.send import Sender
from pyengine.errors import ConfigError
from pyengine.options import CopyOptions
from pyengine.state.journal import FileRecord
from pyengine.targets.base import StoredBlob

log = logging.getLogger("pyengine")


def check_same_encryption(job: Any, options: CopyOptions) -> None:
    """A resumed job keeps the encryption it started with: one job never mixes modes or
    keys (exit 2 naming the option). `job` is the journal's row of the job being resumed."""
    started = job.options
    opts = options
    if bool(started.get("encrypt")) != opts.encrypt:
        was = "with" if started.get("encrypt") else "without"
        raise ConfigError(
            "--encrypt",
            f"job {job.job_id} was started {was} --encrypt; resume it with the same "
            "options, or start a new job (another --journal)",
        )
    kek_id = opts.kek.get_kid() if opts.kek is not None else None
    if opts.encrypt and started.get("kek_id") != kek_id:
        raise ConfigError(
            "--kek-file",
            f"job {job.job_id} was started with another key-encryption key; resume it with "
            "that key, or start a new job (another --journal)",
        )


class Decider:
    """Answers, for each file, whether and how it is sent. Reads that send nothing (a BLAKE3 for
    --check=hash, the staged-block check pass) go through the sender's pipeline."""

    def __init__(self, ctx: JobContext, sender: Sender) -> None:
        self.ctx = ctx
        self.sender = sender

    # --- already there ---------------------------------------------------------------------

    def may_be_there(self) -> bool:
        """False when no file of this run can already be at the destination (a new job with
        --check=none, or under a prefix that was empty): already_there then answers None
        without a request, and a caller may skip awaiting it."""
        ctx = self.ctx
        return ctx.resumed or (ctx.options.check != "none" and not ctx.dest_was_empty)

    async def already_there(
        self, src: SourceFile, record: FileRecord, *, listed: StoredBlob | object | None = UNKNOWN
    ) -> tuple[str, str, StoredBlob, str | None] | None:
        """Whether the destination already holds this version, as (status, why, props, plain
        BLAKE3 hex): ("copied", ...) when it is this job's own commit (a kill between commit and
        journal), ("skipped", ...) when --check says the blob is up to date; None when the file
        must be sent.

        Up to date means the same source version (size, mtime and ctime as read) stored the way
        this run asks: the same encryption mode, and for encrypted blobs a content key this
        run's KEK unwraps. A blob wrapped by an old KEK (``old_keks``) is re-wrapped in place;
        one in the other mode, or wrapped by a key this run cannot unwrap, is sent again.

        ``listed``: the blob as the online delta's listing gave it (engine/delta.py), or None
        when the listing holds no such blob; either way no HEAD is sent. UNKNOWN: HEAD it."""
        ctx = self.ctx
        assert ctx.store is not None
        opts = ctx.options
        if not self.may_be_there():
            return None
        if listed is UNKNOWN:
            props = await ctx.store.get_properties(record.blob_name)
        else:
            props = listed  # type: ignore[assignment]
        if props is None:
            return None
        md = props.metadata
        plain_hex = meta_get(md, mn.BLAKE3)
        keyed_hex = meta_get(md, mn.KEYED_BLAKE3)
        same_version = (
            meta_get(md, mn.SIZE) == str(src.size_bytes)
            and meta_get(md, mn.MTIME_NS) == str(src.mtime_ns)
            and meta_get(md, mn.CTIME_NS) == str(src.ctime_ns)
            and bool(plain_hex or keyed_hex)
        )
        stored_encrypted = mn.ENCRYPTION_DATA in md
        ours = meta_get(md, mn.UPLOAD_ID) == record.upload_id or (
            same_version and meta_get(md, mn.JOB_ID) == ctx.report.job_id
        )
        if ours and stored_encrypted == opts.encrypt:  # a kill came between commit and journal
            if plain_hex is not None:
                return ("copied", "committed by an earlier run of this job", props, plain_hex)
            # an encrypted blob keeps no plaintext digest: re-hash to journal one, and to prove
            # the commit holds this file's bytes
            digest = await self.sender.hash_file(src)
            cek = content_key_from_metadata(md["encryptiondata"], opts.kek)
            if (
                digest is not None
                and cek is not None
                and keyed_digest_hex(cek, digest.hex()) == keyed_hex
            ):
                return ("copied", "committed by an earlier run of this job", props, digest.hex())
            return None
        if opts.check == "none":
            return None
        if stored_encrypted != opts.encrypt:
            if same_version:  # up to date but for the mode: what was asked for is what counts
                ctx.report.files_resent_for_encryption += 1
            return None
        cek: bytes | None = None
        rewrap_from: Any = None
        if opts.encrypt:
            cek = content_key_from_metadata(md["encryptiondata"], opts.kek)
            if cek is None:
                for old in opts.old_keks:
                    cek = content_key_from_metadata(md["encryptiondata"], old)
                    if cek is not None:
                        rewrap_from = old
                        break
            if cek is None:  # wrapped by a key this run cannot unwrap: send under this one
                if same_version:
                    ctx.report.files_resent_for_encryption += 1
                return None
        if opts.check == "metadata" and same_version:
            why = "unchanged (size, mtime, ctime and digest recorded at the destination)"
        elif opts.check == "hash" and meta_get(md, mn.SIZE) == str(src.size_bytes):
            digest = await self.sender.hash_file(src)
            if digest is None:
                return None
            if cek is not None and keyed_hex is not None:
                match = keyed_digest_hex(cek, digest.hex()) == keyed_hex
            else:
                match = digest.hex() == plain_hex
            if not match:
                return None
            plain_hex = digest.hex()
            why = "unchanged (BLAKE3 of the source equals the destination's)"
        else:
            return None
        if rewrap_from is not None:
            assert cek is not None
            await self.rewrap(props, cek)
            why += "; content key re-wrapped under the current KEK"
        return ("skipped", why, props, plain_hex)

    async def rewrap(self, props: StoredBlob, content_key: bytes) -> None:
        """Key rotation in place: the same content key wrapped by this run's KEK, written with
        Set Blob Metadata (If-Match: a blob changed meanwhile is not touched). No byte is sent."""
        ctx = self.ctx
        assert ctx.store is not None
        await rewrap_in_place(ctx.store, props, content_key, ctx.options.kek)
        ctx.report.files_rewrapped += 1

    # --- what to send ----------------------------------------------------------------------

    async def prepare(
        self,
        src: SourceFile,
        record: FileRecord,
        chunk_bytes: int,
        single_put: bool,
        resume: bool,
    ) -> FileTask | None:
        """The task for one read of the file: its content key and the blocks it may resume.
        None when an encrypted file's staged blocks no longer match its bytes: it must be read
        again as a new version (new upload id, new key). resume=False sends every block again,
        whatever an earlier run acknowledged."""
        content_key, encryptiondata = self.content_key_for(record)
        task = FileTask(
            src=src,
            record=record,
            chunk_bytes=chunk_bytes,
            single_put=single_put,
            content_key=content_key,
            encryptiondata=encryptiondata,
        )
        # blocks of an earlier content key (a new one was just made) count for nothing
        if (
            resume
            and not single_put
            and (content_key is None or encryptiondata == record.encryptiondata)
        ):
            task.resumable = await self.resumable_blocks(record)
            staged_changed = (
                content_key is not None
                and task.resumable
                and not await self._staged_blocks_still_match(task)
            )
            if staged_changed:
                log.info(
                    "%s: an acknowledged block no longer matches its bytes: starting the file "
                    "over under a new content key",
                    display_path(src.rel_path),
                )
                return None
        return task

    async def resumable_blocks(self, record: FileRecord) -> set[int]:
        """Blocks acknowledged in an earlier run that the service still holds uncommitted."""
        acked = record.acked_blocks or {}
        if not acked:
            return set()
        assert self.ctx.store is not None
        staged = {bid for bid, _ in await self.ctx.store.get_block_list(record.blob_name)}
        return {i for i in acked if block_id(record.upload_id, i) in staged}

    def content_key_for(self, record: FileRecord) -> tuple[bytes | None, str | None]:
        """The content key of an encrypted file version: the journaled one when this KEK unwraps
        it (the resumed blocks were encrypted with it), else a new one, journaled before any
        block is acknowledged. Only the wrapped form is stored: it is the blob's own metadata."""
        opts = self.ctx.options
        if not opts.encrypt:
            return None, None
        kek = opts.kek
        if record.encryptiondata:
            key = content_key_from_metadata(record.encryptiondata, kek)
            if key is not None:
                return key, record.encryptiondata
        key = new_content_key()
        encryptiondata = encryption_metadata(key, kek)
        assert self.ctx.journal is not None
        self.ctx.journal.set_encryption(record.file_id, encryptiondata)
        record.encryptiondata = None  # the blocks of any earlier key no longer count
        return key, encryptiondata

    async def _staged_blocks_still_match(self, task: FileTask) -> bool:
        """Before an encrypted file resumes under its journaled content key: are the bytes of
        every staged block still what was encrypted and sent then?

        Region nonces are the region index, so re-encrypting changed bytes under the same key
        would use one (key, nonce) pair for two plaintexts. A change normally shows in the
        file's ctime (a new version, new key), but network file systems can keep attributes
        stale; this pass re-reads and re-encrypts the staged range once, sending nothing, and
        any mismatch starts the file over under a new key. Only resumed encrypted files pay it.
        """
        check = FileTask(
            src=task.src,
            record=task.record,
            chunk_bytes=task.chunk_bytes,
            single_put=False,
            content_key=task.content_key,
            encryptiondata=None,
            resumable=set(task.resumable),
            verify_only=True,
        )
        length_bytes = min(task.src.size_bytes, (max(task.resumable) + 1) * task.chunk_bytes)
        await self.sender.read_aside(
            check,
            size_bytes=task.src.size_bytes,
            chunk_bytes=task.chunk_bytes,
            length_bytes=length_bytes,
            content_key=task.content_key,
        )
        return check.failure is None and not check.mismatch
