"""`make demo`, the migration-policy step: a two-tenant DICOM tree copied with
`pyengine copy SRC --policy FILE` into the demo's Azurite, then the study table.

The tree and the policy are pyengine.policy.sample's (README "Migration policy"): per tenant an
adult, a child and an infant study, a study without a birth date and one with a birth date after
the study, a malformed file (it fails, by design: one line, no patient data) and a non-DICOM
report. Both tenants encrypt, each under its own key. Called by scripts/demo.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from pyengine.policy.sample import sample_policy_toml, write_sample_tree

TENANTS = ("north", "south")


def run_policy_demo(azurite: Any, work: Path, pyengine: str, journal: str) -> bool:
    """Runs the step; True when every file but the malformed ones is in its tenant's container
    and every study is complete."""
    src = work / "policy-archive"
    expected = write_sample_tree(src)
    home = work / "policy"
    (home / "keys").mkdir(parents=True)
    for tenant in TENANTS:
        key = home / "keys" / f"{tenant}.kek"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    text = sample_policy_toml(account_url=azurite.account_url).replace(
        'connection_string_env = "SOUTH_STORAGE_CONNECTION_STRING"',
        'connection_string_env = "SOUTH_STORAGE_CONNECTION_STRING"\nkek_file = "keys/south.kek"',
    )
    policy = home / "policy.toml"
    policy.write_text(text)
    env = {**os.environ}
    for tenant in TENANTS:  # the secret stays out of the policy file: it names the variable
        env[f"{tenant.upper()}_STORAGE_CONNECTION_STRING"] = azurite.connection_string

    print(f"== two-tenant policy: pyengine copy {src} --policy {policy}")
    print("   (the two malformed DICOM files fail by design: one line each, no patient data)")
    cmd = [pyengine, "copy", str(src), "--policy", str(policy), "--create-container"]
    rc = subprocess.call([*cmd, "--journal", journal], env=env)
    malformed = {rel for rel, f in expected.items() if f.malformed}
    placed_ok = rc == 1  # exactly the malformed files failed (checked below)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    for tenant in TENANTS:
        blobs = {b.name for b in service.get_container_client(tenant).list_blobs("pacs/")}
        mine = {f"pacs/{rel}" for rel, f in expected.items() if f.tenant == tenant}
        want = mine - {f"pacs/{rel}" for rel in malformed}
        print(f"   container {tenant}: {len(blobs & want)}/{len(want)} files of tenant {tenant}")
        placed_ok &= blobs == want

    jobs = subprocess.run(
        [pyengine, "jobs", "list", "--json", "--journal", journal],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    policy_jobs = [
        j["job_id"] for j in map(json.loads, jobs.stdout.splitlines()) if j["source"] == str(src)
    ]
    print("== pyengine studies JOB: one row per study, per-tenant totals")
    studies = [pyengine, "studies", policy_jobs[0], "--journal", journal]
    subprocess.call(studies)
    doc = json.loads(subprocess.run([*studies, "--json"], capture_output=True, check=True).stdout)
    complete = all(s["status"] == "complete" for s in doc["studies"])
    print(f"policy step: {'PASS' if placed_ok and complete else 'FAILED'}")
    return placed_ok and complete
