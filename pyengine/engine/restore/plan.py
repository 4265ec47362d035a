"""Restore planning: blob names back to safe local paths, and how a blob is cut into ranges.

Pure functions (no I/O but ``os.pathconf`` of the target directory, asked once). A blob name comes
from whoever could write to the container, so it is hostile until shown otherwise: a name that
could land outside DEST_DIR, or that the local filesystem cannot hold as one file, is refused with
a one-line error for that blob, never rewritten into some other name.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyengine.crypto import REGION_BYTES
from pyengine.engine.plan import choose_block_bytes, encrypted_bytes
from pyengine.engine.scan import display_path
from pyengine.errors import PyEngineError

#: Linux limits (limits.h) when pathconf cannot say: bytes per name, bytes per path
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096
#: temporary name of a file being restored, in its final directory (same filesystem: the rename
#: into place is atomic); its resume state sits beside it with STATE_SUFFIX added
PART_SUFFIX = ".pyengine-part"
STATE_SUFFIX = ".state"
#: the service checks a range's CRC64 only for ranges up to 4 MiB (x-ms-range-get-content-crc64)
MAX_CRC64_RANGE_BYTES = 4 * 1024 * 1024

#: C0 and C1 control characters (NUL included), and lone surrogates (not encodable as UTF-8)
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class UnsafeNameError(PyEngineError):
    """A blob name that cannot be restored under DEST_DIR as it is (one blob fails, not the job)."""


def rel_name(blob_name: str, prefix: str) -> str:
    """The blob's name relative to the listed prefix (a prefix that is a "directory" ends in /)."""
    return blob_name[len(prefix) :] if blob_name.startswith(prefix) else blob_name


def check_name(
    rel: str,
    *,
    name_max_bytes: int = NAME_MAX_BYTES,
    path_max_bytes: int = PATH_MAX_BYTES,
    dest_dir_bytes: int = 0,
) -> list[str]:
    """The path segments of ``rel`` (``/``-separated), or :class:`UnsafeNameError` naming it.

    Refused: empty names and empty segments (``a//b``, a trailing ``/``), absolute names, ``.``
    and ``..`` segments, backslashes (a Windows separator: ``..\\x`` must not become a parent on
    any platform that restores the tree later), NUL and other control characters, lone
    surrogates, a segment longer than NAME_MAX bytes (with room for the temporary name, see
    part_name) or a whole path past PATH_MAX.
    """
    shown = display_path(rel)
    if not rel:
        raise UnsafeNameError(shown or "<empty>", "empty name")
    if rel.startswith("/"):
        raise UnsafeNameError(shown, "absolute name refused (would escape the target directory)")
    if "\\" in rel:
        raise UnsafeNameError(shown, "name holds a backslash (a path separator elsewhere)")
    bad = _CONTROL_RE.search(rel)
    if bad is not None:
        what = "NUL" if bad.group() == "\0" else f"control character U+{ord(bad.group()):04X}"
        if 0xD800 <= ord(bad.group()) <= 0xDFFF:
            what = f"lone surrogate U+{ord(bad.group()):04X}"
        raise UnsafeNameError(shown, f"name holds {what}")
    segments = rel.split("/")
    for segment in segments:
        if segment == "":
            raise UnsafeNameError(shown, "name has an empty path segment")
        if segment in (".", ".."):
            raise UnsafeNameError(shown, f"name has a '{segment}' segment (would escape)")
        if len(segment.encode("utf-8")) > name_max_bytes:
            raise UnsafeNameError(
                shown, f"path segment longer than {name_max_bytes} bytes (the filesystem's limit)"
            )
    if dest_dir_bytes + 1 + len(rel.encode("utf-8")) + len(PART_SUFFIX) + 8 > path_max_bytes:
        raise UnsafeNameError(shown, f"path longer than {path_max_bytes} bytes")
    return segments


def find_kind_clashes(names: Iterable[str]) -> dict[str, str]:
    """Names that must be both a file and a directory (``a`` and ``a/b``): each file-side name
    mapped to its reason. The directory side is restored; the file cannot be, and fails."""
    names = list(names)
    dirs: set[str] = set()
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    return {n: "a file and a directory share this name" for n in names if n in dirs}


def fs_limits(dest_dir: str) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the filesystem holding ``dest_dir`` (Linux defaults if unknown)."""
    try:
        return os.pathconf(dest_dir, "PC_NAME_MAX"), os.pathconf(dest_dir, "PC_PATH_MAX")
    except (OSError, ValueError):
        return NAME_MAX_BYTES, PATH_MAX_BYTES


def part_name(leaf: str, name_max_bytes: int = NAME_MAX_BYTES) -> str:
    """Temporary name of ``leaf`` while it is restored: ``.<leaf>.pyengine-part`` when that and
    its state file fit NAME_MAX, else a digest of the leaf (a long name stays restorable)."""
    name = f".{leaf}{PART_SUFFIX}"
    if len((name + STATE_SUFFIX).encode("utf-8")) <= name_max_bytes:
        return name
    return ".pyengine-" + hashlib.sha256(leaf.encode("utf-8")).hexdigest()[:40] + PART_SUFFIX


# --- ranges -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeLayout:
    """How one blob is fetched: ``count`` ranges of ``range_bytes`` plaintext each (the last one
    shorter), the i-th stored at ``i * stored_range_bytes``. ``range_bytes`` is the upload's
    block size (a power of two, whole 4 MiB regions when encrypted), so every range but the last
    is a complete BLAKE3 subtree and whole GCM regions."""

    plain_bytes: int
    stored_bytes: int
    range_bytes: int
    encrypted: bool

    @property
    def stored_range_bytes(self) -> int:
        return encrypted_bytes(self.range_bytes) if self.encrypted else self.range_bytes

    @property
    def count(self) -> int:
        return -(-self.plain_bytes // self.range_bytes)

    def plain_span(self, index: int) -> tuple[int, int]:
        offset = index * self.range_bytes
        return offset, min(self.range_bytes, self.plain_bytes - offset)

    def stored_span(self, index: int) -> tuple[int, int]:
        offset = index * self.stored_range_bytes
        return offset, min(self.stored_range_bytes, self.stored_bytes - offset)


def plain_size_of(stored_bytes: int, encrypted: bool) -> int:
    """Plaintext size of a blob of ``stored_bytes`` (CSE v2: 28 bytes per started region)."""
    if not encrypted:
        return stored_bytes
    frame = REGION_BYTES + 28
    regions = -(-stored_bytes // frame)
    return stored_bytes - 28 * regions


def layout_for(stored_bytes: int, *, encrypted: bool, min_range_bytes: int) -> RangeLayout:
    """Ranges for a blob of ``stored_bytes``: the block size upload would choose for its
    plaintext (a power of two >= ``min_range_bytes``, 50,000 blocks at most)."""
    plain = plain_size_of(stored_bytes, encrypted)
    range_bytes = choose_block_bytes(plain, min_block_bytes=min_range_bytes, encrypt=encrypted)
    return RangeLayout(plain, stored_bytes, range_bytes, encrypted)


# --- metadata ---------------------------------------------------------------------------------


def meta(metadata: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` present in ``metadata`` (both spellings: ``pyenginesize`` and the
    older ``pyengine_size``); names are compared case-insensitively, as the service does."""
    lowered = {k.lower(): v for k, v in metadata.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def recorded_int(metadata: Mapping[str, str], *names: str) -> int | None:
    value = meta(metadata, *names)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
