"""What travels with each request of the Azure target: the body payload (sliced so a stall or a
bandwidth cap is seen per slice), the CRC64 header, block-ID and error-body checks, Bearer tokens,
and the properties and statistics the store hands back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp.payload import Payload

from pyengine import _core
from pyengine.targets.pacer import (
    StallWatch,
    TokenBucket,
)

log = logging.getLogger("pyengine")

STORAGE_SCOPE = "https://storage.azure.com/.default"
#: refresh a Bearer token this long before it expires (tokens live ~60-90 min)
TOKEN_REFRESH_MARGIN_S = 300.0

# --------------------------------------------------------------------------------------------
# Request parts


# slots, not frozen: one per listed blob, and a frozen dataclass sets each field through
# object.__setattr__ (a µs a blob of the online delta's listing)
@dataclass(slots=True)
class BlobProps:
    name: str
    size_bytes: int
    etag: str
    metadata: dict[str, str]


@dataclass
class BlobStats:
    #: requests sent (every try counts)
    requests: int = 0
    #: request body bytes sent (every try counts)
    bytes_sent: int = 0
    #: requests tried again (mirrors the pacer, as do the fields below)
    retries: int = 0
    #: wall-clock seconds during which requests were backing off after 429/503
    throttled_s: float = 0.0
    #: tries aborted by the stall watch
    stalls: int = 0
    #: lowest and highest adaptive concurrency limit reached
    concurrency_min: int = 0
    concurrency_max: int = 0


class _BufferPayload(Payload):
    """A request body over bytes or a (read-only) memoryview that reaches the transport as-is.

    aiohttp's BytesPayload warns above 1 MiB and, on Python < 3.12.9, joins the headers with
    the first body write (``b"".join``: a full copy of the block). Writing a small head first
    and the rest as a memoryview slice keeps the payload uncopied inside aiohttp.
    """

    _autoclose = True
    _HEAD_BYTES = 16 * 1024
    _SLICE_BYTES = 256 * 1024

    def __init__(
        self,
        value: bytes | memoryview,
        watch: StallWatch | None = None,
        bandwidth: TokenBucket | None = None,
    ) -> None:
        view = value if isinstance(value, memoryview) else memoryview(value)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        super().__init__(view, content_type="application/octet-stream")
        self._size = view.nbytes
        self._watch = watch
        self._bandwidth = bandwidth

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        view: memoryview = self._value
        if content_length is not None:
            view = view[:content_length]
        head = self._HEAD_BYTES
        await self._send(writer, view[:head])
        # Slices, so the writer drains between them: what the kernel does not take at once is
        # copied by asyncio's transport into its own buffer, and a whole 8 MiB block handed over
        # in one write was ~40% of the loop's CPU on a large file (py-spy, bench upload).
        step = self._SLICE_BYTES
        for start in range(head, view.nbytes, step):
            await self._send(writer, view[start : start + step])

    async def _send(self, writer: Any, piece: memoryview) -> None:
        watch = self._watch
        if self._bandwidth is not None:
            # Waiting on the cap is not a stall: the watch is paused meanwhile.
            if watch is not None:
                watch.pause()
            await self._bandwidth.take(piece.nbytes)
            if watch is not None:
                watch.touch()
        await writer.write(piece)  # returns once the transport has taken it (drained)
        if watch is not None:
            watch.touch()


def crc64_header(crc64: int) -> str:
    """``x-ms-content-crc64`` value: base64 of the CRC64 as 8 bytes little-endian (as the SDK's
    ``calculate_crc64_bytes``: ``crc.to_bytes(8, "little")``)."""
    return base64.b64encode(crc64.to_bytes(8, "little")).decode("ascii")


def _check_block_id(block_id: str) -> None:
    # Block IDs are base64 strings of at most 64 bytes decoded (Put Block REST doc).
    if not block_id or len(block_id) > 88:
        raise ValueError(f"invalid block id {block_id!r}")


def _xml_error(body: bytes) -> tuple[str | None, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None, ""
    return root.findtext("Code"), (root.findtext("Message") or "").split("\n", 1)[0].strip()


#: 403 code meaning "authenticated, but this SAS/role lacks the permission". Not
#: AuthorizationFailure: Azurite answers a wrong SharedKey signature with it.
_NO_PERMISSION_CODES = ("AuthorizationPermissionMismatch",)

#: Azure's AuthenticationErrorDetail when the SharedKey signature it computed differs from the
#: request's: "The MAC signature found in the HTTP request '<sig>' is not the same as any
#: computed signature. Server used following string to sign: '<string>'."
_MAC_MISMATCH = "is not the same as any computed signature"
#: Azurite's answer to a wrong SharedKey signature: this code, with no detail element
_AZURITE_SIGNATURE_CODE = "AuthorizationFailure"
SIGNATURE_MISMATCH_REASON = (
    "authentication failed, signature mismatch ({status} {code}): the service computed a "
    "different signature; a proxy or gateway between pyengine and the service may have "
    "altered or dropped headers "
    "(nginx drops header names holding '_' by default), or the account key is wrong"
)


def auth_failure_reason(status: int, code: str, body: bytes, *, shared_key: bool) -> str:
    """The one-line reason of a 401/403 that is not a missing permission.

    A SharedKey signature covers the request's x-ms-* headers as sent; a proxy that drops or
    rewrites one (nginx drops names holding ``_`` unless ``underscores_in_headers on``) makes
    the service compute another signature, which reads as a wrong key unless said. Azure names it
    in AuthenticationErrorDetail; Azurite only answers AuthorizationFailure, which for a SharedKey
    request means the same. The detail is never echoed: its string-to-sign holds metadata values
    (and paths)."""
    detail = ""
    with contextlib.suppress(ET.ParseError):
        detail = ET.fromstring(body).findtext("AuthenticationErrorDetail") or "" if body else ""
    if _MAC_MISMATCH in detail or (shared_key and code == _AZURITE_SIGNATURE_CODE):
        return SIGNATURE_MISMATCH_REASON.format(status=status, code=code)
    return f"authentication failed ({status} {code}): check the account key / SAS"


class _TokenCache:
    """The Bearer token of a token credential (azure-identity), fetched again
    TOKEN_REFRESH_MARGIN_S before it expires, so a job of any length never sends an expired one.

    One fetch at a time: 64 requests reaching the refresh moment together wait for one
    get_token (a burst of 64 token requests is what gets a managed-identity endpoint to
    throttle). ``refresh(stale)`` replaces a token the service refused (401) once, however
    many requests were refused with it."""

    def __init__(
        self, credential: Any, *, clock: Any = time.time, margin_s: float | None = None
    ) -> None:
        self.credential = credential
        self._token: str | None = None
        self._expires_on = 0.0
        self._clock = clock
        self._margin_s = TOKEN_REFRESH_MARGIN_S if margin_s is None else margin_s
        self._lock: asyncio.Lock | None = None  # made on first use, inside the running loop
        #: get_token calls made (tests, and a log line when a refused token is replaced)
        self.fetches = 0

    def _fresh(self) -> bool:
        return self._token is not None and self._expires_on - self._clock() >= self._margin_s

    async def header(self) -> str:
        if not self._fresh():
            await self._fetch(lambda: not self._fresh())
        return f"Bearer {self._token}"

    async def refresh(self, stale: str) -> None:
        """After a 401 sent with ``stale`` (a header value): fetch a new token unless another
        request already replaced it."""
        await self._fetch(lambda: f"Bearer {self._token}" == stale)

    async def _fetch(self, still_needed: Any) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not still_needed():  # another request fetched one while this one waited
                return
            tok = await self.credential.get_token(STORAGE_SCOPE)
            self.fetches += 1
            self._token, self._expires_on = tok.token, float(tok.expires_on)


# --- request bodies and headers, response parsing (pure: no I/O) -------------------------------


def commit_headers(
    metadata: Mapping[str, str], tier: str | None = None, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Headers carrying a blob's metadata, tier and index tags (Put Blob, Put Block List, Set
    Blob Metadata): metadata names travel lowercased, as the service stores them."""
    h = {f"x-ms-meta-{k.lower()}": v for k, v in metadata.items()}
    if tier:
        h["x-ms-access-tier"] = tier
    if tags:
        h["x-ms-tags"] = urlencode(dict(tags), quote_via=quote, safe="")
    return h


