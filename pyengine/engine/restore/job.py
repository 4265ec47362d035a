"""The restore job: list the blobs under a URL (or those a copy job committed), and bring each
back under DEST_DIR, checked end to end.

Per file: the name is checked (plan.check_name), the ranges not written by an earlier run are
fetched and handed to the native writer (download.py), the temporary file is fsync'd, its size and
whole-file BLAKE3 compared with what the blob's metadata recorded, and only then renamed into
place with its recorded mtime. A file that does not check out leaves nothing at its final path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyengine import _core
from pyengine.crypto import KEYED_DIGEST_METADATA, content_key_from_metadata, keyed_digest_hex
from pyengine.engine.collections_paused import fewer_collections
from pyengine.engine.report import Event
from pyengine.engine.restore.download import BufferPool, RangeFailed, WriterLoop, fetch_ranges
from pyengine.engine.restore.keys import PolicyKeys
from pyengine.engine.restore.plan import (
    STATE_SUFFIX,
    UnsafeNameError,
    check_name,
    find_kind_clashes,
    fs_limits,
    layout_for,
    meta,
    part_name,
    recorded_int,
    rel_name,
)
from pyengine.engine.restore.report import RestoreOptions, RestoreReport
from pyengine.engine.restore.state import PartState
from pyengine.engine.scan import PathFilter, display_path
from pyengine.errors import ConfigError, DestinationError, IntegrityError, PyEngineError
from pyengine.state.manifest import ManifestWriter, default_manifest_path
from pyengine.targets.azure_blob import BlobStore, parse_destination, resolve_credential
from pyengine.targets.profile import choose_profile
from pyengine.targets.tls import ssl_context
from pyengine.targets.wire import BlobProps

log = logging.getLogger("pyengine")

EventCallback = Callable[[Event], None]


class _Pending(Exception):
    """The blob is in the Archive tier: not failed, waiting for rehydration."""


def _fsync_dirs(paths: set[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Restore:
    def __init__(
        self, src_url: str, dest_dir: str | os.PathLike[str], opts: RestoreOptions, on_event: Any
    ) -> None:
        self.dest = parse_destination(src_url)
        self.opts = opts
        # the REST version the source speaks (a Data Box's: 2019-02-02); --ca-cert read now
        self.profile = choose_profile(opts.target, urlsplit(self.dest.account_url).hostname or "")
        ssl_context(opts.ca_cert_file)  # ConfigError before DEST_DIR is made or a request sent
        self.keys: PolicyKeys | None = None
        if opts.policy is not None:
            if opts.kek is not None:
                raise ConfigError("--kek-file", "not with --policy (the policy names each key)")
            self.keys = PolicyKeys(opts.policy, self.dest)
        self.on_event = on_event
        self.root = Path(os.path.realpath(os.fspath(dest_dir)))
        self.job_id = f"restore-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        self.report = RestoreReport(job_id=self.job_id)
        self.name_max, self.path_max = 255, 4096
        self.clashes: dict[str, str] = {}
        self.store: Any = None
        self.writer: WriterLoop | None = None
        # The buffers get 7/8 of the cap: the rest covers what is in flight outside them (the
        # HTTP client's received pieces before they are copied in, the writer's scratch), so the
        # process stays within cap + its ~60 MiB of code and imports (bench download: peak RSS).
        self.pool = BufferPool(opts.memory_cap_bytes - opts.memory_cap_bytes // 8)
        self.manifest: ManifestWriter | None = None
        self.dirs_to_sync: set[Path] = set()
        self._next_file_id = 0

    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(Event(kind, **fields))  # type: ignore[arg-type]
        except Exception:  # a listener's bug never stops the job
            self.report.listener_errors += 1
            log.exception("restore event listener failed")

    async def run(self) -> RestoreReport:
        started = time.monotonic()
        os.makedirs(self.root, exist_ok=True)
        self.name_max, self.path_max = fs_limits(str(self.root))
        wanted = self._job_blobs()
        connection_string = self.opts.connection_string
        if connection_string is None and self.keys is not None:
            connection_string = self.keys.connection_string()
        credential = resolve_credential(self.dest, connection_string)
        manifest_path = self.opts.manifest_path or default_manifest_path(
            self.job_id, self.opts.journal_path
        )
        self.report.manifest_path = str(manifest_path)
        async with BlobStore(
            self.dest,
            credential,
            retry=self.opts.retry,
            max_connections=self.opts.max_concurrency,
            ca_cert_file=self.opts.ca_cert_file,
            profile=self.profile,
        ) as store:
            self.store = store
            await store.ensure_container(create=False)
            path_filter = PathFilter(self.opts.include, self.opts.exclude)
            blobs: list[tuple[BlobProps, str]] = []
            async for blob in self._listing(store):
                if not blob.name.startswith(self.dest.prefix):
                    continue  # a listing must not hand back names outside the prefix asked for
                if wanted is not None and blob.name not in wanted:
                    continue
                rel = rel_name(blob.name, self.dest.prefix)
                if path_filter.accepts(rel):
                    blobs.append((blob, rel))
            self.clashes = find_kind_clashes(rel for _, rel in blobs)
            self.emit("job_started", extra={"job_id": self.job_id, "files": len(blobs)})
            self.writer = WriterLoop(self.opts.threads)
            files = asyncio.Semaphore(self.opts.max_files)

            async def one(blob: BlobProps, rel: str) -> None:
                async with files:
                    await self.restore_blob(blob, rel)

            try:
                async with ManifestWriter(manifest_path) as self.manifest:
                    await asyncio.gather(*(one(b, r) for b, r in blobs))
                    # Renames are made durable once per directory, before the manifest (fsync'd
                    # as it closes) says the files are there: a kill -9 loses nothing either way
                    # (page cache), and one fsync per file doubled the cost of small files.
                    await asyncio.to_thread(_fsync_dirs, self.dirs_to_sync)
            finally:
                self.writer.close()
            st = store.stats
            self.report.retries, self.report.throttled_s = st.retries, st.throttled_s
            self.report.stalls = st.stalls
            self.report.concurrency_min, self.report.concurrency_max = (
                st.concurrency_min,
                st.concurrency_max,
            )
        self.report.peak_budget_bytes = self.pool.peak_bytes
        self.report.elapsed_s = time.monotonic() - started
        self.emit("job_finished", extra={"job_id": self.job_id})
        return self.report

    async def _listing(self, store: Any) -> Any:
        """The blobs under the prefix; with --study / --tenant only those whose index tags match
        (tags come with the listing, so the selection costs no request per blob)."""
        want = {"studyuid": self.opts.study_uid, "tenant": self.opts.tenant}
        want = {k: v for k, v in want.items() if v is not None}
        if not want:
            async for blob in store.list_blobs(self.dest.prefix, metadata=True):
                yield blob
            return
        async for blob, tags in store.list_blobs_tagged(self.dest.prefix):
            if all(tags.get(k) == v for k, v in want.items()):
                yield blob

    def _job_blobs(self) -> set[str] | None:
        """The blob names a copy job committed (--job), or None for every blob listed."""
        if self.opts.job_id is None:
            return None
        from pyengine.state.journal import Journal

        with Journal.open_existing(self.opts.journal_path) as journal:
            journal.get_job(self.opts.job_id)  # JournalError for an unknown job
            return {r.blob_name for r in journal.iter_files(self.opts.job_id, ("committed",))}

    # --- one blob -----------------------------------------------------------------------------

    async def restore_blob(self, blob: BlobProps, rel: str) -> None:
        shown = display_path(rel)
        size_bytes, mtime_ns = blob.size_bytes, 0
        encrypted = meta(blob.metadata, "encryptiondata") is not None
        try:
            result, size_bytes, mtime_ns, digest_hex = await self._restore(blob, rel)
        except _Pending as exc:
            self.report.files_pending_archive += 1
            self.report.pending_archive.append(blob.name)
            self.emit("file_skipped", path=shown, blob=blob.name, reason=str(exc))
            await self._manifest(rel, blob, 0, 0, "pending", None, str(exc), encrypted)
            return
        except (PyEngineError, RangeFailed, OSError) as exc:
            reason = _reason(exc)
            self.report.files_failed += 1
            self.report.bytes_failed += size_bytes
            self.report.failures.append((shown, reason))
            self.emit("file_failed", path=shown, blob=blob.name, reason=reason)
            await self._manifest(rel, blob, size_bytes, 0, "failed", None, reason, encrypted)
            return
        if result == "skipped":
            self.report.files_skipped += 1
            self.report.bytes_skipped += size_bytes
            self.emit("file_skipped", path=shown, blob=blob.name, bytes=size_bytes)
        else:
            self.report.files_copied += 1
            self.report.bytes_copied += size_bytes
            if result == "unverified":
                self.report.files_unverified += 1
            self.emit("file_copied", path=shown, blob=blob.name, bytes=size_bytes,
                      extra={"verified": result == "restored"})  # fmt: skip
        await self._manifest(rel, blob, size_bytes, mtime_ns, result, digest_hex, None, encrypted)

    async def _manifest(self, rel: str, blob: BlobProps, size_bytes: int, mtime_ns: int,
                        status: str, digest_hex: str | None, error: str | None,
                        encrypted: bool) -> None:  # fmt: skip
        assert self.manifest is not None
        await self.manifest.write({
            "path": display_path(rel), "size_bytes": size_bytes, "mtime_ns": mtime_ns,
            "status": status, "job_id": self.job_id, "blob_url": self.dest.blob_url(blob.name),
            "blake3": digest_hex, "etag": blob.etag, "error": error, "encrypted": encrypted,
        })  # fmt: skip

    async def _restore(self, blob: BlobProps, rel: str) -> tuple[str, int, int, str | None]:
        """(restored | unverified | skipped, plaintext bytes, mtime_ns, BLAKE3 hex)."""
        shown = display_path(rel)
        segments = check_name(
            rel,
            name_max_bytes=self.name_max,
            path_max_bytes=self.path_max,
            dest_dir_bytes=len(os.fsencode(self.root)),
        )
        if rel in self.clashes:
            raise UnsafeNameError(shown, self.clashes[rel])
        md = blob.metadata
        encryptiondata = meta(md, "encryptiondata")
        content_key = None
        if encryptiondata is not None:
            kek, whose = self.opts.kek, "the key-encryption key"
            if self.keys is not None:
                tenant, kek = self.keys.tenant_for(blob.name)
                if tenant is None:
                    raise IntegrityError(shown, "blob is encrypted and no tenant covers it")
                if kek is None:
                    raise IntegrityError(shown, f"blob is encrypted: tenant {tenant} has no key")
                whose = f"tenant {tenant}'s key-encryption key"
            if kek is None:
                raise IntegrityError(shown, "blob is encrypted: give the key-encryption key")
            content_key = content_key_from_metadata(encryptiondata, kek)
            if content_key is None:
                raise IntegrityError(shown, f"{whose} cannot unwrap this blob's content key")
        layout = layout_for(
            blob.size_bytes,
            encrypted=content_key is not None,
            min_range_bytes=self.opts.min_range_bytes,
        )
        plain = layout.plain_bytes
        recorded_size = recorded_int(md, "pyenginesize", "pyengine_size")
        if recorded_size is not None and recorded_size != plain:
            raise IntegrityError(
                shown, f"blob holds {plain} bytes, its metadata records {recorded_size}"
            )
        mtime_ns = recorded_int(md, "pyenginemtimens", "pyengine_mtime_ns")
        final = self.root.joinpath(*segments)
        parent = _make_parents(self.root, segments[:-1], shown)
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise UnsafeNameError(shown, "something other than a file stands at this name")
        if (
            st is not None
            and stat.S_ISREG(st.st_mode)
            and st.st_size == plain
            and mtime_ns is not None
            and st.st_mtime_ns == mtime_ns
        ):
            return "skipped", plain, mtime_ns, None

        part = parent / part_name(final.name, self.name_max)
        header = {
            "v": 1,
            "etag": blob.etag,
            "stored_bytes": layout.stored_bytes,
            "range_bytes": layout.range_bytes,
            "ranges": layout.count,
            "encrypted": layout.encrypted,
        }
        part_exists = os.path.isfile(part) and not os.path.islink(part)
        state = PartState.open(
            Path(str(part) + STATE_SUFFIX),
            header,
            part_exists=part_exists,
            persist=layout.count > 1,
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(part, flags | (0 if state.done else os.O_TRUNC), 0o600)
        self.report.ranges_resumed += len(state.done)
        self._next_file_id += 1
        file_id = self._next_file_id
        self.emit("file_started", path=shown, blob=blob.name, bytes=plain)
        keep_part = False
        try:
            if layout.count:
                await fetch_ranges(
                    store=self.store,
                    writer=self.writer,
                    pool=self.pool,
                    blob_name=blob.name,
                    etag=_quoted(blob.etag),
                    layout=layout,
                    fd=fd,
                    file_id=file_id,
                    content_key=content_key,
                    state=state,
                    on_bytes=lambda got, plain_len: self._on_range(shown, got, plain_len),
                )
                assert self.writer is not None
                digest = self.writer.writer.digest(
                    file_id, [state.done[i] for i in range(layout.count - 1)]
                )
            else:
                digest = _core.blake3(b"")
            await asyncio.to_thread(os.fsync, fd)
            written = os.fstat(fd).st_size
            if written != plain:
                raise IntegrityError(shown, f"wrote {written} bytes, expected {plain}")
            result = self._check_digest(shown, md, digest.hex(), content_key)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.rename(part, final)
            self.dirs_to_sync.add(parent)
            state.remove()
            return result, plain, mtime_ns or 0, digest.hex()
        except DestinationError as exc:
            if "BlobArchived" in exc.reason:
                raise _Pending(await self._archived(blob)) from None
            keep_part = True  # a transport or service failure: what is checked stays for a re-run
            raise
        except (PyEngineError, RangeFailed, OSError):
            raise  # the bytes did not check out (or could not be written): start over next time
        except BaseException:
            keep_part = True  # interrupted: a re-run resumes from the checked ranges
            raise
        finally:
            os.close(fd)
            if self.writer is not None:
                self.writer.writer.discard(file_id)
            if os.path.lexists(part) and not keep_part:
                os.unlink(part)
                state.remove()
            state.close()

    def _on_range(self, shown: str, received_bytes: int, plain_bytes: int) -> None:
        self.report.bytes_downloaded += received_bytes
        self.report.ranges_fetched += 1
        self.emit("progress", path=shown, bytes=plain_bytes)

    def _check_digest(
        self, shown: str, md: dict[str, str], digest_hex: str, content_key: bytes | None
    ) -> str:
        if content_key is not None:
            want = meta(md, KEYED_DIGEST_METADATA)
            got = keyed_digest_hex(content_key, digest_hex) if want is not None else None
        else:
            want = meta(md, "pyengineblake3", "pyengine_blake3")
            got = digest_hex
        if want is None:
            return "unverified"
        if got != want.lower():
            raise IntegrityError(
                shown, "BLAKE3 of the restored bytes differs from the recorded one"
            )
        return "restored"

    async def _archived(self, blob: BlobProps) -> str:
        if self.opts.rehydrate is None:
            return "blob is in the Archive tier: rehydrate it (--rehydrate Standard|High)"
        await self.store.set_tier(blob.name, "Hot", rehydrate_priority=self.opts.rehydrate)
        return f"rehydration to Hot requested ({self.opts.rehydrate}): run restore again later"


def _make_parents(root: Path, dirs: list[str], shown: str) -> Path:
    """Create ``root/dirs...`` one level at a time, never through a symbolic link that leads
    out of ``root`` (checked before anything is created under it), nor over a file."""
    path = root
    for segment in dirs:
        path = path / segment
        try:
            os.mkdir(path, 0o755)
            continue
        except FileExistsError:
            pass
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not (real == str(root) or real.startswith(str(root) + os.sep)):
                raise UnsafeNameError(shown, "a symbolic link leads out of the target directory")
            if not os.path.isdir(real):
                raise UnsafeNameError(shown, "a file stands where a directory is needed")
        elif not stat.S_ISDIR(st.st_mode):
            raise UnsafeNameError(shown, "a file stands where a directory is needed")
    return path


def _quoted(etag: str) -> str:
    # List Blobs gives the ETag bare, Get Blob answers it quoted; If-Match takes the quoted form
    return etag if not etag or etag.startswith('"') else f'"{etag}"'


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (PyEngineError, RangeFailed)):
        return exc.reason
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    return str(exc)


async def restore(
    source_url: str,
    dest_dir: str | os.PathLike[str],
    options: RestoreOptions | None = None,
    on_event: EventCallback | None = None,
) -> RestoreReport:
    """Restore the blobs under ``source_url`` into ``dest_dir``; see README "Restore".

    Raises only for errors that stop the whole job (bad URL, credentials, missing container,
    unknown --job); a blob that cannot be restored is counted in the report and named in its
    ``failures``, and leaves nothing at its final path.
    """
    with fewer_collections():  # as a copy (engine/collections_paused.py)
        return await _Restore(source_url, dest_dir, options or RestoreOptions(), on_event).run()
