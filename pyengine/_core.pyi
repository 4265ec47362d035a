"""Typed surface of the native core (cpp/bindings.cpp).

Every call that touches bytes releases the GIL."""

from collections.abc import Buffer
from typing import TypeVar

_T = TypeVar("_T")

#: stage bits for Pipeline.submit(stages=...) and stage_seconds()
STAGE_READ: int  # always on
STAGE_XXH3: int
STAGE_CRC64: int
STAGE_BLAKE3: int
STAGE_ALL: int  # read + xxh3 + crc64 + blake3 (+ AES-GCM when a content key is given)
STAGE_MD5: int  # whole-file MD5 of the payload (stored bytes); not in STAGE_ALL: serial per file
#: Azure client-side encryption v2: plaintext region, per-region overhead (nonce 12 + tag 16)
REGION_BYTES: int  # 4 MiB
REGION_OVERHEAD_BYTES: int  # 28

def crc64(data: Buffer, crc: int = 0) -> int:
    """Azure Storage CRC64 (the x-ms-content-crc64 value) of data, continuing from crc."""

def xxh3_128(data: Buffer) -> bytes:
    """16-byte canonical (big-endian) XXH3-128, equal to xxhash.xxh3_128(data).digest()."""

def blake3(data: Buffer) -> bytes:
    """32-byte BLAKE3 of data (the official C implementation, serial)."""

def encrypt_regions(data: Buffer, content_key: bytes, first_region: int = 0) -> bytes:
    """Azure CSE v2 framing: per 4 MiB region nonce(12, region index big-endian) | ct | tag(16)."""

def stage_seconds(stage: str, data: Buffer, repeat: int = 1) -> float:
    """Seconds one thread spends on a stage over data.

    stage: 'xxh3', 'crc64', 'blake3', 'md5', 'aes_gcm' or 'copy'."""

def cpu_features() -> dict[str, bool]: ...
def read_listing_page(content: Buffer, blob_props: type[_T]) -> tuple[list[_T], str] | None:
    """A List Blobs page's blobs (each blob_props(name, size_bytes, etag, metadata)) and next
    marker, as pyengine.targets.wire reads it; None for a page of a shape it does not know.
    Holds the GIL (measured: see cpp/bindings.cpp)."""

class Chunk:
    """One completed chunk. `data` is a read-only memoryview over pooled memory (no copy).

    The buffer returns to the pool once release() was called (or the Chunk was collected) and
    every memoryview taken from `data` was released.
    """

    file_id: int
    index: int
    offset_bytes: int  # plaintext offset in the file
    plain_bytes: int  # plaintext length of this chunk
    payload_bytes: int  # len(data): plain_bytes + 28 per region when encrypted
    xxh3_128: bytes  # of the plaintext chunk, 16 bytes canonical
    crc64: int  # of the payload (what goes on the wire, ciphertext when encrypted)
    @property
    def data(self) -> memoryview: ...
    def release(self) -> None: ...
    def __enter__(self) -> Chunk: ...
    def __exit__(self, *exc: object) -> None: ...

class FileDone:
    """Every chunk of the file was emitted and the file did not change while read.

    The identity fields (file_size_bytes, mtime_ns, ctime_ns, inode, device) are what fstat said
    on the open descriptor before the first read; fstat after the last read said the same, so they
    describe exactly the bytes that were read (journal and blob metadata take them from here)."""

    file_id: int
    path: str
    size_bytes: int  # bytes read (the range length when a range was given)
    file_size_bytes: int  # the file's size (= size_bytes for a whole-file read)
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    chunks: int
    blake3: (
        bytes | None
    )  # whole-file plaintext BLAKE3 (= b3sum); None when a partial range was read
    #: with STAGE_MD5 on a whole-file read: MD5 of the payload bytes in order (the stored bytes,
    #: ciphertext frames when encrypting), the blob's Content-MD5; else None
    md5: bytes | None

