"""A stand-in for a Data Box's Blob endpoint, for the test suite: an HTTPS reverse proxy in front
of Azurite that refuses what the device refuses.

Like the device ("Azure Data Box Blob storage requirements"): TLS with its own certificate
(a CA and a server certificate made here with ``cryptography``), REST versions up to 2019-02-02
only (a newer ``x-ms-version`` gets 400 like the service's answer to an unknown version), none
of the headers that need a newer version or an account kind it lacks (index tags, immutability,
legal hold, blob tier: 400), and blob names of at most 880 characters (400). Everything else is
forwarded unchanged (SharedKey signatures do not cover the host, so Azurite still checks them).
Every request is logged: (method, unquoted path, headers, status answered).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web
from faultproxy import HOP_BY_HOP, _error
from loop_server import LoopThreadServer
from yarl import URL

MAX_VERSION = "2019-02-02"
MAX_NAME_CHARS = 880
#: headers the device refuses (newer than 2019-02-02, or a general-purpose v2 feature)
REFUSED_PREFIXES = ("x-ms-tags", "x-ms-immutability-", "x-ms-legal-hold", "x-ms-access-tier")


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    status: int


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) PEM files: a private CA and a server
    certificate it signed for 127.0.0.1, as a device's own would be."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test Data Box CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "server.pem", workdir / "key.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(server.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


class DataBoxProxy(LoopThreadServer):
    thread_name = "databoxproxy"

    """HTTPS on a free loopback port, in its own thread and loop; forwards to ``upstream``."""

    def __init__(self, upstream_origin: str, workdir: Path) -> None:
        self.upstream_origin = upstream_origin.rstrip("/")
        self.ca_path, cert, key = make_certificates(workdir)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert, key)
        self.log: list[Logged] = []
        self.origin = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def url(self, container_url: str) -> str:
        """``container_url`` (Azurite's, path-style) routed through the device stand-in."""
        return self.origin + urlsplit(container_url).path

    def refused(self) -> list[Logged]:
        return [e for e in self.log if e.status == 400]

    # --- life cycle ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        )
        app = web.Application(client_max_size=1 << 31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"https://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the device's rules ----------------------------------------------------------------

    def _refusal(self, request: web.Request, path: str) -> tuple[str, str] | None:
        version = request.headers.get("x-ms-version", "")
        if not version or version > MAX_VERSION:  # ISO dates compare as strings
            return "InvalidHeaderValue", f"x-ms-version {version!r} is not supported"
        for name in request.headers:
            if name.lower().startswith(REFUSED_PREFIXES):
                return "UnsupportedHeader", f"{name} is not supported"
        segments = path.split("/", 3)  # "", account, container, blob
        if len(segments) == 4 and len(segments[3]) > MAX_NAME_CHARS:
            return "InvalidResourceName", "blob name longer than 880 characters"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = unquote(request.raw_path.split("?", 1)[0])
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        refusal = self._refusal(request, path)
        if refusal is not None:
            self.log.append(Logged(request.method, path, headers, 400))
            return _error(400, *refusal[:1], {})
        assert self._session is not None
        fwd = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.upstream_origin + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=fwd, data=body if body else None
        ) as up:
            content = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            status = up.status
        self.log.append(Logged(request.method, path, headers, status))
        resp = web.Response(status=status, headers=out, body=content)
        return resp
