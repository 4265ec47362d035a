"""Shared fixtures: a real Azurite blob service for the whole session, a fresh container per test.

Set ``PYENGINE_AZURITE_DEBUG=1`` to have Azurite write its debug log (every request, the string
it signed) to ``azurite.debug_log`` in the session's temp dir; it is off by default because it
slows Azurite down.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from databoxproxy import DataBoxProxy
from faultproxy import FaultProxy
from hypothesis import settings

from pyengine.crypto import LocalKeyWrapper
from pyengine.errors import ConfigError
from pyengine.targets.azurite import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME, Azurite

# No per-example deadline in any property test: on a loaded 2-core CI box an example's time is
# no property of the code under test (one failed that way at the default 200 ms).
settings.register_profile("pyengine", deadline=None)
settings.load_profile("pyengine")

__all__ = ["DEV_ACCOUNT_KEY", "DEV_ACCOUNT_NAME", "Azurite"]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real Azurite blob service on a free loopback port, stopped at the end of the session."""
    workdir = tmp_path_factory.mktemp("azurite")
    debug_log = workdir / "debug.log" if os.environ.get("PYENGINE_AZURITE_DEBUG") else None
    try:
        service = Azurite(workdir, debug_log=debug_log).start()
    except ConfigError as e:
        pytest.fail(e.one_line(), pytrace=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def container(azurite: Azurite) -> Iterator[str]:
    """A fresh, uniquely named container; yields its Destination-ready URL (no credential)."""
    from azure.storage.blob import BlobServiceClient

    name = f"t-{uuid.uuid4().hex[:20]}"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        svc.create_container(name)
        yield f"{azurite.account_url}/{name}"
        svc.delete_container(name)


@pytest.fixture
def sdk_blob(azurite: Azurite):
    """``sdk_blob(container_url, name, key=None)``: the official SDK's BlobClient for a blob; with
    a 32-byte key it decrypts Azure client-side encryption v2 (the interop test of record)."""
    from azure.storage.blob import BlobClient

    def make(container_url: str, name: str, key: bytes | None = None) -> BlobClient:
        container_name = container_url.rstrip("/").rsplit("/", 1)[1]
        decrypt = {}
        if key is not None:
            decrypt = {
                "require_encryption": True,
                "key_encryption_key": LocalKeyWrapper(key),
                "encryption_version": "2.0",
            }
        return BlobClient.from_connection_string(
            azurite.connection_string, container_name, name, **decrypt
        )

    return make


@pytest.fixture
def fault_proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    """A fault-injection reverse proxy in front of the session's Azurite (tests/faultproxy.py);
    ``fault_proxy.url(container)`` routes a container URL through it, the test sets its rules."""
    origin = azurite.account_url.rsplit("/", 1)[0]
    with FaultProxy(origin) as proxy:
        yield proxy


@pytest.fixture
def databox(azurite: Azurite, tmp_path: Path) -> Iterator[DataBoxProxy]:
    """A Data Box stand-in in front of the session's Azurite (tests/databoxproxy.py): HTTPS with
    a certificate of a test CA (``databox.ca_path``), REST versions up to 2019-02-02 only."""
    certs = tmp_path / "certs"
    certs.mkdir()
    with DataBoxProxy(azurite.account_url.rsplit("/", 1)[0], certs) as proxy:
        yield proxy
