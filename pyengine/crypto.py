"""Key-encryption keys and the ``encryptiondata`` metadata of Azure client-side encryption v2.0.

The bytes themselves are encrypted by the native core (AES-256-GCM per 4 MiB region, nonce =
region index as 12 big-endian bytes, stored as ``nonce | ciphertext | tag``). This module makes
the per-blob metadata that lets the official SDKs (Python, .NET, Java) find and unwrap the content
key: it must match what ``azure.storage.blob._encryption._generate_encryption_data_dict`` writes
for version "2.0" field for field, in the same order (Java's parser depends on the order).

Secrets: key bytes never appear in a repr, an exception message or a log line.
"""

from __future__ import annotations

import hashlib
import json
import os
from base64 import b64decode, b64encode
from collections.abc import Mapping
from importlib import metadata as _metadata
from typing import Any, Protocol

import blake3
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .engine import metadata_names as _names
from .errors import ConfigError

KEY_BYTES = 32
#: the key-wrap algorithm name the Azure SDKs use for AES key wrap (RFC 3394) with a 256-bit KEK
A256KW = "A256KW"
#: CSE v2 constants (azure-storage-blob _encryption.py: _GCM_REGION_DATA_LENGTH, _GCM_NONCE_LENGTH)
PROTOCOL_V2 = "2.0"
REGION_BYTES = 4 * 1024 * 1024
NONCE_BYTES = 12
TAG_BYTES = 16
#: v2 wraps ("2.0" padded with NUL to 8 bytes) ‖ CEK: the SDK checks the prefix after unwrapping,
#: so a key wrapped for another protocol version cannot be replayed as v2 (a downgrade guard).
_V2_WRAP_PREFIX = PROTOCOL_V2.encode("ascii").ljust(8, b"\0")


def _library_version() -> str:
    try:
        return _metadata.version("pyengine")
    except _metadata.PackageNotFoundError:  # running from a source checkout
        return "0+unknown"


#: The SDK writes "Python <azure-storage-blob version>"; readers never parse it. We keep the
#: "<language> <version>" shape and say which library wrote the blob.
ENCRYPTION_LIBRARY = f"Python pyengine {_library_version()}"


class KeyEncryptionKey(Protocol):
    """The azure-storage-blob KEK interface (also met by Key Vault's KeyWrapper classes)."""

    def wrap_key(self, key: bytes) -> bytes: ...
    def unwrap_key(self, key: bytes, algorithm: str) -> bytes: ...
    def get_kid(self) -> str: ...
    def get_key_wrap_algorithm(self) -> str: ...


class LocalKeyWrapper:
    """A local 256-bit AES key-encryption key (AES key wrap, "A256KW").

    ``kid`` defaults to ``"local:"`` + the first 8 hex digits of SHA-256(key): stable for a key,
    different for another key (the SDK refuses a KEK whose kid differs from the blob's), and it
    reveals nothing usable about the key.
    """

    __slots__ = ("_key", "_kid")

    def __init__(self, key: bytes, kid: str | None = None) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            found = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise ConfigError("key-encryption key", f"must be exactly 32 bytes, found {found}")
        self._key = bytes(key)
        self._kid = kid if kid is not None else "local:" + hashlib.sha256(self._key).hexdigest()[:8]

    def wrap_key(self, key: bytes) -> bytes:
        return aes_key_wrap(self._key, key)

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        if algorithm != A256KW:
            raise ValueError(f"unsupported key wrap algorithm {algorithm!r}, expected {A256KW!r}")
        # raises cryptography's InvalidUnwrap for a wrong key: the integrity check of RFC 3394
        return aes_key_unwrap(self._key, key)

    def get_kid(self) -> str:
        return self._kid

    def get_key_wrap_algorithm(self) -> str:
        return A256KW

    def __repr__(self) -> str:
        return f"LocalKeyWrapper(kid={self._kid!r})"

    def __reduce__(self) -> Any:
        # pickling would copy the key into whatever stores the pickle (a journal, a Dask task)
        raise TypeError("LocalKeyWrapper cannot be pickled: it holds a secret key")