def block_list_body(block_ids: list[str]) -> bytes:
    """The Put Block List body committing ``block_ids`` in order (each the latest version)."""
    for b in block_ids:
        _check_block_id(b)
    xml = "".join(f"<Latest>{b}</Latest>" for b in block_ids)  # base64 needs no XML escaping
    return f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()


# List Blobs pages read with str.find and small patterns rather than through ElementTree:
# building the tree cost 20 µs a blob, most of the online delta's budget (bench delta: 50 µs a
# file at 20,000 files/s). The service writes these pages in one fixed shape (XML-escaped text;
# no CDATA, comment, DTD or attribute on Blob or Metadata); a page outside that shape is parsed
# by ElementTree as before. (Patterns over the whole page are avoided: a lazy ".*?" or an
# alternation costs Python's re several µs a blob.)
_NAME_RE = re.compile(r"<Name(\s[^>]*)?>([^<]*)</Name\s*>|<Name(\s[^>]*)?/>")
_LENGTH_RE = re.compile(r"<Content-Length\s*>([^<]*)</Content-Length\s*>")
_ETAG_RE = re.compile(r"<Etag\s*>([^<]*)</Etag\s*>")
#: a metadata entry as the service writes it, <name>value</name>: a findall of the opening tags
_SIMPLE_PAIR_RE = re.compile(r"<([^/>\s]+)>([^<]*)")
#: any other form (<name/>, attributes): slower, taken only when the simple one misses a tag
_PAIR_RE = re.compile(r"<([^\s/>]+)[^>]*?(?:/>|>([^<]*)</\1\s*>)")
_NEXT_MARKER_RE = re.compile(r"<NextMarker\s*>([^<]*)</NextMarker\s*>")
_ENCODED_RE = re.compile(r"""\sEncoded\s*=\s*["']true["']""")
_ENTITY_RE = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_UTF8_DECLARATION = re.compile(r"""<\?xml[^?]*?(encoding\s*=\s*["']utf-8["'][^?]*)?\?>""", re.I)


