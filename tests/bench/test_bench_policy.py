"""The bench's policy run: its policy parses, and routes every file of the bench tree to exactly
one of its two tenants by path alone (what an encrypting tenant needs)."""

from __future__ import annotations

import os

from pyengine.bench.dicom_tree import bench_policy_toml, make_tree
from pyengine.policy import parse_policy


def test_bench_policy_routes_every_bench_file_to_one_tenant_by_path(tmp_path):
    make_tree(str(tmp_path / "tree"), 12_000_000, seed=3)
    keys = [str(tmp_path / "a.kek"), str(tmp_path / "b.kek")]
    policy = parse_policy(
        bench_policy_toml("https://acct.blob.core.windows.net/bench/ours", keys),
        base_dir=tmp_path,
    )
    assert not policy.needs_dicom_for_tenant
    assert all(t.encrypt for t in policy.tenants)
    counts = {t.name: 0 for t in policy.tenants}
    root = tmp_path / "tree"
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            counts[policy.tenant_for(rel, None).name] += 1
    assert all(counts.values()), counts  # both tenants get files
