"""Discarding the uncommitted blocks another tool left on a blob, without changing what readers
of the blob see.

The service refuses a Put Block whose block ID length differs from the uncommitted blocks
already staged on the blob (400 InvalidBlobOrBlock): AzCopy stages 48-character IDs, ours are
52 (plan.block_id), so an AzCopy upload that died on a name blocks ours forever. Uncommitted
blocks vanish only when the blob is committed (Put Blob / Put Block List) or deleted, so:

- no committed blob: commit an empty block list with ``If-None-Match: *`` (never over a blob
  someone committed meanwhile), then delete that empty blob with ``If-Match`` its ETag. A
  reader can see the empty blob for that one round trip only; left in place until our commit
  (minutes for a large file, forever if the job dies) it would pass for a real empty file.
  Not Put Blob: Azurite refuses Put Blob with ``If-None-Match: *`` on a name holding only
  uncommitted blocks (409 BlobAlreadyExists), while Put Block List with it succeeds there.
- a committed blob: commit its own committed block list again (``If-Match`` its ETag) with its
  metadata and content headers, so its bytes and properties read the same. Refused when those
  blocks do not add up to the blob (a blob made by one Put Blob lists no blocks): re-committing
  would truncate it, and the file fails instead with a reason saying what to do.

A precondition that fails (412, 409) means another writer committed or deleted the blob in the
meantime, which discards the uncommitted blocks too: not an error here. The caller starts the
file over once; a second refusal fails the file (no loop).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pyengine.errors import DestinationError
from pyengine.targets.wire import _check_block_id, parse_block_list

#: the content properties a Put Block List sets anew (absent = cleared): carried over from the
#: blob's Get Blob Properties answer, response header -> request header
_CARRIED_HEADERS = {
    "content-type": "x-ms-blob-content-type",
    "content-encoding": "x-ms-blob-content-encoding",
    "content-language": "x-ms-blob-content-language",
    "content-disposition": "x-ms-blob-content-disposition",
    "cache-control": "x-ms-blob-cache-control",
    "content-md5": "x-ms-blob-content-md5",
}

Request = Callable[..., Awaitable[tuple[int, Mapping[str, str], bytes]]]


def recommit_headers(props: Mapping[str, str]) -> dict[str, str]:
    """Put Block List headers that keep a blob's metadata, content properties and explicit
    access tier as its Get Blob Properties answer shows them (response header names any case)."""
    lower = {k.lower(): v for k, v in props.items()}
    out = {k: v for k, v in lower.items() if k.startswith("x-ms-meta-")}
    for have, send in _CARRIED_HEADERS.items():
        if lower.get(have):
            out[send] = lower[have]
    tier = lower.get("x-ms-access-tier")
    if tier and lower.get("x-ms-access-tier-inferred", "").lower() != "true":
        out["x-ms-access-tier"] = tier
    return out


async def discard_uncommitted(request: Request, name: str, subject: str) -> None:
    """Discard every uncommitted block of blob ``name``; ``request`` is BlobStore._request.
    DestinationError when it cannot be done without changing a committed blob's content."""
    status, props, _ = await request("HEAD", name, what="get properties", tolerate=(404,))
    if status == 404:
        status, headers, _ = await _commit(request, name, [], {"if-none-match": "*"})
        if status in (409, 412):  # committed meanwhile by another writer: blocks gone too
            return
        await request(
            "DELETE",
            name,
            what="delete empty blob",
            headers={"if-match": headers.get("ETag", "")},
            tolerate=(404, 412),
        )
        return
    _, _, content = await request(
        "GET",
        name,
        what="get block list",
        query={"comp": "blocklist", "blocklisttype": "committed"},
    )
    committed = parse_block_list(content, uncommitted=False)
    size_bytes = int(props.get("Content-Length", "0"))
    if sum(n for _, n in committed) != size_bytes:
        raise DestinationError(
            subject,
            "uncommitted blocks of another tool are staged on this blob, and its committed "
            "content is not a block list that can be committed again unchanged: let that tool "
            "finish, or delete the blob",
        )
    headers = {**recommit_headers(props), "if-match": props.get("ETag", "")}
    await _commit(request, name, [bid for bid, _ in committed], headers)


def committed_list_body(block_ids: list[str]) -> bytes:
    """Put Block List body naming the *committed* version of each block: a staged block may
    reuse a committed block's ID (a tool overwriting its own blob), and <Latest> would commit
    the staged bytes instead."""
    for b in block_ids:
        _check_block_id(b)
    xml = "".join(f"<Committed>{b}</Committed>" for b in block_ids)
    return f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()


async def _commit(
    request: Request, name: str, block_ids: list[str], headers: dict[str, str]
) -> tuple[int, Mapping[str, str], Any]:
    return await request(
        "PUT",
        name,
        what="put block list",
        query={"comp": "blocklist"},
        headers={**headers, "content-type": "application/xml"},
        body=committed_list_body(block_ids),
        tolerate=(409, 412),
    )
