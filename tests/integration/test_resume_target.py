"""`pyengine resume JOB` keeps the job's saved choices that decide what the destination holds
and how it is reached: a Data Box job resumed without --target / --ca-cert / --tier / --tag /
--put-md5 still speaks to the device stand-in (tests/databoxproxy.py: 127.0.0.1, so nothing but
the saved target picks the Data Box profile; a newer x-ms-version gets 400) and journals the
tier and tags as pending; a flag given again with another value is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyengine
from pyengine import CopyOptions
from pyengine.options import MiB
from pyengine.state import pending as pending_mod
from pyengine.state.journal import Journal

pytestmark = pytest.mark.integration


def resume(azurite: Any, job_id: str, journal: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    env.pop("SSL_CERT_FILE", None)  # only the job's saved --ca-cert may trust the stand-in
    return subprocess.run(
        [sys.executable, "-m", "pyengine", "resume", job_id, "--journal", str(journal), *flags],
        env=env,
        capture_output=True,
        text=True,
    )


def test_resumed_databox_job_keeps_target_ca_cert_tier_tags_and_put_md5(
    databox, azurite, container, sdk_blob, tmp_path
):
    src, journal = tmp_path / "src", tmp_path / "j.sqlite"
    (src / "a").mkdir(parents=True)
    (src / "a" / "first.dcm").write_bytes(os.urandom(2000))
    opts = CopyOptions(
        threads=2,
        block_bytes=MiB,
        connection_string=azurite.connection_string,
        journal_path=str(journal),
        target="databox",
        ca_cert_file=str(databox.ca_path),
        tier="Cool",
        tags=(("tenant", "t1"), ("modality", "CT")),
        put_md5=True,
    )
    first = asyncio.run(pyengine.copy(src, databox.url(container), opts))
    assert first.failures == [] and first.files_copied == 1
    with Journal.open(journal) as j:  # as a stop (SIGTERM) leaves it
        j.finish_job(first.job_id, "interrupted")
    new = os.urandom(MiB + 5)  # two blocks: Put Block List, where Content-MD5 is sent at commit
    (src / "b").mkdir()
    (src / "b" / "new.dcm").write_bytes(new)

    refused = resume(azurite, first.job_id, journal, "--tier", "Hot")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: --tier: job {first.job_id} was started with 'Cool'; resume it with the same "
        "value, or start a new job"
    ]

    # another URL (a prefix left out while pasting a fresh SAS) would start a new job there
    # with this one's kept options: refused, nothing sent
    databox.log.clear()
    elsewhere = resume(azurite, first.job_id, journal, "--dest", databox.url(container + "/x/"))
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith("error: --dest: job ") and databox.log == []

    run = resume(azurite, first.job_id, journal, "--json")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["job_id"] == first.job_id
    assert summary["files_failed"] == 0 and summary["files_copied"] == 2
    # first.dcm is found committed by the job itself (counted as copied), not sent again
    put = {e.path.rsplit("/", 2)[-2] for e in databox.log if e.method == "PUT"}
    assert put == {"b"}
    assert databox.refused() == []
    assert {e.headers["x-ms-version"] for e in databox.log} == {"2019-02-02"}

    blob = sdk_blob(container, "b/new.dcm")
    assert blob.download_blob().readall() == new
    md5 = blob.get_blob_properties().content_settings.content_md5
    assert base64.b64encode(bytes(md5)) == base64.b64encode(hashlib.md5(new).digest())
    with Journal.open(journal) as j:
        pending = pending_mod.pending_by_blob(j, first.job_id)
    assert pending["b/new.dcm"]["tier"] == "Cool"
    assert pending["b/new.dcm"]["tags"] in (
        {"tenant": "t1", "modality": "CT"},
        "modality=CT&tenant=t1",
        "tenant=t1&modality=CT",
    )