class FileFailed:
    """The file could not be read as planned. Chunks already emitted for it must be discarded."""

    file_id: int
    path: str
    kind: str  # 'missing' | 'not_regular' | 'permission' | 'io' | 'changed' | 'too_large'
    #: kind == 'changed': the file's size, identity (device, inode, mtime, ctime) or length moved
    #: between its open and its last read. Not an I/O error: reading it again may succeed.
    changed: bool
    errno: int
    reason: str  # one line, without the path
    message: str  # one line: "<path>: <reason>"
    @property
    def error(self) -> Exception:
        """The matching pyengine.errors exception (SourceError / FileChangedError)."""

class PoolStats:
    cap_bytes: int
    allocated_bytes: int  # in use + pooled
    in_use_bytes: int
    in_use_buffers: int
    waits: int  # times a reader blocked on a full pool (backpressure)

class Pipeline:
    """Worker threads that read, hash and encrypt chunks of submitted files.

    Completions are queued; fileno() becomes readable (eventfd) when poll() has something.
    """

    def __init__(self, threads: int, memory_cap_bytes: int, direct_io: bool = False) -> None: ...
    def submit(
        self,
        file_id: int,
        path: str,
        *,
        size_bytes: int,
        chunk_bytes: int,
        offset_bytes: int = 0,
        length_bytes: int = -1,
        content_key: bytes | None = None,
        stages: int = ...,
    ) -> None:
        """Queue a file (or the chunk-aligned range [offset, offset+length)). size_bytes is the size
        the scan saw: a different size at open is reported as 'changed'. chunk_bytes must be a power
        of two (>= 64 KiB; a multiple of REGION_BYTES when encrypting)."""

    def fileno(self) -> int: ...
    def poll(self, max_events: int = 1024) -> list[Chunk | FileDone | FileFailed]:
        """Drain up to max_events completions without blocking (also resets the eventfd)."""

    def wait(self, timeout_s: float = -1.0) -> bool:
        """Block (GIL released) until a completion is queued; False on timeout. For sync callers."""

    def files_in_flight(self) -> int: ...
    def pool_stats(self) -> PoolStats: ...
    def close(self) -> None: ...
    def __enter__(self) -> Pipeline: ...
    def __exit__(self, *exc: object) -> None: ...

class RangeDone:
    """One range handled by a Writer: checked, decrypted, hashed and written, or why not."""

    token: int
    file_id: int
    index: int
    ok: bool
    reason: str  # "" when ok
    cv: bytes | None  # BLAKE3 subtree chaining value of a checked range that is not the last

class BodySender:
    """Small plain-HTTP sends by a native thread: one non-blocking sendmsg of head and body on
    a dup() of ``fd``. ``send`` gives a token (None when ``fd`` cannot be duplicated);
    ``poll`` gives (token, bytes the kernel took, errno or 0) of finished attempts. Head and
    body stay exported until their completion is polled."""

    def __init__(self) -> None: ...
    def send(self, fd: int, head: Buffer, body: Buffer) -> int | None: ...
    def poll(self, max_events: int = 1024) -> list[tuple[int, int, int]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

class Writer:
    """Restore's write path: worker threads check (CRC64, GCM tags), decrypt, hash (BLAKE3 tree
    pieces) and pwrite downloaded ranges. ``data`` stays exported until its event is polled.
    ``fd`` -1: check and hash only (verify --deep)."""

    def __init__(self, threads: int) -> None: ...
    def submit(
        self,
        file_id: int,
        index: int,
        fd: int,
        *,
        offset_bytes: int,
        plain_bytes: int,
        data: Buffer,
        content_key: bytes | None = None,
        hash: bool = True,
        last: bool = False,
        crc64: int | None = None,
    ) -> int: ...
    def poll(self, max_events: int = 1024) -> list[RangeDone]: ...
    def fileno(self) -> int: ...
    def wait(self, timeout_s: float = -1.0) -> bool: ...
    def digest(self, file_id: int, range_cvs: list[bytes]) -> bytes:
        """Whole-file BLAKE3 from ranges 0..n-2's CVs and the last range's kept state."""
    def discard(self, file_id: int) -> None: ...
    def close(self) -> None: ...
