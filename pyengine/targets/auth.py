"""Where a job writes and as whom: destination URLs, credentials, and request signing.

Also the ONE place URLs and connection strings are made safe for humans (:func:`redact`): SAS
signatures, account keys and Authorization values never reach a log, the journal or an error.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pyengine.errors import ConfigError

#: Azurite's well-known development account (public, documented by Microsoft)
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# --------------------------------------------------------------------------------------------
# Redaction: the ONE place URLs and connection strings are formatted for humans.

_REDACTIONS = (
    # SAS signature in a URL or query string
    (re.compile(r"(?i)(\bsig=)[^&\s\"'<>]+"), r"\1REDACTED"),
    # connection-string secrets
    (re.compile(r"(?i)(\bAccountKey=)[^;\s\"'<>]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(\bSharedAccessSignature=)[^;\s\"'<>]+"), r"\1REDACTED"),
    # Authorization header in any rendering: "Authorization: X", "'Authorization': 'X'"
    (re.compile(r"(?i)(\bAuthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+"), r"\1REDACTED"),
    # a bare Bearer / SharedKey credential without its header name
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9\-_.~+/=]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(\bSharedKey\s+[^:\s]+:)[A-Za-z0-9+/=]+"), r"\1REDACTED"),
)


#: one search for what every pattern above needs (a superset: no \b anchors), so text holding
#: no secret at all (every manifest line, most messages) costs one scan instead of six
_MAY_HOLD_SECRET = re.compile(
    r"(?i)sig=|accountkey=|sharedaccesssignature=|authorization|bearer\s|sharedkey\s"
)


def redact(text: str) -> str:
    """``text`` with SAS signatures, account keys and Authorization values replaced."""
    if not _MAY_HOLD_SECRET.search(text):
        return text
    for pattern, repl in _REDACTIONS:
        text = pattern.sub(repl, text)
    return text


# --------------------------------------------------------------------------------------------
# Destinations

# Azure container naming rules ("Naming and Referencing Containers, Blobs, and Metadata"):
# 3-63 chars, lowercase letters, digits and hyphens, starting with a letter or digit, every
# hyphen between two letters/digits. $root and $web are the two service-defined names.
_CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")


@dataclass(frozen=True)
class Destination:
    #: ``https://ACCOUNT.blob.core.windows.net`` or ``http://127.0.0.1:PORT/ACCOUNT``
    account_url: str
    account_name: str
    container: str
    #: blob name prefix, "" or ending in "/"
    prefix: str
    #: SAS query string without "?" (secret)
    sas: str | None = field(default=None, repr=False)

    @property
    def container_url(self) -> str:
        return f"{self.account_url}/{self.container}"

    def redacted(self) -> str:
        """The destination URL for humans: no SAS, no secret."""
        return self.container_url + ("/" + quote(self.prefix, safe="~/") if self.prefix else "")

    def blob_url(self, name: str) -> str:
        """URL of blob ``name`` (full name within the container), without any secret."""
        return f"{self.container_url}/{quote(name, safe='~/')}"


def _is_path_style(host: str) -> bool:
    # Azurite and other emulators address the account in the path, not the host name.
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_destination(url: str) -> Destination:
    """Parse ``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS]`` or path-style
    ``http://127.0.0.1:PORT/ACCOUNT/CONTAINER[/PREFIX][?SAS]`` (Azurite)."""
    shown = redact(url.split("?", 1)[0])
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(shown, "not a blob URL (expected https://ACCOUNT.blob.../CONTAINER)")
    # drop the empty segment before the leading "/"
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    if _is_path_style(host):
        if not segments or not segments[0]:
            raise ConfigError(
                shown, "missing account name in the path (http://HOST:PORT/ACCOUNT/..)"
            )
        account = segments.pop(0)
        account_url = f"{parts.scheme}://{netloc}/{quote(account)}"
    else:
        account = host.split(".", 1)[0]
        account_url = f"{parts.scheme}://{netloc}"
    if not _ACCOUNT_RE.match(account):
        raise ConfigError(shown, f"invalid storage account name {account!r}")
    if not segments or not segments[0]:
        raise ConfigError(shown, "missing container name")
    container = segments[0]
    if not (_CONTAINER_RE.match(container) or container in ("$root", "$web")):
        raise ConfigError(
            shown,
            f"invalid container name {container!r}: 3-63 lowercase letters, digits or single "
            "hyphens, starting and ending with a letter or digit",
        )
    path_segments = segments[1:]
    if path_segments and path_segments[-1] == "":
        path_segments.pop()  # one trailing "/" ends a prefix; any other empty segment is a typo
    for segment in path_segments:
        if segment in ("", ".", ".."):
            # The service keeps "a//b" and "a/../b" as literal names that no tool resolves the
            # same way: refused here, before any request (a usage error, exit 2)
            raise ConfigError(
                shown,
                "the blob prefix has an empty, '.' or '..' segment "
                f"({'/'.join(path_segments)!r}): write it as plain names joined by single '/'",
            )
    prefix = "/".join(path_segments)
    return Destination(
        account_url=account_url,
        account_name=account,
        container=container,
        prefix=prefix + "/" if prefix else "",
        sas=parts.query or None,
    )


# --------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class SharedKeyCredential:
    account_name: str
    account_key: str = field(repr=False)


