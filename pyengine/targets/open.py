"""Which target a DEST names, and opening it: a blob URL (Azure, Azurite) or a mounted Data Box
share (a local directory, or a ``file://`` URL) laid out ``<account>_BlockBlob/<container>``.

A share DEST must sit under a ``<account>_BlockBlob`` folder: the device uploads that layout
only, and a path that merely looks right (a typo in the mount point) must not silently fill a
local disk. A plain directory is refused; copying to one is what `cp`/`rsync` are for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pyengine.engine.plan import MAX_BLOB_NAME_CHARS
from pyengine.errors import ConfigError
from pyengine.options import CopyOptions
from pyengine.targets.auth import _ACCOUNT_RE, _CONTAINER_RE, Destination, parse_destination
from pyengine.targets.base import Target

#: Data Box: "blob names ... up to 880 characters" (Data Box limits, Azure block blob naming)
SHARE_MAX_NAME_CHARS = 880
SHARE_SUFFIX = "_BlockBlob"
#: the device's other share kinds, which hold no block blobs
_OTHER_SHARES = re.compile(r".+_(PageBlob|AzFile)$")
ENCRYPT_REFUSED = (
    "metadata (the wrapped key) cannot travel through a share: copy encrypted to the Data Box "
    "REST endpoint or encrypt on the online delta"
)
USAGE = ".../<account>_BlockBlob/<container>[/prefix] (a mounted Data Box share)"


def is_share(text_or_dest: str | Destination) -> bool:
    """Whether a DEST (text, or a parsed Destination) is a local share rather than a blob URL."""
    if isinstance(text_or_dest, Destination):
        return text_or_dest.account_url.startswith("file://")
    return text_or_dest.startswith("file://") or "://" not in text_or_dest


def share_destination(text: str) -> Destination:
    """A share DEST (a path, or ``file://`` + absolute path) as a Destination whose URLs are
    ``file://`` URLs: the journal, the job lock and the manifest name it like any other."""
    path = unquote(urlsplit(text).path) if text.startswith("file://") else text
    parts = Path(os.path.abspath(path)).parts
    at = max((i for i, p in enumerate(parts) if p.endswith(SHARE_SUFFIX)), default=None)
    if at is None:
        other = next((p for p in parts if _OTHER_SHARES.fullmatch(p)), None)
        if other is not None:
            raise ConfigError(text, f"{other} is not a block blob share; use <account>_BlockBlob")
        raise ConfigError(text, f"not a Data Box share path: expected {USAGE}")
    account = parts[at][: -len(SHARE_SUFFIX)]
    if not _ACCOUNT_RE.match(account):
        raise ConfigError(text, f"invalid storage account name {account!r} in {parts[at]}")
    if at + 1 >= len(parts):
        raise ConfigError(text, f"missing container folder: expected {USAGE}")
    container = parts[at + 1]
    if not _CONTAINER_RE.match(container):
        raise ConfigError(
            text,
            f"invalid container name {container!r}: 3-63 lowercase letters, digits or single "
            "hyphens, starting and ending with a letter or digit",
        )
    prefix = "/".join(parts[at + 2 :])
    root = os.path.join(*parts[: at + 1])
    return Destination(
        account_url="file://" + quote(root, safe="/~"),
        account_name=account,
        container=container,
        prefix=prefix + "/" if prefix else "",
    )


def destination(text: str) -> Destination:
    """Any DEST: a share path first (auth.parse_destination knows blob URLs only)."""
    return share_destination(text) if is_share(text) else parse_destination(text)


def check_options(dest: Destination, options: CopyOptions) -> None:
    """Refuse what a destination cannot honour (exit 2, one line)."""
    if is_share(dest) and options.encrypt:
        raise ConfigError("--encrypt", ENCRYPT_REFUSED)


def name_limit(dest: Destination) -> int:
    """The longest blob name ``dest`` accepts (plan.blob_name's max_len)."""
    return SHARE_MAX_NAME_CHARS if is_share(dest) else MAX_BLOB_NAME_CHARS


def share_state_path(dest: Destination, journal_path: str | os.PathLike[str] | None) -> Path:
    """Where the share target keeps what the share cannot carry: beside the journal, one file
    per container (share_state.py says why not on the share)."""
    from pyengine.state.journal import default_journal_path

    journal = Path(journal_path) if journal_path is not None else default_journal_path()
    digest = hashlib.sha256(dest.container_url.encode("utf-8", "surrogateescape")).hexdigest()
    return journal.parent / "shares" / f"{dest.account_name}-{dest.container}-{digest[:12]}.sqlite"


@contextlib.asynccontextmanager
async def open_target(
    dest: Destination, credential: Any, options: CopyOptions, *, profile: Any = None
) -> AsyncIterator[Target]:
    """The job's target for ``dest``: a ShareTarget for a share (``credential`` unused: None),
    else a BlobStore, which takes ownership of ``credential`` (resolve_credential's), speaking
    ``profile``'s REST version (targets/profile.py: Azure or a Data Box)."""
    cap_bytes_per_s = options.cap_mbps * 1e6 / 8 if options.cap_mbps else None
    target: Any
    if is_share(dest):
        from pyengine.targets.local_share import ShareTarget

        check_options(dest, options)
        target = ShareTarget(
            dest,
            state_path=share_state_path(dest, options.journal_path),
            max_concurrency=options.max_concurrency,
            cap_bytes_per_s=cap_bytes_per_s,
        )
    else:
        from pyengine.targets.azure_blob import BlobStore

        target = BlobStore(
            dest,
            credential,
            retry=options.retry,
            max_connections=options.max_concurrency,
            max_requests_per_s=options.max_requests_per_s,
            cap_bytes_per_s=cap_bytes_per_s,
            ca_cert_file=options.ca_cert_file,
            **({"profile": profile} if profile is not None else {}),
        )
    async with target:
        yield target


__all__ = [
    "ENCRYPT_REFUSED",
    "SHARE_MAX_NAME_CHARS",
    "check_options",
    "destination",
    "is_share",
    "name_limit",
    "open_target",
    "share_destination",
    "share_state_path",
]
