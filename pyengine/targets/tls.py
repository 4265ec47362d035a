"""HTTPS trust for the Blob data path: which certificates are trusted (``--ca-cert``, the
system store and ``SSL_CERT_FILE``), and the one-line error when the server's is refused.

A Data Box serves its Blob endpoint with its own self-signed certificate; the operator downloads
it from the device's local web UI and passes it with ``--ca-cert``.
"""

from __future__ import annotations

import ssl

import aiohttp

from pyengine.errors import ConfigError


class CertificateProblem(Exception):
    """The server's TLS certificate was refused: no retry can change that (the pacer retries
    connection errors, and aiohttp's certificate error is one)."""


def ssl_context(ca_cert_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for HTTPS: the system's trust store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
    honoured, as by ``ssl.create_default_context``) when ``ca_cert_file`` is None, else that PEM
    file of CA certificates added to it (a Data Box presents its own self-signed one)."""
    if ca_cert_file is None:
        return None  # aiohttp's default: ssl.create_default_context()
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=ca_cert_file)
    except FileNotFoundError:
        raise ConfigError(ca_cert_file, "--ca-cert: no such file") from None
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        raise ConfigError(
            ca_cert_file, f"--ca-cert: not a PEM certificate file ({reason})"
        ) from None
    return ctx


def certificate_reason(exc: aiohttp.ClientConnectorCertificateError) -> str:
    """One line for a refused server certificate, with what to do about it."""
    return certificate_reason_of(exc.certificate_error)


def certificate_reason_of(cert_error: Exception) -> str:
    """certificate_reason from the ssl module's own error (raw_http.py connects without
    aiohttp)."""
    detail = getattr(cert_error, "verify_message", None) or getattr(cert_error, "reason", None)
    return (
        f"TLS certificate not trusted ({detail or cert_error}); for a Data Box, pass its "
        "certificate with --ca-cert FILE (or SSL_CERT_FILE)"
    )