def load_kek_file(path: str, *, kid: str | None = None) -> LocalKeyWrapper:
    """A :class:`LocalKeyWrapper` from a file holding exactly 32 raw bytes.

    Raises :class:`ConfigError` naming ``path`` when the file is missing, unreadable or of another
    length (no content is ever quoted).
    """
    try:
        with open(path, "rb") as f:
            size_bytes = os.fstat(f.fileno()).st_size
            # read one byte more than needed: a longer file is an error, never silently truncated
            key = f.read(KEY_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "key file: no such file or directory") from None
    except PermissionError:
        raise ConfigError(path, "key file: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, "key file: is a directory") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else "cannot be read"
        raise ConfigError(path, f"key file: {reason.lower()}") from None
    if len(key) != KEY_BYTES:
        found = max(size_bytes, len(key))
        raise ConfigError(path, f"key file must hold exactly 32 raw bytes, found {found}")
    return LocalKeyWrapper(key, kid=kid)


def new_content_key() -> bytes:
    """A fresh random 256-bit content-encryption key (one per blob version)."""
    return os.urandom(KEY_BYTES)


def encryption_metadata(content_key: bytes, kek: KeyEncryptionKey) -> str:
    """The ``encryptiondata`` metadata value for a blob encrypted with ``content_key``.

    Byte-identical to what azure-storage-blob writes for ``encryption_version="2.0"`` (same
    fields, order and ``json.dumps`` separators) except for ``EncryptionLibrary``.
    """
    if len(content_key) != KEY_BYTES:
        raise ValueError(f"content key must be {KEY_BYTES} bytes, found {len(content_key)}")
    wrapped = kek.wrap_key(_V2_WRAP_PREFIX + content_key)
    data = {
        "WrappedContentKey": {
            "KeyId": kek.get_kid(),
            "EncryptedKey": b64encode(wrapped).decode("ascii"),
            "Algorithm": kek.get_key_wrap_algorithm(),
        },
        "EncryptionAgent": {"Protocol": PROTOCOL_V2, "EncryptionAlgorithm": "AES_GCM_256"},
        "EncryptedRegionInfo": {"DataLength": REGION_BYTES, "NonceLength": NONCE_BYTES},
        "KeyWrappingMetadata": {"EncryptionLibrary": ENCRYPTION_LIBRARY},
        "EncryptionMode": "FullBlob",
    }
    # ensure_ascii (the default, as in the SDK): metadata travels in HTTP headers
    return json.dumps(data)


def content_key_from_metadata(encryptiondata: str, kek: KeyEncryptionKey) -> bytes | None:
    """The content key wrapped in an ``encryptiondata`` value, or None when ``kek`` is not the
    key that wrapped it (another kid) or the value is not ours to read (not v2)."""
    try:
        data = json.loads(encryptiondata)
        wrapped = data["WrappedContentKey"]
        if data["EncryptionAgent"]["Protocol"] != PROTOCOL_V2 or wrapped["KeyId"] != kek.get_kid():
            return None
        plain = kek.unwrap_key(b64decode(wrapped["EncryptedKey"]), wrapped["Algorithm"])
    except (ValueError, KeyError, TypeError, InvalidUnwrap):
        return None
    if len(plain) != len(_V2_WRAP_PREFIX) + KEY_BYTES or not plain.startswith(_V2_WRAP_PREFIX):
        return None
    return plain[len(_V2_WRAP_PREFIX) :]


#: BLAKE3 derive_key context for the key of an encrypted blob's stored digest. Fixed forever: blobs
#: written under it are checked with it for their whole retention.
DIGEST_KEY_CONTEXT = "pyengine 2026-11-26 encrypted blob plaintext digest v1"
#: blob metadata name of that keyed digest (the names live in pyengine.engine.metadata_names)
KEYED_DIGEST_METADATA = _names.KEYED_BLAKE3


def digest_key(content_key: bytes) -> bytes:
    """The 32-byte key of an encrypted blob's stored digest, derived from its content key.

    Why keyed: blob metadata is readable by a much wider role than the KEK holders, and a plain
    BLAKE3 of the plaintext there would let anyone confirm a guess of a file's content. Deriving
    the key from the content key means whoever can unwrap the content key can check the digest,
    and nobody else can.
    """
    if len(content_key) != KEY_BYTES:
        raise ValueError(f"content key must be {KEY_BYTES} bytes, found {len(content_key)}")
    return blake3.blake3(content_key, derive_key_context=DIGEST_KEY_CONTEXT).digest()


def keyed_digest_hex(content_key: bytes, blake3_hex: str) -> str:
    """What an encrypted blob stores instead of its plaintext BLAKE3: BLAKE3 in keyed mode, under
    :func:`digest_key`, of the 32-byte plaintext BLAKE3 (= b3sum). A MAC of the digest: checking
    it costs one hash of 32 bytes once the plaintext BLAKE3 is known."""
    digest = bytes.fromhex(blake3_hex)
    if len(digest) != 32:
        raise ValueError("blake3_hex must be 64 hex characters")
    return blake3.blake3(digest, key=digest_key(content_key)).hexdigest()


def decrypt_with_sdk(ciphertext: bytes, encryptiondata: str, kek: KeyEncryptionKey) -> bytes:
    """Whole-blob plaintext, decrypted by azure-storage-blob's own ``decrypt_blob``.

    For tests and verification: it proves the SDK can read what we wrote without a round trip to
    a server. Uses a private SDK function (checked against 12.31); its errors propagate unchanged
    (ValueError for a wrong kid or bad metadata, InvalidTag/InvalidUnwrap for wrong keys or bytes).
    """
    from azure.storage.blob import _encryption as sdk  # private API: imported only when used

    headers: Mapping[str, str] = {"x-ms-meta-encryptiondata": encryptiondata}
    extra: dict[str, Any] = {}
    if hasattr(sdk, "_GCMRegionNonceValidator"):
        # recent SDKs (12.31 here) require a validator enforcing one nonce encoding per blob
        extra["nonce_validator"] = sdk._GCMRegionNonceValidator()
    # end_offset is an index into the decrypted content: len(ciphertext) is past its end
    plain = sdk.decrypt_blob(True, kek, None, ciphertext, 0, len(ciphertext), headers, **extra)
    return bytes(plain)


__all__ = [
    "A256KW",
    "DIGEST_KEY_CONTEXT",
    "ENCRYPTION_LIBRARY",
    "KEYED_DIGEST_METADATA",
    "KeyEncryptionKey",
    "LocalKeyWrapper",
    "decrypt_with_sdk",
    "digest_key",
    "encryption_metadata",
    "keyed_digest_hex",
    "load_kek_file",
    "new_content_key",
]
