"""Control-plane calls that set a committed blob's properties without re-sending a byte: what
``pyengine finalize`` stamps on blobs a Data Box brought into the account (their tags, tier,
immutability and content headers could not travel through the device).

Each is one request of the Blob service REST reference, sent through the store's signed request
core and its pacer (retries, caps) like every other request:

- Get Blob Properties (HEAD), keeping the content headers Set Blob Properties would clear;
- Set Blob Properties (``PUT ?comp=properties``): it *replaces* every x-ms-blob-content-*
  header, so :func:`set_content_headers` sends the blob's current ones with the new ones;
- Set Blob Tags (``PUT ?comp=tags``, XML body; REST 2019-12-12);
- Set Blob Tier (``PUT ?comp=tier``, x-ms-access-tier);
- Set Blob Immutability Policy (``PUT ?comp=immutabilityPolicies``; 2020-06-12) and Set Legal
  Hold (``PUT ?comp=legalhold``; 2020-10-02).

Kept out of azure_blob.py (a module per question): these take a BlobStore and call its
``_request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from pyengine.targets.wire import BlobProps, props_from_headers

#: Get Blob Properties answer header -> the Set Blob Properties request header that sets it
CONTENT_HEADERS = {
    "content-type": "x-ms-blob-content-type",
    "content-md5": "x-ms-blob-content-md5",
    "content-encoding": "x-ms-blob-content-encoding",
    "content-language": "x-ms-blob-content-language",
    "content-disposition": "x-ms-blob-content-disposition",
    "cache-control": "x-ms-blob-cache-control",
}
_SET_PROPERTY_HEADERS = frozenset(CONTENT_HEADERS.values())
UNTIL_HEADER = "x-ms-immutability-policy-until-date"
MODE_HEADER = "x-ms-immutability-policy-mode"
LEGAL_HOLD_HEADER = "x-ms-legal-hold"


@dataclass(frozen=True)
class BlobState:
    """A HEAD answer: size, ETag and metadata, the content headers as Set Blob Properties
    names them, the tier when the service says it."""

    props: BlobProps
    content_headers: dict[str, str]
    tier: str | None


def is_content_header(name: str) -> bool:
    """Whether a commit header (x-ms-blob-content-type, ...) is one Set Blob Properties sets."""
    return name.lower() in _SET_PROPERTY_HEADERS


async def head(store: Any, name: str) -> BlobState | None:
    """Get Blob Properties; None if the blob does not exist."""
    status, h, _ = await store._request("HEAD", name, what="get properties", tolerate=(404,))
    if status == 404:
        return None
    lowered = {k.lower(): v for k, v in h.items()}
    content = {CONTENT_HEADERS[k]: v for k, v in lowered.items() if k in CONTENT_HEADERS and v}
    return BlobState(props_from_headers(name, h), content, lowered.get("x-ms-access-tier"))


async def set_content_headers(
    store: Any, name: str, current: Mapping[str, str], wanted: Mapping[str, str]
) -> None:
    """Set Blob Properties with ``wanted`` over ``current`` (both x-ms-blob-* names): the call
    clears every content header it is not given, so the current ones go along."""
    headers = {**{k.lower(): v for k, v in current.items()}}
    headers.update({k.lower(): v for k, v in wanted.items()})
    await store._request(
        "PUT", name, what="set properties", query={"comp": "properties"}, headers=headers
    )


def tags_body(tags: Mapping[str, str]) -> bytes:
    """The Set Blob Tags XML body (keys and values XML-escaped)."""
    tag_xml = "".join(
        f"<Tag><Key>{escape(k)}</Key><Value>{escape(v)}</Value></Tag>" for k, v in tags.items()
    )
    return f'<?xml version="1.0" encoding="utf-8"?><Tags><TagSet>{tag_xml}</TagSet></Tags>'.encode()


async def set_tags(store: Any, name: str, tags: Mapping[str, str]) -> None:
    """Set Blob Tags: replaces the blob's index tags with ``tags``."""
    await store._request(
        "PUT",
        name,
        what="set tags",
        query={"comp": "tags"},
        headers={"content-type": "application/xml"},
        body=tags_body(tags),
        ok=(200, 201, 202, 204),
    )


async def set_immutability(store: Any, name: str, headers: Mapping[str, str]) -> None:
    """Set Blob Immutability Policy and/or Set Legal Hold from the commit headers a Data Box
    could not take (x-ms-immutability-policy-until-date/-mode, x-ms-legal-hold)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if UNTIL_HEADER in lowered:
        policy = {UNTIL_HEADER: lowered[UNTIL_HEADER]}
        if MODE_HEADER in lowered:
            policy[MODE_HEADER] = lowered[MODE_HEADER]
        await store._request(
            "PUT",
            name,
            what="set immutability policy",
            query={"comp": "immutabilityPolicies"},
            headers=policy,
        )
    if LEGAL_HOLD_HEADER in lowered:
        await store._request(
            "PUT",
            name,
            what="set legal hold",
            query={"comp": "legalhold"},
            headers={LEGAL_HOLD_HEADER: lowered[LEGAL_HOLD_HEADER]},
        )


__all__ = [
    "CONTENT_HEADERS",
    "BlobState",
    "head",
    "is_content_header",
    "set_content_headers",
    "set_immutability",
    "set_tags",
    "tags_body",
]
