"""The blob metadata names pyengine writes, and the one way to read them.

Every name is letters and digits only. Metadata travels as ``x-ms-meta-<name>`` request headers,
and a name cannot hold ``-`` (Azure: names are C# identifiers); earlier versions used ``_``
instead (``pyengine_size``), but nginx with its default ``underscores_in_headers off`` and many
egress proxies and gateways silently drop request headers whose names hold ``_``: the SharedKey
signature, computed over the headers as sent, then no longer matches and every write gets 403.

Blobs written under the old names stay readable: :func:`meta_get` falls back to them, and every
reader (copy's up-to-date check, verify, rekey) goes through it. Nothing writes the old names.
"""

from __future__ import annotations

from collections.abc import Mapping

#: plaintext size in bytes of the source file the blob was made from
SIZE = "pyenginesize"
#: the source's mtime (ns) when it was read
MTIME_NS = "pyenginemtimens"
#: the source's ctime (ns) when it was read (an in-place rewrite can restore mtime, never ctime)
CTIME_NS = "pyenginectimens"
#: the random upload id of this file version (also inside its block IDs)
UPLOAD_ID = "pyengineuploadid"
#: plaintext BLAKE3 (= b3sum), hex; plain blobs only (and encrypted ones written before keyed
#: digests)
BLAKE3 = "pyengineblake3"
#: BLAKE3 in keyed mode of the plaintext digest, under a key derived from the content key, hex;
#: encrypted blobs only (pyengine.crypto.keyed_digest_hex)
KEYED_BLAKE3 = "pyenginekeyedblake3"
#: the job that committed the blob
JOB_ID = "pyenginejobid"
#: Azure client-side encryption v2 JSON: the SDKs' own name, read by them as is
ENCRYPTION_DATA = "encryptiondata"

#: new name -> the name versions before issue 16 wrote (still read, never written)
OLD_NAMES: dict[str, str] = {
    SIZE: "pyengine_size",
    MTIME_NS: "pyengine_mtime_ns",
    UPLOAD_ID: "pyengine_upload_id",
    BLAKE3: "pyengine_blake3",
    JOB_ID: "pyengine_job_id",
}


def meta_get(metadata: Mapping[str, str], name: str) -> str | None:
    """The value of metadata ``name`` (one of the constants above), read under its old name when
    the blob was written before the rename; None when the blob has neither."""
    value = metadata.get(name)
    if value is None and name in OLD_NAMES:
        value = metadata.get(OLD_NAMES[name])
    return value


def renamed(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` with every old name replaced by its new one (a new name already present
    wins). Set Blob Metadata replaces the whole set, so a rewrite (rekey) also moves a blob onto
    names that pass through proxies."""
    old_to_new = {old: new for new, old in OLD_NAMES.items()}
    out = {k: v for k, v in metadata.items() if k not in old_to_new}
    for k, v in metadata.items():
        if k in old_to_new:
            out.setdefault(old_to_new[k], v)
    return out