class _NotPlain(Exception):
    """A blob of the page has a shape the pattern reader does not know: ElementTree reads it."""


def _entity(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] == "#":
        return chr(int(ref[2:], 16) if ref[1] == "x" else int(ref[1:]))
    return _ENTITIES[ref]


def _text(raw: str) -> str:
    return _ENTITY_RE.sub(_entity, raw) if "&" in raw else raw


def _plain_page(text: str) -> bool:
    """True when text has the shape the pattern reader knows (else: ElementTree)."""
    start = 0
    if text.startswith("<?"):
        decl = _UTF8_DECLARATION.match(text)
        if decl is None or ("encoding" in decl.group(0).lower() and decl.group(1) is None):
            return False
        start = decl.end()
    return (
        text.rstrip().endswith("</EnumerationResults>")
        and text.find("<!", start) < 0
        and text.find("<?", start) < 0
        and "\r" not in text  # XML turns CR LF into LF in text: leave that to the parser
        and "<Blob " not in text
    )


def _parse_blob_list_plain(text: str) -> tuple[list[BlobProps], str]:
    blobs = []
    end = text.rfind("</Blobs>")
    pos = text.find("<Blob>")
    while 0 <= pos < end:
        close = text.find("</Blob>", pos)
        body = text[pos + 6 : close]
        pos = text.find("<Blob>", close)
        metadata: dict[str, str] = {}
        meta_at = body.find("<Metadata>")
        if meta_at >= 0:
            meta_end = body.find("</Metadata>", meta_at)
            meta = body[meta_at + 10 : meta_end]
            pairs = _SIMPLE_PAIR_RE.findall(meta)
            if meta.count("<") != 2 * len(pairs):
                pairs = [(m.group(1), m.group(2) or "") for m in _PAIR_RE.finditer(meta)]
            metadata = {k: _text(v) for k, v in pairs} if "&" in meta else dict(pairs)
            body = body[:meta_at] + body[meta_end + 11 :]  # a metadata key may be "Name"
        elif "<Metadata" in body and "<Metadata />" not in body and "<Metadata/>" not in body:
            raise _NotPlain
        name_m = _NAME_RE.search(body)
        name = ""
        if name_m is not None and name_m.group(2) is not None:
            name = _text(name_m.group(2))
            if name_m.group(1) and _ENCODED_RE.search(name_m.group(1)):
                name = unquote(name)
        length = _LENGTH_RE.search(body)
        etag = _ETAG_RE.search(body)
        blobs.append(
            BlobProps(
                name=name,
                size_bytes=int(length.group(1) or 0) if length is not None else 0,
                etag=_text(etag.group(1)) if etag is not None else "",
                metadata=metadata,
            )
        )
    marker = _NEXT_MARKER_RE.search(text, max(end, 0))
    return blobs, _text(marker.group(1)) if marker is not None else ""


