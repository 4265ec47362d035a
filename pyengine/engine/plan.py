"""Planning: block sizes, blob names, block IDs, encrypted sizes and blob metadata.

Pure functions only (no I/O, no clock): the journal stores their results, so the same input must
give the same answer on every run and after a restart.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from pyengine.crypto import keyed_digest_hex
from pyengine.engine import metadata_names as mn
from pyengine.engine.scan import display_path
from pyengine.errors import ConfigError, SourceError
from pyengine.options import MAX_BLOCK_BYTES, MAX_BLOCKS_PER_BLOB, REGION_BYTES, MiB

#: Azure CSE v2 adds a 12-byte nonce and a 16-byte GCM tag to every started 4 MiB region.
REGION_OVERHEAD_BYTES = 12 + 16
#: Azure: "A blob name must be at least one character long and cannot be more than 1,024
#: characters long" (Data Box: 880); "the number of path segments ... cannot exceed 254".
MAX_BLOB_NAME_CHARS = 1024
MAX_BLOB_NAME_SEGMENTS = 254
#: blob metadata name of the source's ctime (pyengine.engine.metadata_names)
CTIME_METADATA = mn.CTIME_NS
#: block index width in a block ID: 50,000 blocks per blob fit in 6 digits
BLOCK_INDEX_DIGITS = 6

_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_BLOCK_ID_RE = re.compile(r"([0-9a-f]{32})-([0-9]{6})")


def choose_block_bytes(
    size_bytes: int,
    *,
    min_block_bytes: int = 8 * MiB,
    encrypt: bool = False,
    path: str | None = None,
    max_block_bytes: int = MAX_BLOCK_BYTES,
) -> int:
    """Block size for a file of ``size_bytes``: the smallest power of two that is at least
    ``min_block_bytes`` (and at least one 4 MiB region when encrypting, so that every block holds
    whole GCM regions and blocks can be encrypted independently) and keeps the blob within
    50,000 blocks.

    Powers of two keep region boundaries aligned with block boundaries. The largest power of two
    within the 4000 MiB block limit is 2 GiB, so a blob holds at most 100 TiB; within a Data Box's
    100 MiB blocks (``max_block_bytes``) it is 64 MiB, so at most 3.05 TiB there (the device's
    4.75 TiB needs blocks that are no power of two). A larger file raises :class:`SourceError`
    naming ``path``.
    """
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    if min_block_bytes <= 0:
        raise ValueError(f"min_block_bytes must be > 0, got {min_block_bytes}")
    floor_bytes = max(min_block_bytes, REGION_BYTES) if encrypt else min_block_bytes
    block_bytes = next_pow2(floor_bytes)
    # ceil(size / block) <= MAX_BLOCKS  <=>  size <= block * MAX_BLOCKS
    while size_bytes > block_bytes * MAX_BLOCKS_PER_BLOB:
        block_bytes <<= 1
    # encrypted blocks carry 28 bytes per region more than their plaintext
    if (encrypted_bytes(block_bytes) if encrypt else block_bytes) > max_block_bytes:
        largest = 1 << (max_block_bytes.bit_length() - 1)
        if encrypt and encrypted_bytes(largest) > max_block_bytes:
            largest >>= 1
        raise SourceError(
            path or "<file>",
            f"file too large for one block blob: {size_bytes} bytes > "
            f"{largest * MAX_BLOCKS_PER_BLOB} bytes ({MAX_BLOCKS_PER_BLOB} blocks of at most "
            f"{largest // MiB} MiB)",
        )
    return block_bytes


#: smallest chunk of a Put Blob file when not encrypting (an encrypted one reads whole regions)
MIN_CHUNK_BYTES = 64 * 1024


def check_block_bytes(block_bytes: int | None, *, encrypt: bool) -> None:
    """A chosen block size the core can read files in: a power of two of at least 64 KiB, and
    whole 4 MiB encryption regions with ``encrypt``. Refused as a usage error before a job
    starts; the core would otherwise refuse it file by file."""
    if block_bytes is None:
        return
    if block_bytes < MIN_CHUNK_BYTES or block_bytes & (block_bytes - 1):
        raise ConfigError("--block-size", "must be a power of two in MiB (4, 8, 16, ...)")
    if encrypt and block_bytes % REGION_BYTES:
        raise ConfigError(
            "--block-size", "must be at least 4 MiB with --encrypt (whole encryption regions)"
        )


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def read_plan(
    size_bytes: int,
    *,
    single_put_max_bytes: int,
    block_bytes: int | None,
    encrypt: bool,
    path: str | None = None,
    max_block_bytes: int = MAX_BLOCK_BYTES,
    max_blob_bytes: int | None = None,
) -> tuple[int, bool]:
    """How the core reads a file of ``size_bytes``: (chunk_bytes, single_put).

    A file up to ``single_put_max_bytes`` (and up to ``max_block_bytes``) goes up in one Put
    Blob, read as one chunk (a power of two, at least one region when encrypting); a larger one
    in blocks of ``block_bytes`` when the user chose it, else of :func:`choose_block_bytes`.
    The target's limits (``max_block_bytes`` per request body, ``max_blob_bytes`` stored) are
    checked here, at plan time: a file that breaks one raises :class:`SourceError` naming
    ``path`` before any byte of it is sent.
    """
    shown = path or "<file>"
    stored_bytes = encrypted_bytes(size_bytes) if encrypt else size_bytes
    if max_blob_bytes is not None and stored_bytes > max_blob_bytes:
        raise SourceError(
            shown,
            f"file too large for the destination: {stored_bytes} bytes to store > "
            f"{max_blob_bytes} bytes per blob",
        )
    single_put = size_bytes <= min(single_put_max_bytes, max_block_bytes)
    if single_put:
        floor_bytes = REGION_BYTES if encrypt else MIN_CHUNK_BYTES
        return max(floor_bytes, next_pow2(size_bytes)), True
    if block_bytes:
        payload_bytes = encrypted_bytes(block_bytes) if encrypt else block_bytes
        if payload_bytes > max_block_bytes:
            raise SourceError(
                shown,
                f"block size {payload_bytes} bytes > {max_block_bytes} bytes, the destination's "
                "largest block (choose a smaller --block-size)",
            )
        if size_bytes > block_bytes * MAX_BLOCKS_PER_BLOB:
            raise SourceError(
                shown,
                f"file needs more than {MAX_BLOCKS_PER_BLOB} blocks of {block_bytes} bytes "
                "(choose a larger --block-size)",
            )
        return block_bytes, False
    return (
        choose_block_bytes(size_bytes, encrypt=encrypt, path=path, max_block_bytes=max_block_bytes),
        False,
    )


#: Characters the Blob service refuses or rewrites (see blob_name): one compiled class, since the
#: check runs once per file of a million-file tree.
_REFUSED_RE = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)


def _refused_char(name: str) -> str | None:
    """The first character of ``name`` that the Blob service would refuse or rewrite, described
    for a one-line error; None when there is none."""
    match = _REFUSED_RE.search(name)
    if match is None:
        return None
    cp = ord(match.group())
    if cp == 0x5C:  # the service turns a backslash into "/": a\\b and a/b would be one blob
        return "a backslash ('\\'), which the service turns into '/'"
    if cp < 0x20 or 0x7F <= cp <= 0x9F:
        return f"the control character U+{cp:04X}"
    if 0xD800 <= cp <= 0xDFFF:
        return f"the lone surrogate U+{cp:04X}"
    if 0xE000 <= cp <= 0xF8FF:
        return f"the private-use code point U+{cp:04X}"
    return f"the noncharacter U+{cp:04X}"


def blob_name(prefix: str, rel_path: str, *, max_len: int = MAX_BLOB_NAME_CHARS) -> str:
    """The one naming rule: blob name = ``prefix + rel_path``, unchanged, or a one-line
    :class:`SourceError` (subject ``rel_path``). Copy, resume, --check, verify and deletion all
    name blobs with this function, so the mapping is the same everywhere.

    The mapping is one-to-one because it is the identity on every name it accepts: a name the
    service would alter or refuse is rejected here, at plan time, never escaped. Rejected:
    a backslash (the service turns ``\\`` into ``/``, so ``a\\b`` and ``a/b`` would share one
    blob); the characters the naming rules list as invalid even when percent-encoded (C0 and C1
    control characters U+0000-U+001F and U+007F-U+009F, surrogates, private-use U+E000-U+F8FF,
    noncharacters U+FDD0-U+FDEF and U+xFFFE/U+xFFFF); a name that is not valid UTF-8; longer
    than ``max_len`` characters (1024; pass 880 for Data Box); more than 254 segments; empty
    segments (``a//b``); ``.`` or ``..`` segments (URL normalisation would move the blob); a
    segment or the name ending in ``.`` (the naming rules: avoid names ending with a dot).
    ``prefix`` is empty or ends with ``/``; ``rel_path`` uses ``/`` separators.
    """
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"blob prefix must be empty or end with '/', got {prefix!r}")
    name = prefix + rel_path
    if not rel_path:
        raise SourceError(rel_path, "empty blob name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(display_path(rel_path), "file name is not valid UTF-8") from None
    refused = _refused_char(rel_path)
    if refused is not None:
        raise SourceError(
            display_path(rel_path), f"name holds {refused}; rename the file to copy it"
        )
    if len(name) > max_len:
        raise SourceError(rel_path, f"blob name too long: {len(name)} characters > {max_len}")
    if name.endswith(("/", ".")):
        raise SourceError(rel_path, "blob name must not end with '/' or '.'")
    segments = name.split("/")
    if len(segments) > MAX_BLOB_NAME_SEGMENTS:
        raise SourceError(
            rel_path, f"blob name has {len(segments)} path segments > {MAX_BLOB_NAME_SEGMENTS}"
        )
    for segment in segments:
        if segment == "":
            raise SourceError(rel_path, "blob name has an empty path segment")
        if segment in (".", ".."):
            raise SourceError(rel_path, f"blob name has a '{segment}' path segment")
        if segment.endswith("."):
            raise SourceError(rel_path, f"path segment {segment!r} ends with '.'")
    return name


def names_claimed(prefix: str, rel_path: str) -> tuple[str, ...]:
    """Every blob name a source file could be holding or be confused with, whether or not
    :func:`blob_name` accepts it: the name itself and the name the service makes of it
    (``\\`` → ``/``). Deletion never removes a blob that some existing source file claims.
    """
    name = prefix + rel_path
    rewritten = name.replace("\\", "/")
    return (name,) if rewritten == name else (name, rewritten)


def new_upload_id() -> str:
    """A fresh random upload id (32 lowercase hex characters) for one version of one file."""
    return secrets.token_hex(16)


def block_id(upload_id: str, index: int) -> str:
    """Block ID of block ``index`` of the upload ``upload_id``.

    Base64 of the fixed-length ASCII string ``f"{upload_id}-{index:06d}"`` (39 bytes → 52
    characters, no padding). Azure requires every block ID of a blob to have the same length, and
    embedding the upload id lets a restarted job recognise its own uncommitted blocks in Get Block
    List (same upload id = same file version, resend only what is missing) while a stale block of
    another writer or file version never matches.
    """
    if not _UPLOAD_ID_RE.fullmatch(upload_id):
        raise ValueError("upload_id must be 32 lowercase hex characters")
    if not 0 <= index < MAX_BLOCKS_PER_BLOB:
        raise ValueError(f"block index must be in [0, {MAX_BLOCKS_PER_BLOB}), got {index}")
    raw = f"{upload_id}-{index:0{BLOCK_INDEX_DIGITS}d}".encode("ascii")
    return base64.b64encode(raw).decode("ascii")


def parse_block_id(block_id: str) -> tuple[str, int] | None:
    """``(upload_id, index)`` of a block ID made by :func:`block_id`; None for any other ID."""
    try:
        raw = base64.b64decode(block_id, validate=True)
    except (binascii.Error, ValueError):
        return None
    match = _BLOCK_ID_RE.fullmatch(raw.decode("ascii", errors="replace"))
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def encrypted_bytes(plain_bytes: int) -> int:
    """Stored size of ``plain_bytes`` of plaintext under Azure CSE v2: each started 4 MiB region
    adds a 12-byte nonce and a 16-byte tag.

    An empty file stays empty (0 → 0): the SDK's ``GCMBlobEncryptionStream`` emits no region for
    empty input and ``get_adjusted_upload_size(0, "2.0")`` is 0, and its decryption of an empty
    body returns ``b""``; we match that rather than writing one tagged empty region.
    """
    if plain_bytes < 0:
        raise ValueError(f"plain_bytes must be >= 0, got {plain_bytes}")
    regions = -(-plain_bytes // REGION_BYTES)
    return plain_bytes + regions * REGION_OVERHEAD_BYTES


def blob_metadata(
    *,
    size_bytes: int,
    mtime_ns: int,
    blake3_hex: str,
    upload_id: str,
    job_id: str | None = None,
    encryptiondata: str | None = None,
    content_key: bytes | None = None,
    ctime_ns: int | None = None,
) -> dict[str, str]:
    """Blob metadata recording the source version a blob was made from; the names are
    :mod:`pyengine.engine.metadata_names` (letters and digits only: proxies drop header names
    holding ``_``, Azure rejects ``-``).

    ``SIZE`` is the plaintext size. A plain blob carries ``BLAKE3``, the plaintext BLAKE3
    (= b3sum). An encrypted blob never carries the plaintext digest in clear (whoever may read
    metadata could confirm a guess of the content): it carries ``KEYED_BLAKE3``
    (crypto.keyed_digest_hex under a key derived from ``content_key``) and ``encryptiondata``,
    the CSE v2 JSON under the exact key the Azure SDKs read. ``CTIME_NS`` is the source's ctime
    when it was read (the up-to-date check compares it: an in-place rewrite can restore mtime,
    never ctime). ``JOB_ID`` lets a resumed job recognise its own commit even when the journal
    lost the file's record.
    """
    metadata = {
        mn.SIZE: str(size_bytes),
        mn.MTIME_NS: str(mtime_ns),
        mn.UPLOAD_ID: upload_id,
    }
    if encryptiondata is None:
        metadata[mn.BLAKE3] = blake3_hex
    else:
        if content_key is None:
            raise ValueError("an encrypted blob's metadata needs its content key (keyed digest)")
        metadata[mn.KEYED_BLAKE3] = keyed_digest_hex(content_key, blake3_hex)
    if ctime_ns is not None:
        metadata[mn.CTIME_NS] = str(ctime_ns)
    if job_id is not None:
        metadata[mn.JOB_ID] = job_id
    if encryptiondata is not None:
        metadata[mn.ENCRYPTION_DATA] = encryptiondata
    return metadata