def sas_expiry(sas: str) -> datetime | None:
    """The expiry (``se=``, ISO 8601 UTC: a date, or a time with or without fractions) of a SAS
    query string; None when it has none or it does not parse. Not a secret: safe to show."""
    for part in sas.lstrip("?").split("&"):
        key, _, value = part.partition("=")
        if key != "se":
            continue
        text = unquote(value).strip().replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return None


@dataclass(frozen=True)
class SasCredential:
    #: query string without "?"
    token: str = field(repr=False)


def _parse_connection_string(cs: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in cs.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip()
    if out.get("usedevelopmentstorage", "").lower() == "true":
        out.setdefault("accountname", DEV_ACCOUNT_NAME)
        out.setdefault("accountkey", DEV_ACCOUNT_KEY)
    return out


def resolve_credential(
    dest: Destination,
    connection_string: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Any:
    """The credential for ``dest``; first found wins:

    1. the SAS on the destination URL -> :class:`SasCredential`;
    2. ``connection_string`` or env ``AZURE_STORAGE_CONNECTION_STRING`` (must name the same
       account) -> :class:`SharedKeyCredential` or :class:`SasCredential`;
    3. env ``AZURE_STORAGE_KEY`` -> :class:`SharedKeyCredential` for the URL's account;
    4. azure-identity's aio ``DefaultAzureCredential`` (a token credential).

    :class:`BlobStore` takes ownership of what it is given and closes token credentials.
    """
    if dest.sas:
        return SasCredential(dest.sas)
    cs = connection_string or env.get("AZURE_STORAGE_CONNECTION_STRING")
    if cs:
        fields = _parse_connection_string(cs)
        name = fields.get("accountname")
        if name is not None and name != dest.account_name:
            raise ConfigError(
                dest.redacted(),
                f"connection string is for account {name!r}, not {dest.account_name!r}",
            )
        if fields.get("accountkey"):
            return SharedKeyCredential(dest.account_name, fields["accountkey"])
        if fields.get("sharedaccesssignature"):
            return SasCredential(fields["sharedaccesssignature"].lstrip("?"))
        raise ConfigError(
            dest.redacted(), "connection string has neither AccountKey nor SharedAccessSignature"
        )
    key = env.get("AZURE_STORAGE_KEY")
    if key:
        return SharedKeyCredential(dest.account_name, key)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


#: header names the plain key below sorts exactly as the service does (lowercase: SharedKey
#: canonicalises names in lowercase)
_PLAIN_NAME = re.compile(r"[a-z0-9-]*")


def _plain_sort_key(name: str) -> tuple[str, tuple[int, ...]]:
    """The service's order of x-ms-* names made of [a-z0-9-]: first by the name without its
    hyphens (a hyphen weighs nothing at the first level of its culture-aware comparison), then,
    between names equal so, position by position with a letter or digit before the name's end
    before a hyphen. test_auth_header_order checks it against the SDK's comparison."""
    return name.replace("-", ""), (*(2 if c == "-" else 0 for c in name), 1)


@functools.lru_cache(maxsize=1024)
def _sorted_x_ms(names: tuple[str, ...]) -> list[str]:
    # Azure sorts x-ms-* headers with a culture-aware comparison (hyphens weigh less than
    # letters). Every name pyengine sends is [a-z0-9-], sorted by the plain key above; any
    # other (another tool's metadata kept through a rewrap) goes to the SDK's emulation,
    # imported only then: azure.storage.blob's package costs a copy ~18 MiB of RSS. The same few
    # header sets recur on every request, so the order is computed once per set.
    if all(_PLAIN_NAME.fullmatch(n) for n in names):
        return sorted(names, key=_plain_sort_key)
    from azure.storage.blob._shared.authentication import compare

    return sorted(names, key=functools.cmp_to_key(compare))


def shared_key_signature(
    account_name: str,
    key: bytes,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """``Authorization`` value for SharedKey, per "Authorize with Shared Key" (REST docs,
    "Blob, Queue, and File services (Shared Key authorization)", version 2009-09-19 and later).

    ``path`` is the URL-encoded path as sent; ``query`` the decoded parameters; ``headers``
    the request headers with lowercase names.
    """
    length = headers.get("content-length", "")
    sts = [
        method,
        headers.get("content-encoding", ""),
        headers.get("content-language", ""),
        "" if length == "0" else length,  # "" for zero since version 2015-02-21
        headers.get("content-md5", ""),
        headers.get("content-type", ""),
        "",  # Date: we always send x-ms-date, which wins
        headers.get("if-modified-since", ""),
        headers.get("if-match", ""),
        headers.get("if-none-match", ""),
        headers.get("if-unmodified-since", ""),
        headers.get("range", ""),
    ]
    for k in _sorted_x_ms(tuple([k for k in headers if k[:5] == "x-ms-"])):
        sts.append(f"{k}:{headers[k]}")
    resource = f"/{account_name}{path}"
    for k in sorted(query):
        resource += f"\n{k.lower()}:{query[k]}"
    sts.append(resource)
    digest = hmac.new(key, "\n".join(sts).encode("utf-8"), hashlib.sha256).digest()
    return f"SharedKey {account_name}:{base64.b64encode(digest).decode()}"
