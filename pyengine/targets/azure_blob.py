"""Azure Blob target: the blob operations, each one signed REST request (the request path,
signing and error mapping: rest.py; destinations and credentials: auth.py). Requests follow the
Blob service REST reference (Put Blob, Put Block, Put Block List, Get Block List, Get Blob
Properties, List Blobs, ...) and must pass Azurite's signature checks.

Blob names passed to :class:`BlobStore` are full names within the container: the caller adds
``Destination.prefix``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from pyengine.errors import ContainerNotFoundError
from pyengine.targets.auth import (
    DEV_ACCOUNT_KEY,
    DEV_ACCOUNT_NAME,
    Destination,
    SasCredential,
    SharedKeyCredential,
    parse_destination,
    redact,
    resolve_credential,
    shared_key_signature,
)
from pyengine.targets.discard import discard_uncommitted
from pyengine.targets.profile import AZURE_API_VERSION
from pyengine.targets.rest import RestClient
from pyengine.targets.wire import (
    _NO_PERMISSION_CODES,
    BlobProps,
    BlobStats,
    _check_block_id,
    _xml_error,
    block_list_body,
    commit_headers,
    crc64_header,
    parse_blob_list,
    parse_block_list,
    props_from_headers,
)

log = logging.getLogger("pyengine")

#: REST API version of Azure requests. 2021-08-06: tags (>= 2019-12-12) and tier on Put Blob /
#: Put Block List (>= 2018-11-09). Azurite accepts it; Data Box accepts at most 2019-02-02, so
#: each BlobStore sends its profile's version (pyengine.targets.profile).
API_VERSION = AZURE_API_VERSION


class BlobStore(RestClient):
    """The blob operations the engine, verify and restore call (the Target protocol of
    targets/base.py and a few more), each one signed request through RestClient (rest.py)."""

    async def ensure_container(self, create: bool) -> None:
        """Check the container exists (List Blobs, maxresults=1: allowed for a container SAS
        with list permission, unlike Get Container Properties); create it if asked."""
        status, headers, content = await self._request(
            "GET",
            None,
            what="check container",
            query={"restype": "container", "comp": "list", "maxresults": "1"},
            tolerate=(403, 404),
        )
        if status == 200:
            return
        if status == 403:
            code = headers.get("x-ms-error-code") or _xml_error(content)[0] or ""
            if self._sas and code in _NO_PERMISSION_CODES:
                # A valid SAS without list permission (write-only): the container cannot be
                # checked; the first write reports it if it is missing.
                return
            raise self._auth_error(self.dest.container_url, 403, code, content)
        if not create:
            raise ContainerNotFoundError(
                self.dest.container_url, "container does not exist (use --create-container)"
            )
        await self._request(
            "PUT",
            None,
            what="create container",
            query={"restype": "container"},
            tolerate=(409,),  # created meanwhile by another writer
        )

    async def list_blobs(
        self, prefix: str = "", *, metadata: bool = True, page_size: int = 5000
    ) -> AsyncIterator[BlobProps]:
        """Blobs whose name starts with ``prefix`` (List Blobs, 5000 per page). Without
        ``metadata`` a page is a fraction of the size (encryptiondata is ~500 bytes a blob)."""
        async for blobs, _ in self._list_pages(prefix, "metadata" if metadata else "", page_size):
            for blob in blobs:
                yield blob

    async def _list_pages(
        self, prefix: str, include: str, page_size: int
    ) -> AsyncIterator[tuple[list[BlobProps], bytes]]:
        """List Blobs page by page: each page's blobs and its raw answer."""
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": str(page_size)}
            if include:
                query["include"] = include
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            _, _, content = await self._request("GET", None, what="list blobs", query=query)
            blobs, marker = parse_blob_list(content)
            yield blobs, content
            if not marker:
                return

    # ---- data path ----------------------------------------------------------------------

    async def put_blob(
        self,
        name: str,
        data: bytes | memoryview,
        *,
        crc64: int,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Put Blob (whole blob in one request); returns the ETag. ``headers``: more blob
        properties set by the commit (content type, immutability, legal hold)."""
        extra, headers = headers, commit_headers(metadata, tier, tags)
        headers.update(extra or {})
        headers["x-ms-blob-type"] = "BlockBlob"
        headers["x-ms-content-crc64"] = crc64_header(crc64)
        _, h, _ = await self._request("PUT", name, what="put blob", headers=headers, body=data)
        return h.get("ETag", "")

    async def put_block(
        self, name: str, block_id: str, data: bytes | memoryview, *, crc64: int
    ) -> None:
        """Put Block (uncommitted until Put Block List)."""
        _check_block_id(block_id)
        await self._request(
            "PUT",
            name,
            what="put block",
            query={"comp": "block", "blockid": block_id},
            headers={"x-ms-content-crc64": crc64_header(crc64)},
            body=data,
        )

    async def discard_uncommitted(self, name: str) -> None:
        """Discard the uncommitted blocks staged on blob ``name``, leaving what readers see as
        it was (targets/discard.py says how); DestinationError when that cannot be done."""
        await discard_uncommitted(self._request, name, self.dest.blob_url(name))

    async def put_block_list(
        self,
        name: str,
        block_ids: list[str],
        *,
        metadata: Mapping[str, str],
        tier: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Put Block List committing ``block_ids`` in order (each the latest version); ETag."""
        body = block_list_body(block_ids)
        extra, headers = headers, commit_headers(metadata, tier, tags)
        headers.update(extra or {})
        headers["content-type"] = "application/xml"
        _, h, _ = await self._request(
            "PUT",
            name,
            what="put block list",
            query={"comp": "blocklist"},
            headers=headers,
            body=body,
        )
        return h.get("ETag", "")

    async def get_block_list(self, name: str, *, uncommitted: bool = True) -> list[tuple[str, int]]:
        """(block id, size_bytes) of the uncommitted blocks (default) or of the committed ones;
        [] if the blob has none or does not exist."""
        status, _, content = await self._request(
            "GET",
            name,
            what="get block list",
            query={
                "comp": "blocklist",
                "blocklisttype": "uncommitted" if uncommitted else "committed",
            },
            tolerate=(404,),
        )
        if status == 404:
            return []
        return parse_block_list(content, uncommitted=uncommitted)

    async def get_properties(self, name: str) -> BlobProps | None:
        """Get Blob Properties (HEAD); None if the blob does not exist."""
        status, h, _ = await self._request("HEAD", name, what="get properties", tolerate=(404,))
        if status == 404:
            return None
        return props_from_headers(name, h)

    async def download(self, name: str) -> bytes:
        """The whole blob (tests and verify)."""
        _, _, content = await self._request("GET", name, what="download")
        return content

    async def download_range(self, name: str, offset_bytes: int, length_bytes: int) -> bytes | None:
        """``length_bytes`` (> 0) of the blob from ``offset_bytes`` (Get Blob with x-ms-range);
        None if the blob does not exist. Fewer bytes come back where the blob is shorter."""
        end = offset_bytes + length_bytes - 1  # the range header's end is inclusive
        status, _, content = await self._request(
            "GET",
            name,
            what="download range",
            headers={"x-ms-range": f"bytes={offset_bytes}-{end}"},
            ok=(200, 206),
            tolerate=(404,),
        )
        return None if status == 404 else content

    async def delete_blob(self, name: str) -> None:
        """Delete the blob and its snapshots; absent is fine."""
        await self._request(
            "DELETE",
            name,
            what="delete blob",
            headers={"x-ms-delete-snapshots": "include"},
            tolerate=(404,),
        )

    async def set_metadata(
        self, name: str, metadata: Mapping[str, str], *, if_match: str | None = None
    ) -> str:
        """Set Blob Metadata (replaces all of it; no byte of content is sent); returns the new
        ETag. With ``if_match`` a blob changed since it was read is left alone (HTTP 412)."""
        headers = commit_headers(metadata)
        if if_match:
            headers["if-match"] = if_match  # lowercase: the SharedKey signer reads it so
        _, h, _ = await self._request(
            "PUT", name, what="set metadata", query={"comp": "metadata"}, headers=headers
        )
        return h.get("ETag", "")

    async def get_range(
        self,
        name: str,
        offset_bytes: int,
        length_bytes: int,
        *,
        if_match: str | None = None,
        crc64: bool = False,
        into: memoryview | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        """Restore's ranged Get Blob: (response headers, body). ``if_match`` makes a blob that
        changed since it was listed fail (HTTP 412) instead of mixing two versions; ``crc64``
        asks the service for the range's CRC64 (``x-ms-content-crc64`` in the answer; ranges of
        at most 4 MiB only)."""
        headers = {"x-ms-range": f"bytes={offset_bytes}-{offset_bytes + length_bytes - 1}"}
        if if_match:
            headers["if-match"] = if_match  # lowercase: the SharedKey signer reads it so
        if crc64:
            headers["x-ms-range-get-content-crc64"] = "true"
        _, h, content = await self._request(
            "GET", name, what="download range", headers=headers, ok=(200, 206), into=into
        )
        return h, content

    async def set_tier(
        self, name: str, tier: str, *, rehydrate_priority: str | None = None
    ) -> None:
        """Set Blob Tier; from Archive, ``rehydrate_priority`` (Standard | High) says how fast."""
        headers = {"x-ms-access-tier": tier}
        if rehydrate_priority:
            headers["x-ms-rehydrate-priority"] = rehydrate_priority
        await self._request("PUT", name, what="set tier", query={"comp": "tier"}, headers=headers)

    async def list_blobs_tagged(
        self, prefix: str = "", *, page_size: int = 5000
    ) -> AsyncIterator[tuple[BlobProps, dict[str, str]]]:
        """As list_blobs (with metadata), each blob with its index tags (include=tags): restore
        selects by tenant and study UID from the listing, one request per 5000 blobs."""
        async for blobs, content in self._list_pages(prefix, "metadata,tags", page_size):
            for blob, tags in zip(blobs, _blob_tags(content), strict=True):
                yield blob, tags


def _blob_tags(content: bytes) -> list[dict[str, str]]:
    """The index tags of each blob of a List Blobs page, in listing order."""
    import xml.etree.ElementTree as ET

    out = []
    for b in ET.fromstring(content).iter("Blob"):
        out.append(
            {
                t.findtext("Key") or "": t.findtext("Value") or ""
                for t in b.iterfind("Tags/TagSet/Tag")
            }
        )
    return out


#: what the rest of pyengine takes from here (auth names re-exported for one import site)
__all__ = [
    "API_VERSION",
    "DEV_ACCOUNT_KEY",
    "DEV_ACCOUNT_NAME",
    "BlobProps",
    "BlobStats",
    "BlobStore",
    "Destination",
    "SasCredential",
    "SharedKeyCredential",
    "crc64_header",
    "parse_destination",
    "redact",
    "resolve_credential",
    "shared_key_signature",
]
