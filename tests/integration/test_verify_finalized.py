"""`pyengine verify URL` after `pyengine finalize JOB --dest URL` (issue 11): the device job's
blobs, now in the account, are judged by that job's journal records (size, BLAKE3), not listed
as unknown; a blob an online delta re-wrote is judged by the delta (the newest job wins). Phase
1 runs through the Data Box stand-in (tests/databoxproxy.py) or into a share in a temp dir
"shipped" with plain SDK uploads; everything after runs on Azurite, checked through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_finalize as finalize_tests
from test_finalize import tree

import pyengine
from pyengine.targets.azure_blob import parse_destination

pytestmark = pytest.mark.integration


def copy(src: Path, dest: str, azurite: Any, journal: Path, **kw: Any) -> pyengine.CopyReport:
    report = finalize_tests.copy(src, dest, azurite, journal, **kw)
    assert report.failures == []
    return report


def cli(azurite: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    return subprocess.run(
        [sys.executable, "-m", "pyengine", *args], env=env, capture_output=True, text=True
    )


def verify_json(azurite: Any, url: str, journal: Path) -> tuple[int, dict[str, Any]]:
    run = cli(azurite, "verify", url, "--journal", str(journal), "--json")
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, json.loads(run.stdout.strip().splitlines()[-1])


def test_verify_url_knows_a_finalized_databox_job_and_names_a_tampered_blob(
    databox, azurite, container, sdk_blob, tmp_path
):
    files = tree(tmp_path / "src")
    journal = tmp_path / "j.sqlite"
    device = copy(
        tmp_path / "src",
        databox.url(container),
        azurite,
        journal,
        target="databox",
        ca_cert_file=str(databox.ca_path),
        tier="Cool",
    )
    # the stand-in stores into this very container: as if the import had already happened
    fin = cli(azurite, "finalize", device.job_id, "--dest", container, "--journal", str(journal))
    assert fin.returncode == 0, fin.stdout + fin.stderr
    assert f"`pyengine verify {container}` checks them" in fin.stdout

    rc, out = verify_json(azurite, container, journal)
    assert rc == 0, out
    assert out["job_ids"] == [device.job_id]
    assert (out["files_ok"], out["blobs_unknown"], out["findings"]) == (len(files), 0, [])
    plain = cli(azurite, "verify", container, "--journal", str(journal))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert not [line for line in plain.stdout.splitlines() if line.startswith("unknown:")]

    # `verify JOB` checks the job's blobs where finalize found them, not on the device
    databox.log.clear()
    rc, out = verify_json(azurite, device.job_id, journal)
    assert rc == 0, out
    assert (out["files_ok"], out["findings"], out["located_by_finalize"]) == (len(files), [], True)
    assert out["dest"] == parse_destination(container).redacted()
    by_job = cli(azurite, "verify", device.job_id, "--journal", str(journal))
    assert by_job.returncode == 0, by_job.stdout + by_job.stderr
    where = f"checked at {parse_destination(container).redacted()}, where finalize found them"
    assert where in by_job.stdout.splitlines()
    assert databox.log == []  # the device was not asked

    sdk_blob(container, "a/s1.dcm").upload_blob(os.urandom(1001), overwrite=True)
    tampered = cli(azurite, "verify", container, "--journal", str(journal))
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    bad = [line for line in tampered.stdout.splitlines() if line.startswith("damaged:")]
    assert len(bad) == 1 and bad[0].startswith("damaged: a/s1.dcm: "), tampered.stdout
    tampered = cli(azurite, "verify", device.job_id, "--journal", str(journal))
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    bad = [line for line in tampered.stdout.splitlines() if line.startswith("damaged:")]
    assert len(bad) == 1 and bad[0].startswith("damaged: a/s1.dcm: "), tampered.stdout


def test_verify_url_judges_a_delta_rewritten_blob_by_the_delta_under_a_mapped_prefix(
    azurite, container, sdk_blob, tmp_path
):
    share = tmp_path / "mnt" / "acct_BlockBlob" / "cont" / "dev"
    share.mkdir(parents=True)
    files = tree(tmp_path / "src")
    journal = tmp_path / "j.sqlite"
    device = copy(tmp_path / "src", str(share), azurite, journal)
    for path in sorted(p for p in share.rglob("*") if p.is_file()):  # the import, bytes only,
        rel = path.relative_to(share).as_posix()  # under another prefix than the device's
        sdk_blob(container, f"archive/{rel}").upload_blob(path.read_bytes())
    fin = cli(
        azurite, "finalize", device.job_id, "--dest", f"{container}/archive",
        "--journal", str(journal),
    )  # fmt: skip
    assert fin.returncode == 0, fin.stdout + fin.stderr
    # `verify JOB` of the share job: its blobs as named under archive/, where finalize found them
    rc, out = verify_json(azurite, device.job_id, journal)
    assert rc == 0, out
    assert (out["files_ok"], out["findings"], out["located_by_finalize"]) == (len(files), [], True)
    assert out["dest"] == parse_destination(f"{container}/archive").redacted()

    changed = os.urandom(1500)
    (tmp_path / "src" / "a" / "s0.dcm").write_bytes(changed)
    delta = copy(tmp_path / "src", f"{container}/archive", azurite, journal)
    assert delta.files_copied == 1 and delta.files_skipped == len(files) - 1

    for url in (container, f"{container}/archive", f"{container}/archive/a"):
        rc, out = verify_json(azurite, url, journal)
        assert rc == 0, (url, out)
        assert out["blobs_unknown"] == 0 and out["findings"] == []
        assert set(out["job_ids"]) == {device.job_id, delta.job_id}
    rc, out = verify_json(azurite, container, journal)
    # s0.dcm now holds 1500 bytes: judged by the device job's record (1000 bytes) it would be
    # damaged; by the delta's, the newest, it is ok
    assert out["files_ok"] == len(files)

    # the device job alone, by its own records, at archive/: the delta's s0.dcm is not its
    # version, and a blob deleted there is missing under its name there
    sdk_blob(container, "archive/b/multi.bin").delete_blob()
    rc, out = verify_json(azurite, device.job_id, journal)
    assert rc == 1 and out["job_ids"] == [device.job_id]
    assert {(f["kind"], f["blob"]) for f in out["findings"]} == {
        ("damaged", "archive/a/s0.dcm"),
        ("missing", "archive/b/multi.bin"),
    }
