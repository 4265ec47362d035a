"""Azure Blob target: the lean signed REST data path (destinations and signing: auth.py).

Every request is a plain aiohttp request signed here (SAS query, SharedKey or Bearer token) and
sent through the one :class:`~pyengine.targets.pacer.Pacer`. The SDK's per-request pipeline
costs about 2 ms of CPU per request; at > 3,000 requests/s on 2 cores that is the whole budget,
so the data path bypasses it. Requests follow the Blob service REST reference (Put Blob, Put Block,
Put Block
List, Get Block List, Get Blob Properties, List Blobs) and must pass Azurite's signature checks.

Blob names passed to :class:`BlobStore` are full names within the container: the caller adds
``Destination.prefix``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from azure.core.exceptions import ClientAuthenticationError
from yarl import URL

from pyengine.errors import AuthError, ConfigError, ContainerNotFoundError, DestinationError
from pyengine.options import RetryPolicy
from pyengine.targets.auth import (
    DEV_ACCOUNT_KEY,
    DEV_ACCOUNT_NAME,
    Destination,
    SasCredential,
    SharedKeyCredential,
    parse_destination,
    redact,
    resolve_credential,
    sas_expiry,
    shared_key_signature,
)
from pyengine.targets.base import ForeignBlocksError
from pyengine.targets.discard import discard_uncommitted
from pyengine.targets.pacer import (
    RETRY_EXCEPTIONS,
    Pacer,
    RetryableHTTPError,
)
from pyengine.targets.profile import AZURE, AZURE_API_VERSION, TargetProfile
from pyengine.targets.tls import CertificateProblem, certificate_reason, ssl_context
from pyengine.targets.wire import (
    _NO_PERMISSION_CODES,
    BlobProps,
    BlobStats,
    _BufferPayload,
    _check_block_id,
    _TokenCache,
    _xml_error,
    auth_failure_reason,
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


class BlobStore:
    """Async context manager holding one aiohttp session (pool of ``max_connections``) and one
    pacer shared by all its requests: retries, the adaptive concurrency limit (at most
    ``max_connections`` in flight), and the optional caps ``max_requests_per_s`` and
    ``cap_bytes_per_s`` (request body bytes, every try counting). Takes ownership of
    ``credential`` (closes token credentials on exit)."""

    def __init__(
        self,
        dest: Destination,
        credential: Any,
        *,
        retry: RetryPolicy,
        max_connections: int = 64,
        max_requests_per_s: float | None = None,
        cap_bytes_per_s: float | None = None,
        profile: TargetProfile = AZURE,
        ca_cert_file: str | None = None,
    ) -> None:
        self.dest = dest
        #: what the endpoint accepts; every request sends its api_version
        self.profile = profile
        self._ssl = ssl_context(ca_cert_file)
        self.pacer = Pacer(
            retry,
            max_concurrency=max_connections,
            max_requests_per_s=max_requests_per_s,
            cap_bytes_per_s=cap_bytes_per_s,
        )
        self._stats = BlobStats()
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._sas: str | None = None
        self._key: bytes | None = None
        self._token: _TokenCache | None = None
        self._credential = credential
        if isinstance(credential, SasCredential):
            self._sas = credential.token.lstrip("?")
        elif isinstance(credential, SharedKeyCredential):
            try:
                self._key = base64.b64decode(credential.account_key, validate=True)
            except ValueError:
                raise AuthError(dest.redacted(), "account key is not valid base64") from None
            self._account = credential.account_name
        elif credential is not None and hasattr(credential, "get_token"):
            self._token = _TokenCache(credential)
        elif credential is not None:
            raise ConfigError(dest.redacted(), f"unsupported credential {type(credential)!r}")
        # path part of every URL, encoded as sent (path-style URLs include the account)
        self._base_path = urlsplit(dest.container_url).path
        self._origin = dest.container_url[: len(dest.container_url) - len(self._base_path)]
        self._date = ("", 0)

    async def __aenter__(self) -> BlobStore:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ttl_dns_cache=300,
            ssl=self._ssl if self._ssl is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No sock_read: the pacer's stall watch aborts a try that makes no progress, and
            # aiohttp's read timer would also run while a capped body is still being sent.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        close = getattr(self._credential, "close", None)
        if self._token is not None and close is not None:
            await close()

    # ---- request core ------------------------------------------------------------------

    def _x_ms_date(self) -> str:
        now = int(time.time())
        if self._date[1] != now:  # formatdate costs ~5 us; requests share the second
            self._date = (formatdate(now, usegmt=True), now)
        return self._date[0]

    async def _request(
        self,
        method: str,
        name: str | None,
        *,
        what: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | memoryview | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
        tolerate: tuple[int, ...] = (),
        into: memoryview | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one signed request through the pacer; returns (status, headers, body).

        A status in ``tolerate`` is returned instead of raised (e.g. 404 for "absent"). With
        ``into`` (restore), a successful answer's body is copied into that buffer as it arrives
        and the body returned is the filled part of it (no joined copy, no fresh allocation).
        """
        assert self._session is not None, "BlobStore used outside 'async with'"
        query = query or {}
        path = self._base_path if name is None else f"{self._base_path}/{quote(name, safe='~/')}"
        qs = urlencode(query, quote_via=quote, safe="") if query else ""
        if self._sas:
            qs = f"{qs}&{self._sas}" if qs else self._sas
        url = URL(f"{self._origin}{path}?{qs}" if qs else f"{self._origin}{path}", encoded=True)
        subject = self.dest.container_url if name is None else self.dest.blob_url(name)
        size_bytes = 0 if body is None else memoryview(body).nbytes
        base_headers = {"x-ms-version": self.profile.api_version, **(headers or {})}
        if body is not None:
            base_headers.setdefault("content-type", "application/octet-stream")
        base_headers["content-length"] = str(size_bytes)

        async def send() -> tuple[aiohttp.ClientResponse, Any, str | None]:
            hdrs = dict(base_headers)
            hdrs["x-ms-date"] = self._x_ms_date()
            if self._key is not None:
                hdrs["authorization"] = shared_key_signature(
                    self._account, self._key, method, path, query, hdrs
                )
            elif self._token is not None:
                hdrs["authorization"] = await self._token.header()
            self._stats.requests += 1
            self._stats.bytes_sent += size_bytes
            async with self.pacer.stall_watch() as watch:
                data = (
                    None
                    if body is None
                    else _BufferPayload(body, watch=watch, bandwidth=self.pacer.bandwidth)
                )
                try:
                    async with self._session.request(method, url, headers=hdrs, data=data) as resp:
                        watch.touch()
                        if into is not None and resp.status in ok:
                            # restore: the body goes straight into its pooled buffer
                            filled = await _read_into(resp, into, watch)
                            return resp, filled, hdrs.get("authorization")
                        parts = []
                        async for piece in resp.content.iter_any():
                            watch.touch()
                            parts.append(piece)
                except aiohttp.ClientConnectorCertificateError as e:
                    raise CertificateProblem(certificate_reason(e)) from None
            return resp, b"".join(parts), hdrs.get("authorization")

        async def attempt() -> tuple[int, Mapping[str, str], bytes]:
            resp, content, sent_auth = await send()
            if resp.status == 401 and self._token is not None and sent_auth is not None:
                # The service refused the token (expired early, revoked, clock skew): one new
                # token and one more try; a second 401 is final (the pacer retries no 401).
                await self._token.refresh(sent_auth)
                resp, content, _ = await send()
            if resp.status in ok or resp.status in tolerate:
                return resp.status, resp.headers, content
            code, message = _xml_error(content)
            code = resp.headers.get("x-ms-error-code") or code or ""
            failure = RetryableHTTPError(resp.status, resp.headers, f"{code} {message}".strip())
            failure.body = content  # type: ignore[attr-defined]  # 403 detail: auth_failure_reason
            raise failure

        try:
            return await self.pacer.call(attempt, what=what)
        except RetryableHTTPError as exc:
            raise self._map_error(exc, subject, what) from None
        except CertificateProblem as exc:
            raise DestinationError(subject, f"{what}: {exc}") from None
        except RETRY_EXCEPTIONS as exc:
            raise DestinationError(
                subject, redact(f"{what}: {type(exc).__name__}: {exc}".strip())
            ) from None
        except ClientAuthenticationError:
            # azure-identity found no credential or was refused one; its message spans a dozen
            # lines (one per credential tried), so it is summed up here
            raise AuthError(
                subject,
                "no usable credential: give --connection-string, a SAS on the URL, "
                "$AZURE_STORAGE_KEY, or sign in for azure-identity (az login, managed identity)",
            ) from None

    @property
    def stats(self) -> BlobStats:
        """Requests and bytes sent, with the pacer's counters as of now (read when asked, not
        copied on every request)."""
        pacer, st = self.pacer, self._stats
        st.retries, st.throttled_s, st.stalls = pacer.retries, pacer.throttled_s, pacer.stalls
        st.concurrency_min, st.concurrency_max = pacer.limit.lowest, pacer.limit.highest
        return st

    def _auth_error(self, subject: str, status: int, code: str, body: bytes) -> AuthError:
        expiry = sas_expiry(self._sas) if self._sas else None
        if expiry is not None and expiry <= datetime.now(UTC):
            # the service says only "AuthenticationFailed": the SAS's own se= field says why
            return AuthError(
                subject, f"SAS token expired at {expiry:%Y-%m-%dT%H:%M:%SZ}; issue a new one"
            )
        reason = auth_failure_reason(status, code, body, shared_key=self._key is not None)
        return AuthError(subject, reason)

    def _map_error(self, exc: RetryableHTTPError, subject: str, what: str) -> Exception:
        code = exc.headers.get("x-ms-error-code") or exc.message.split(" ", 1)[0]
        if exc.status == 400 and code == "InvalidBlobOrBlock" and what == "put block":
            return ForeignBlocksError(
                subject, "uncommitted blocks of another tool (other block ID length) are staged"
            )
        if exc.status in (401, 403) and code not in _NO_PERMISSION_CODES:
            return self._auth_error(subject, exc.status, code, getattr(exc, "body", b""))
        tail = "" if not exc.retryable else f" (after {exc.tries} tries in {exc.elapsed_s:.0f} s)"
        return DestinationError(subject, redact(f"{what}: HTTP {exc.status} {exc.message}{tail}"))

    # ---- control plane ------------------------------------------------------------------

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
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": str(page_size)}
            if metadata:
                query["include"] = "metadata"
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            _, _, content = await self._request("GET", None, what="list blobs", query=query)
            blobs, marker = parse_blob_list(content)
            for blob in blobs:
                yield blob
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
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": str(page_size)}
            query["include"] = "metadata,tags"
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            _, _, content = await self._request("GET", None, what="list blobs", query=query)
            blobs, marker = parse_blob_list(content)
            for blob, tags in zip(blobs, _blob_tags(content), strict=True):
                yield blob, tags
            if not marker:
                return


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


async def _read_into(resp: Any, into: memoryview, watch: Any) -> Any:
    """Copy a response body into ``into``; the filled part. A body longer than the buffer is
    a broken answer (the range asked for fits it): it fails like a cut-off transfer."""
    filled = 0
    async for piece in resp.content.iter_any():
        watch.touch()
        end = filled + len(piece)
        if end > len(into):
            raise aiohttp.ClientPayloadError("answer longer than the range asked for")
        into[filled:end] = piece
        filled = end
    return into[:filled]


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
