"""Which tenant's KEK a blob gets under restore --policy (engine/restore/keys.py)."""

from __future__ import annotations

import os

import pytest

from pyengine.engine.restore.keys import PolicyKeys
from pyengine.errors import ConfigError
from pyengine.policy import parse_policy
from pyengine.targets.auth import parse_destination

ACCOUNT = "https://acct.blob.core.windows.net"


def _policy(tmp_path, tenants: str):
    for name in ("k1", "k2", "k3"):
        (tmp_path / f"{name}.kek").write_bytes(os.urandom(32))
    return parse_policy(tenants, base_dir=tmp_path)


def test_the_longest_covering_destination_gives_the_key_and_other_containers_are_ignored(
    tmp_path,
):
    policy = _policy(
        tmp_path,
        f'[tenants.outer]\ndest = "{ACCOUNT}/ccc/pacs"\nkek_file = "k1.kek"\npaths = ["x/**"]\n'
        f'[tenants.inner]\ndest = "{ACCOUNT}/ccc/pacs/icu"\nkek_file = "k2.kek"\npaths = ["y/**"]\n'
        f'[tenants.elsewhere]\ndest = "{ACCOUNT}/ddd/pacs"\nkek_file = "k3.kek"\n'
        'paths = ["z/**"]\n',
    )
    keys = PolicyKeys(policy, parse_destination(f"{ACCOUNT}/ccc"))
    outer, inner = keys.tenant_for("pacs/a.dcm"), keys.tenant_for("pacs/icu/b.dcm")
    assert outer[0] == "outer" and inner[0] == "inner"
    assert outer[1].get_kid() != inner[1].get_kid()
    assert keys.tenant_for("other/c.dcm") == (None, None)
    # a source under one tenant's destination: the others' blobs are not in it
    assert PolicyKeys(policy, parse_destination(f"{ACCOUNT}/ddd/pacs/")).tenant_for("pacs/q")[
        0
    ] == ("elsewhere")


def test_a_tenants_connection_string_env_serves_a_source_it_covers(tmp_path, monkeypatch):
    policy = _policy(
        tmp_path,
        f'[tenants.t]\ndest = "{ACCOUNT}/ccc/pacs"\nconnection_string_env = "T_CS"\n'
        'paths = ["**"]\n',
    )
    keys = PolicyKeys(policy, parse_destination(f"{ACCOUNT}/ccc/pacs/2024/"))
    with pytest.raises(ConfigError, match="T_CS is not set"):
        keys.connection_string()
    monkeypatch.setenv("T_CS", "DefaultEndpointsProtocol=https;AccountName=acct")
    assert keys.connection_string() == "DefaultEndpointsProtocol=https;AccountName=acct"
    assert PolicyKeys(policy, parse_destination(f"{ACCOUNT}/ccc")).connection_string() is None
