"""The signed REST request path every blob operation goes through: one aiohttp session beside
our own HTTP/1.1 connections for Put Blob / Put Block bodies and restore's ranged reads
(raw_http.py), one pacer (retries, adaptive concurrency, caps), SharedKey / SAS / Bearer signing,
and the mapping of the service's answers onto pyengine's errors. The operations themselves (Put
Block, List Blobs, ...) are in azure_blob.py; this module holds what they share.

The SDK's per-request pipeline costs about 2 ms of CPU per request; at > 3,000 requests/s on 2
cores that is the whole budget, so the data path bypasses it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from azure.core.exceptions import ClientAuthenticationError
from yarl import URL

from pyengine.errors import AuthError, ConfigError, DestinationError
from pyengine.options import RetryPolicy
from pyengine.targets.auth import (
    Destination,
    SasCredential,
    SharedKeyCredential,
    redact,
    sas_expiry,
    shared_key_signature,
)
from pyengine.targets.base import ForeignBlocksError
from pyengine.targets.pacer import (
    RETRY_EXCEPTIONS,
    Pacer,
    RetryableHTTPError,
)
from pyengine.targets.profile import AZURE, TargetProfile
from pyengine.targets.raw_http import HttpPool
from pyengine.targets.tls import CertificateProblem, certificate_reason, ssl_context
from pyengine.targets.wire import (
    _NO_PERMISSION_CODES,
    BlobStats,
    _BufferPayload,
    _TokenCache,
    _xml_error,
    auth_failure_reason,
)

log = logging.getLogger("pyengine")

#: methods aiohttp gives a default Content-Type when the request has none
_AUTO_CONTENT_TYPE_METHODS = frozenset({"PUT", "POST", "PATCH"})
_NO_AUTO_CONTENT_TYPE = ("Content-Type",)


class RestClient:
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
        #: our own HTTP/1.1 connections (raw_http.py) for Put Blob / Put Block bodies and
        #: restore's ranged reads (``into``: the body straight into the caller's buffer)
        self._raw: HttpPool | None = None
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

    async def __aenter__(self) -> Any:
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
            # The service sets no cookie: a jar would only be filtered and updated per request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._raw = HttpPool(self._origin, self._ssl, limit=self._max_connections)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
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
        ``into`` (restore's ranged GET), a successful answer's body is received straight into that
        buffer (raw_http.py: the socket writes it there) and the body returned is the filled part.
        """
        assert self._session is not None, "BlobStore used outside 'async with'"
        query = query or {}
        path = self._base_path if name is None else f"{self._base_path}/{quote(name, safe='~/')}"
        qs = urlencode(query, quote_via=quote, safe="") if query else ""
        if self._sas:
            qs = f"{qs}&{self._sas}" if qs else self._sas
        target = f"{path}?{qs}" if qs else path
        size_bytes = 0 if body is None else memoryview(body).nbytes
        base_headers = {"x-ms-version": self.profile.api_version, **(headers or {})}
        skip_auto = None
        if body is not None:
            base_headers.setdefault("content-type", "application/octet-stream")
        elif method in _AUTO_CONTENT_TYPE_METHODS:
            # aiohttp would add an unsigned Content-Type to a body-less PUT; asked per request
            # (a session-wide skip list sends every request down aiohttp's slower header path)
            skip_auto = _NO_AUTO_CONTENT_TYPE
        base_headers["content-length"] = str(size_bytes)
        # restore's ranged GET, and Put Blob / Put Block bodies: our own keep-alive connections
        # (raw_http.py says why); a bandwidth cap paces body slices through aiohttp's payload
        if into is not None:
            raw = self._raw if body is None else None
        else:
            raw = self._raw if body is not None and self.pacer.bandwidth is None else None

        async def send() -> tuple[int, Mapping[str, str], Any, str | None]:
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
                if raw is not None:
                    status, got, content = await raw.request(
                        method, target, hdrs, body=body, into=into, ok=ok, progress=watch.touch
                    )
                    return status, got, content, hdrs.get("authorization")
                data = (
                    None
                    if body is None
                    else _BufferPayload(body, watch=watch, bandwidth=self.pacer.bandwidth)
                )
                url = URL(f"{self._origin}{target}", encoded=True)
                try:
                    async with self._session.request(
                        method, url, headers=hdrs, data=data, skip_auto_headers=skip_auto
                    ) as resp:
                        watch.touch()
                        parts = []
                        async for piece in resp.content.iter_any():
                            watch.touch()
                            parts.append(piece)
                except aiohttp.ClientConnectorCertificateError as e:
                    raise CertificateProblem(certificate_reason(e)) from None
            return resp.status, resp.headers, b"".join(parts), hdrs.get("authorization")

        async def attempt() -> tuple[int, Mapping[str, str], bytes]:
            status, got, content, sent_auth = await send()
            if status == 401 and self._token is not None and sent_auth is not None:
                # The service refused the token (expired early, revoked, clock skew): one new
                # token and one more try; a second 401 is final (the pacer retries no 401).
                await self._token.refresh(sent_auth)
                status, got, content, _ = await send()
            if status in ok or status in tolerate:
                return status, got, content
            code, message = _xml_error(content)
            code = got.get("x-ms-error-code") or code or ""
            failure = RetryableHTTPError(status, got, f"{code} {message}".strip())
            failure.body = content  # type: ignore[attr-defined]  # 403 detail: auth_failure_reason
            raise failure

        try:
            return await self.pacer.call(attempt, what=what)
        except RetryableHTTPError as exc:
            raise self._map_error(exc, self._subject(name), what) from None
        except CertificateProblem as exc:
            raise DestinationError(self._subject(name), f"{what}: {exc}") from None
        except RETRY_EXCEPTIONS as exc:
            raise DestinationError(
                self._subject(name), redact(f"{what}: {type(exc).__name__}: {exc}".strip())
            ) from None
        except ClientAuthenticationError:
            # azure-identity found no credential or was refused one; its message spans a dozen
            # lines (one per credential tried), so it is summed up here
            raise AuthError(
                self._subject(name),
                "no usable credential: give --connection-string, a SAS on the URL, "
                "$AZURE_STORAGE_KEY, or sign in for azure-identity (az login, managed identity)",
            ) from None

    def _subject(self, name: str | None) -> str:
        """The URL an error names (built only when a request fails)."""
        return self.dest.container_url if name is None else self.dest.blob_url(name)

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