def parse_blob_list(content: bytes) -> tuple[list[BlobProps], str]:
    """One List Blobs page: its blobs and the marker of the next page ("" for the last)."""
    # the native reader first (cpp/listing.cpp, ~2.6 µs a blob against the pattern reader's
    # ~13 with metadata): it declines every page outside the service's fixed shape, which the
    # Python readers then take as before
    native = _core.read_listing_page(content, BlobProps)
    if native is not None:
        return native
    return _parse_blob_list_python(content)


def _parse_blob_list_python(content: bytes) -> tuple[list[BlobProps], str]:
    """parse_blob_list without the native reader: the pattern reader, else ElementTree."""
    try:
        text = content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        text = ""
    if _plain_page(text):
        with contextlib.suppress(_NotPlain):
            return _parse_blob_list_plain(text)
    return parse_blob_list_tree(content)


def parse_blob_list_tree(content: bytes) -> tuple[list[BlobProps], str]:
    """parse_blob_list through ElementTree: any well-formed page (and the reference the
    pattern reader is tested against)."""
    root = ET.fromstring(content)
    blobs = []
    for b in root.iter("Blob"):
        name_el = b.find("Name")
        name = (name_el.text or "") if name_el is not None else ""
        if name_el is not None and name_el.get("Encoded") == "true":
            name = unquote(name)
        props = b.find("Properties")
        meta = b.find("Metadata")
        blobs.append(
            BlobProps(
                name=name,
                size_bytes=int(props.findtext("Content-Length") or 0) if props is not None else 0,
                etag=(props.findtext("Etag") or "") if props is not None else "",
                metadata={m.tag: m.text or "" for m in meta} if meta is not None else {},
            )
        )
    return blobs, root.findtext("NextMarker") or ""


def parse_block_list(content: bytes, *, uncommitted: bool) -> list[tuple[str, int]]:
    """(block id, size_bytes) of one section of a Get Block List answer."""
    section = ET.fromstring(content).find("UncommittedBlocks" if uncommitted else "CommittedBlocks")
    if section is None:
        return []
    return [(b.findtext("Name") or "", int(b.findtext("Size") or 0)) for b in section]


def props_from_headers(name: str, headers: Mapping[str, str]) -> BlobProps:
    """A Get Blob Properties (HEAD) answer as BlobProps."""
    return BlobProps(
        name=name,
        size_bytes=int(headers.get("Content-Length", "0")),
        etag=headers.get("ETag", ""),
        metadata={
            k[10:].lower(): v for k, v in headers.items() if k.lower().startswith("x-ms-meta-")
        },
    )
