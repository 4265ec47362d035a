"""The Content-Type a blob gets (issue 16 item 5): one rule, from the file's first bytes and name.

1. ``--content-type TYPE`` (CopyOptions.content_type): that type for every file of the run.
2. A DICOM Part 10 file (PS3.10 7.1: a 128-byte preamble, then the magic ``DICM``):
   ``application/dicom`` (RFC 3240), whatever its name; PACS exports are often extensionless.
3. Else the type Python's built-in table (``mimetypes``, without the host's /etc/mime.types, so
   every machine gives the same answer) gives the file name's extension. A compressed name
   (``.gz``, ``.bz2``, ``.xz``) gets the compressor's type: the stored bytes are compressed, and
   a Content-Encoding would make HTTP clients hand back different bytes than were copied.
4. Else ``application/octet-stream``.

A ``.dcm`` file without the preamble is not Part 10 (a bare dataset or ACR-NEMA), which
application/dicom does not cover: it falls through to 3, where the built-in table has no
``.dcm``, and so gets application/octet-stream.

Encrypted blobs get the type of their plaintext: the readers of client-side encryption (the
Azure SDKs, pyengine verify --deep) hand back plaintext, and the ciphertext has no type of its
own. The head is the plaintext head the native core hands back with the file (SNIFF_BYTES of it
at least, see send.py).
"""

from __future__ import annotations

import mimetypes
import re

from pyengine.errors import ConfigError

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
#: PS3.10 7.1: the File Meta Information starts with a 128-byte preamble and the 4-byte "DICM"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
#: the leading bytes content_type_for looks at
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)
#: what a compressed file is stored as (mimetypes calls these encodings)
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}
#: RFC 9110 8.3.1: type "/" subtype *( OWS ";" OWS parameter ), tokens of visible ASCII; a
#: quoted-string parameter value may hold spaces. No CR/LF: the value becomes a request header.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"[\t !#-\[\]-~]*"'  # qdtext, no quoted-pair
_MEDIA_TYPE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")

# The built-in table only (MimeTypes() starts from mimetypes' defaults, unlike the module-level
# functions, which also read the host's mime.types files).
_TABLE = mimetypes.MimeTypes()


def check_content_type(text: str) -> str:
    """``text`` when it is a media type (``type/subtype[; param=value]``); else ConfigError."""
    if not _MEDIA_TYPE_RE.fullmatch(text):
        raise ConfigError("--content-type", f"expected a media type like text/plain, got {text!r}")
    return text


def content_type_for(head: bytes, name: str, override: str | None = None) -> str:
    """The Content-Type of a blob made from a file whose first bytes are ``head`` and whose
    name (or path) is ``name``; ``override`` wins when given (see the module docstring)."""
    if override:
        return override
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return DICOM
    # the base name behind a "/": a name such as "data:x" or "a:b.json" is then never a URL
    guessed, encoding = _TABLE.guess_type("/" + name.rsplit("/", 1)[-1], strict=False)
    if encoding is not None:
        return _COMPRESSED_TYPES.get(encoding, OCTET_STREAM)
    return guessed or OCTET_STREAM


__all__ = ["DICOM", "OCTET_STREAM", "check_content_type", "content_type_for"]
