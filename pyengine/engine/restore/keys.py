"""Which key-encryption key unwraps a blob's content key: ``--kek-file`` for every blob, or,
with ``--policy FILE`` (RestoreOptions.policy), the key of the tenant whose destination covers
that blob, as `copy --policy` encrypted it.

A policy copy writes tenant T's files under T's ``dest`` (account, container, prefix) wrapped
with T's ``kek_file`` only; so a blob is restored with the key of the tenant whose destination
is the longest prefix of the blob's URL. A blob no tenant covers is restored if it is plain, and
fails with one line if it is encrypted; a wrong key fails each of its files with one line (the
unwrap refuses it), never the job.
"""

from __future__ import annotations

import os
from typing import Any

from pyengine.errors import ConfigError
from pyengine.policy import Policy, Tenant
from pyengine.targets.auth import Destination, parse_destination


def _same_container(a: Destination, b: Destination) -> bool:
    # host and account names are case-insensitive; the scheme is not part of a blob's identity
    a_url, b_url = a.container_url.split("://", 1)[1], b.container_url.split("://", 1)[1]
    return a_url.lower() == b_url.lower()


class PolicyKeys:
    """The tenants of ``policy`` whose destinations lie in the container of ``source``, with
    their keys loaded once (a kek_file missing or malformed stops the job before it starts:
    ConfigError naming the tenant's field)."""

    def __init__(self, policy: Policy, source: Destination) -> None:
        self._tenants: list[tuple[str, Tenant, Any]] = []
        for tenant in policy.tenants:
            dest = parse_destination(tenant.dest)
            if not _same_container(dest, source):
                continue
            if not (dest.prefix.startswith(source.prefix) or source.prefix.startswith(dest.prefix)):
                continue  # neither under the other: no blob of the source is the tenant's
            self._tenants.append((dest.prefix, tenant, self._load(tenant)))
        self._tenants.sort(key=lambda t: len(t[0]), reverse=True)  # the longest prefix first
        self._source_prefix = source.prefix

    @staticmethod
    def _load(tenant: Tenant) -> Any:
        if tenant.kek_id is not None:
            raise ConfigError(
                f"tenants.{tenant.name}.kek_id", "a key resolved by id is not supported yet"
            )
        if tenant.kek_file is None:
            return None
        from pyengine.crypto import load_kek_file

        return load_kek_file(tenant.kek_file)  # resolved against the policy file at load

    def tenant_for(self, blob_name: str) -> tuple[str | None, Any]:
        """(tenant name, its KEK or None) for the blob ``blob_name`` of the source container;
        (None, None) when no tenant's destination covers it."""
        for prefix, tenant, kek in self._tenants:
            if blob_name.startswith(prefix):
                return tenant.name, kek
        return None, None

    def connection_string(self) -> str | None:
        """The connection string of the one tenant covering the whole source (its
        ``connection_string_env``), when the caller gave none; None otherwise."""
        covering = [t for p, t, _ in self._tenants if self._source_prefix.startswith(p)]
        if not covering or covering[0].connection_string_env is None:
            return None
        env = covering[0].connection_string_env
        value = os.environ.get(env)
        if not value:  # the name only: the value is a secret
            raise ConfigError(
                f"tenants.{covering[0].name}.connection_string_env",
                f"environment variable {env} is not set",
            )
        return value
