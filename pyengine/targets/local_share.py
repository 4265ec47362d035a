"""A mounted Data Box share (SMB/NFS) as a destination: block blobs as files in a directory.

Layout (the device's): ``<mount>/<account>_BlockBlob/<container>/<blob name>``; the device
uploads each file under ``<container>`` as the block blob of that name. The Target protocol is
kept as Azure's block model, so the engine resumes a share exactly as it resumes Azure:

- Put Block writes the block at its offset (index × block size) into a hidden part file beside
  the final name, ``.pyengine-<name hash>-<upload id>.part``, and appends (index, offset,
  length, CRC64) to a sidecar ``....blocks``. Neither is fsync'd per block: a kill -9 keeps the
  page cache, and after a power loss Get Block List trusts no sidecar line blindly: it re-reads
  each staged block and checks its CRC64 (the sidecar may be durable before the data).
- Put Block List checks every block is staged, gap-free and of one upload, sets the mtime from
  the metadata, fsyncs, renames the part onto the final name (atomic: a reader sees the old file
  or the new one) and fsyncs the directory. Put Blob does the same with one write.
- The ETag is ``crc64:<16 hex>``, the whole-file Azure CRC64 of what was written, combined from
  the blocks' CRC64s (share_state.crc64_of_blocks): the journal and the manifest keep it.
- What a share cannot carry (metadata, tags, tier, content type) goes to ShareState, pending
  for ``pyengine finalize``; get_properties answers from it while the file is unchanged.

Writes are ``os.pwrite`` in a worker thread from the pooled chunk (no copy; the GIL is released
for the write): see README "Data Box share" for the measurement against aiofiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from pyengine.engine import metadata_names as mn
from pyengine.engine.plan import new_upload_id, parse_block_id
from pyengine.errors import ConfigError, ContainerNotFoundError, DestinationError
from pyengine.targets.auth import Destination
from pyengine.targets.pacer import TokenBucket
from pyengine.targets.share_files import (
    ETAG_PREFIX,
    TEMP_RE,
    ShareStats,
    Upload,
    crc64_hex_from_etag,
    etag_of,
    fsync_dir,
    pwrite_all,
    verified_blocks,
    walk,
)
from pyengine.targets.share_state import ShareState, crc64_of_blocks
from pyengine.targets.wire import BlobProps


class ShareTarget:
    """The Target protocol (targets/base.py) over a container directory of a mounted share."""

    def __init__(
        self,
        dest: Destination,
        *,
        state_path: str | os.PathLike[str],
        max_concurrency: int = 16,
        cap_bytes_per_s: float | None = None,
    ) -> None:
        self.dest = dest
        self.root = Path(share_root_of(dest))
        self.container_dir = self.root / dest.container
        self.stats = ShareStats(max_concurrency, max_concurrency)
        self._state_path = Path(state_path)
        self._state: ShareState | None = None
        self._writes = asyncio.Semaphore(max_concurrency)
        self._bucket = TokenBucket(cap_bytes_per_s, 64 * 1024) if cap_bytes_per_s else None
        self._uploads: dict[tuple[str, str], Upload] = {}

    async def __aenter__(self) -> ShareTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for upload in self._uploads.values():
            upload.close()
        self._uploads.clear()
        if self._state is not None:
            self._state.close()

    @property
    def state(self) -> ShareState:
        if self._state is None:
            self._state = ShareState(self._state_path)
        return self._state

    # --- names and paths -------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        """The file of blob ``name``; names come from plan.blob_name (no '.', '..' or empty
        segment), checked again here so no name can point outside the container."""
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise DestinationError(name, "not a blob name a share can hold")
        return self.container_dir.joinpath(*parts)

    def _temp(self, name: str, upload_id: str) -> tuple[Path, Path]:
        """Part file and sidecar of one upload: a hash of the base name, not the name itself, so
        a 255-byte file name still gets a temporary name the file system accepts."""
        path = self._path(name)
        digest = hashlib.blake2b(path.name.encode("utf-8", "surrogateescape"), digest_size=8)
        stem = f".pyengine-{digest.hexdigest()}-{upload_id}"
        return path.with_name(stem + ".part"), path.with_name(stem + ".blocks")

    def _temps_of(self, name: str) -> list[tuple[str, Path, Path]]:
        """(upload id, part, sidecar) of every upload staged on ``name``."""
        part0, _ = self._temp(name, "0" * 32)
        stem = part0.name[: -len("0" * 32 + ".part")]
        out = []
        try:
            entries = os.listdir(part0.parent)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            if entry.startswith(stem) and entry.endswith(".part") and TEMP_RE.fullmatch(entry):
                upload_id = entry[len(stem) : -len(".part")]
                part, sidecar = self._temp(name, upload_id)
                out.append((upload_id, part, sidecar))
        return out

    # --- the Target protocol ---------------------------------------------------------------

    async def ensure_container(self, create: bool) -> None:
        shown = self.dest.redacted()
        if not self.root.is_dir():
            raise ConfigError(str(self.root), "no such directory: is the Data Box share mounted?")
        if self.container_dir.is_dir():
            return
        if not create:
            raise ContainerNotFoundError(
                shown, "container directory does not exist (add --create-container)"
            )
        await asyncio.to_thread(self.container_dir.mkdir, exist_ok=True)

    async def put_block(
        self, name: str, block_id: str, data: bytes | memoryview, *, crc64: int
    ) -> None:
        parsed = parse_block_id(block_id)
        if parsed is None:
            raise DestinationError(name, "block id not of pyengine's form: a share cannot stage it")
        upload_id, index = parsed
        length = len(memoryview(data).cast("B"))
        if self._bucket is not None:
            await self._bucket.take(length)
        upload = await self._open_upload(name, upload_id)
        upload.staged.pop(index, None)
        if upload.block_bytes is None:
            upload.block_bytes = self._learn_block_bytes(upload, index, length)
        if upload.block_bytes is None:
            # the last block came first: its offset waits for a second block (the memoryview
            # returns to the pool when we return, so this one block is copied)
            upload.deferred[index] = (bytes(data), crc64)
            return
        async with self._writes:
            await self._write_block(name, upload, index, data, length, crc64)
        await self._write_deferred(name, upload)

    @staticmethod
    def _learn_block_bytes(upload: Upload, index: int, length: int) -> int | None:
        """Block 0 is full (or the only one); of two different indexes the lower one is full."""
        if index == 0:
            return length
        others = [i for i in list(upload.staged) + list(upload.deferred) if i != index]
        if not others:
            return None
        low = min([*others, index])
        if low == index:
            return length
        if low in upload.staged:
            return upload.staged[low][0]
        return len(upload.deferred[low][0])

    async def _write_deferred(self, name: str, upload: Upload) -> None:
        while upload.deferred and upload.block_bytes is not None:
            index, (data, crc64) = upload.deferred.popitem()
            async with self._writes:
                await self._write_block(name, upload, index, data, len(data), crc64)

    async def _write_block(
        self,
        name: str,
        upload: Upload,
        index: int,
        data: bytes | memoryview,
        length: int,
        crc64: int,
    ) -> None:
        assert upload.block_bytes is not None
        offset = index * upload.block_bytes
        line = json.dumps({"i": index, "o": offset, "n": length, "c": crc64}) + "\n"

        def write() -> None:
            pwrite_all(upload.fd, data, offset)
            # after the data: a line without its data is caught by the CRC check on resume
            os.write(upload.sidecar_fd, line.encode("ascii"))

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            raise DestinationError(name, e.strerror or str(e)) from None
        upload.staged[index] = (length, crc64)

    async def _open_upload(self, name: str, upload_id: str) -> Upload:
        key = (name, upload_id)
        upload = self._uploads.get(key)
        if upload is not None:
            return upload
        part, sidecar = self._temp(name, upload_id)

        def open_files() -> tuple[int, int]:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            side = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            return fd, side

        try:
            fd, side = await asyncio.to_thread(open_files)
        except OSError as e:
            raise DestinationError(name, e.strerror or str(e)) from None
        upload = self._uploads.get(key)  # another block of the file opened it meanwhile
        if upload is not None:
            os.close(fd)
            os.close(side)
            return upload
        upload = self._uploads[key] = Upload(part, sidecar, fd, side)
        return upload

    async def get_block_list(self, name: str, *, uncommitted: bool = True) -> list[tuple[str, int]]:
        """Staged blocks whose bytes in the part file still have their recorded CRC64 (each is
        re-read). A share keeps no block structure once committed: committed lists are []."""
        if not uncommitted:
            return []
        from pyengine.engine.plan import block_id

        out: list[tuple[str, int]] = []
        for upload_id, part, sidecar in await asyncio.to_thread(self._temps_of, name):
            verified = await asyncio.to_thread(verified_blocks, part, sidecar)
            if not verified:
                continue
            upload = await self._open_upload(name, upload_id)
            for index, (offset, length, crc) in verified.items():
                upload.staged[index] = (length, crc)
                if upload.block_bytes is None:
                    # block 0 is full or the only one; block i > 0 sits at i × block size
                    upload.block_bytes = offset // index if index else length
                out.append((block_id(upload_id, index), length))
        return out

    async def discard_uncommitted(self, name: str) -> None:
        for key in [k for k in self._uploads if k[0] == name]:
            self._uploads.pop(key).close()
        for _, part, sidecar in await asyncio.to_thread(self._temps_of, name):
            for path in (part, sidecar):
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:
                    raise DestinationError(name, e.strerror or str(e)) from None

    async def put_block_list(
        self,
        name: str,
        block_ids: list[str],
        *,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        parsed = [parse_block_id(b) for b in block_ids]
        upload_ids = {p[0] for p in parsed if p is not None}
        if not parsed or None in parsed or len(upload_ids) != 1:
            raise DestinationError(name, "block list is not of one pyengine upload")
        if [p[1] for p in parsed if p is not None] != list(range(len(parsed))):
            raise DestinationError(name, "block list is not 0..n-1 in order")
        (upload_id,) = upload_ids
        upload = self._uploads.get((name, upload_id))
        if upload is not None:
            await self._write_deferred(name, upload)
        missing = [i for i in range(len(parsed)) if upload is None or i not in upload.staged]
        if upload is None or missing:
            raise DestinationError(name, f"blocks not staged: {missing[:5]}")
        blocks = [upload.staged[i] for i in range(len(parsed))]
        total_bytes = sum(length for length, _ in blocks)
        crc = await asyncio.to_thread(crc64_of_blocks, blocks)
        del self._uploads[(name, upload_id)]
        try:
            file_mtime_ns = await asyncio.to_thread(
                self._finish, upload, self._path(name), total_bytes, metadata
            )
        except OSError as e:
            raise DestinationError(name, e.strerror or str(e)) from None
        finally:
            upload.close()
        return self._recorded(name, total_bytes, file_mtime_ns, crc, metadata, tier, tags, headers)

    async def put_blob(
        self,
        name: str,
        data: bytes | memoryview,
        *,
        crc64: int,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        length = len(memoryview(data).cast("B"))
        if self._bucket is not None:
            await self._bucket.take(length)
        upload_id = mn.meta_get(metadata, mn.UPLOAD_ID) or new_upload_id()
        part, sidecar = self._temp(name, upload_id)

        def write() -> int:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            upload = Upload(part, sidecar, fd, -1)
            try:
                pwrite_all(fd, data, 0)
                return self._finish(upload, self._path(name), length, metadata)
            finally:
                os.close(fd)

        try:
            async with self._writes:
                file_mtime_ns = await asyncio.to_thread(write)
        except OSError as e:
            raise DestinationError(name, e.strerror or str(e)) from None
        return self._recorded(name, length, file_mtime_ns, crc64, metadata, tier, tags, headers)

    @staticmethod
    def _finish(upload: Upload, final: Path, total_bytes: int, metadata: Mapping[str, str]) -> int:
        """Part file → final name, durably, with the source's mtime; the written mtime_ns."""
        os.ftruncate(upload.fd, total_bytes)
        mtime_ns = mn.meta_get(metadata, mn.MTIME_NS)
        if mtime_ns is not None:
            os.utime(upload.fd, ns=(int(mtime_ns), int(mtime_ns)))
        os.fsync(upload.fd)
        os.replace(upload.part, final)
        fsync_dir(final.parent)
        upload.sidecar.unlink(missing_ok=True)
        return os.stat(final).st_mtime_ns

    def _recorded(
        self,
        name: str,
        size_bytes: int,
        file_mtime_ns: int,
        crc64: int,
        metadata: Mapping[str, str],
        tier: str | None,
        tags: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> str:
        etag = etag_of(crc64)
        self.state.record(
            name,
            size_bytes=size_bytes,
            file_mtime_ns=file_mtime_ns,
            etag=etag,
            crc64_hex=f"{crc64:016x}",
            metadata=metadata,
            tier=tier,
            tags=tags,
            headers=headers,
        )
        return etag

    async def get_properties(self, name: str) -> BlobProps | None:
        try:
            st = await asyncio.to_thread(os.stat, self._path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self._path(name)):
            return None
        return self._props(name, st.st_size, st.st_mtime_ns)

    def _props(self, name: str, size_bytes: int, mtime_ns: int) -> BlobProps:
        """Metadata from the share state while the file is the one we wrote; none otherwise (a
        file another tool put there is never taken for an up-to-date copy)."""
        rec = self.state.get(name)
        if rec is None or rec.size_bytes != size_bytes or rec.file_mtime_ns != mtime_ns:
            return BlobProps(name=name, size_bytes=size_bytes, etag="", metadata={})
        return BlobProps(name=name, size_bytes=size_bytes, etag=rec.etag, metadata=rec.metadata)

    async def list_blobs(
        self, prefix: str = "", *, metadata: bool = True, page_size: int = 5000
    ) -> AsyncIterator[BlobProps]:
        found = await asyncio.to_thread(walk, self.container_dir, prefix)
        for name, size_bytes, mtime_ns in found:
            if metadata:
                yield self._props(name, size_bytes, mtime_ns)
            else:
                yield BlobProps(name=name, size_bytes=size_bytes, etag="", metadata={})

    async def delete_blob(self, name: str) -> None:
        path = self._path(name)

        def delete() -> None:
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.container_dir and not any(parent.iterdir()):
                parent.rmdir()  # a share has no empty folders to keep: blobs have none
                parent = parent.parent

        try:
            await asyncio.to_thread(delete)
        except OSError as e:
            raise DestinationError(name, e.strerror or str(e)) from None
        self.state.delete(name)

    async def set_metadata(
        self, name: str, metadata: Mapping[str, str], *, if_match: str | None = None
    ) -> str:
        rec = self.state.get(name)
        if rec is None:
            raise DestinationError(name, "no such blob on the share")
        if if_match is not None and rec.etag != if_match:
            raise DestinationError(name, "the blob changed (ETag does not match)")
        self.state.set_metadata(name, metadata)
        return rec.etag


def share_root_of(dest: Destination) -> str:
    """The ``<account>_BlockBlob`` directory of a share destination (its account URL)."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(dest.account_url).path)


__all__ = [
    "ETAG_PREFIX",
    "ShareStats",
    "ShareTarget",
    "crc64_hex_from_etag",
    "share_root_of",
]
