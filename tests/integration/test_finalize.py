"""`pyengine finalize` (issue 11 item 3): phase 1 to a Data Box (the REST endpoint through
tests/databoxproxy.py, or a share in a temp dir "shipped" with plain SDK uploads as the Data Box
service does), then finalize against Azurite directly, checked with the official SDK; and the
online delta after it, which must send nothing for an unchanged tree and exactly the changed
files otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy

import pyengine
from pyengine import CopyOptions
from pyengine.engine.finalize import finalize
from pyengine.engine.finalize_report import in_sample
from pyengine.options import MiB
from pyengine.state import pending as pending_mod
from pyengine.state.journal import Journal

pytestmark = pytest.mark.integration


def tree(root: Path, n_small: int = 2) -> dict[str, bytes]:
    files = {f"a/s{i}.dcm": os.urandom(1000 + i) for i in range(n_small)}
    files["b/multi.bin"] = os.urandom(2 * MiB + 17)  # blocks of 1 MiB below
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def copy(src: Path, dest: str, azurite: Any, journal: Path, **kw: Any) -> pyengine.CopyReport:
    opts = CopyOptions(
        threads=2,
        single_put_max_bytes=MiB,
        block_bytes=MiB,
        connection_string=azurite.connection_string,
        journal_path=str(journal),
        **kw,
    )
    return asyncio.run(pyengine.copy(src, dest, opts))


def run_finalize(job_id: str, dest: str, azurite: Any, journal: Path, **kw: Any) -> Any:
    return asyncio.run(
        finalize(
            job_id,
            dest,
            journal_path=journal,
            connection_string=azurite.connection_string,
            **kw,
        )
    )


def cli(*args: str, azurite: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    return subprocess.run(
        [sys.executable, "-m", "pyengine", *args], env=env, capture_output=True, text=True
    )


def rest_phase1(databox, azurite, container, tmp_path) -> tuple[pyengine.CopyReport, dict]:
    files = tree(tmp_path / "src")
    report = copy(
        tmp_path / "src",
        databox.url(container),
        azurite,
        tmp_path / "j.sqlite",
        target="databox",
        ca_cert_file=str(databox.ca_path),
        tags=(("tenant", "t1"), ("modality", "CT")),
        tier="Cool",
    )
    assert report.failures == [] and report.files_pending_finalize == len(files)
    return report, files


def test_finalize_stamps_pending_tags_and_tier_and_a_rerun_stamps_nothing(
    databox, azurite, container, sdk_blob, tmp_path
):
    report, files = rest_phase1(databox, azurite, container, tmp_path)
    for rel in files:  # phase 1 left them out: the device takes none
        blob = sdk_blob(container, rel)
        assert blob.get_blob_tags() == {}
    fin = run_finalize(report.job_id, container, azurite, tmp_path / "j.sqlite")
    assert fin.ok and fin.findings == []
    assert (fin.files_checked, fin.files_stamped, fin.files_already_stamped) == (3, 3, 0)
    for rel, data in files.items():
        blob = sdk_blob(container, rel)
        props = blob.get_blob_properties()
        assert blob.get_blob_tags() == {"tenant": "t1", "modality": "CT"}
        assert props.blob_tier == "Cool"
        assert props.metadata["pyenginejobid"] == report.job_id
        assert props.metadata["pyenginesize"] == str(len(data))
        assert blob.download_blob().readall() == data
    again = run_finalize(report.job_id, container, azurite, tmp_path / "j.sqlite")
    assert again.ok
    assert (again.files_checked, again.files_stamped, again.files_already_stamped) == (3, 0, 3)
    assert again.requests_stamping == 0


def test_blob_deleted_before_finalize_is_reported_missing_with_exit_1(
    databox, azurite, container, sdk_blob, tmp_path
):
    report, _ = rest_phase1(databox, azurite, container, tmp_path)
    sdk_blob(container, "a/s0.dcm").delete_blob()
    run = cli(
        "finalize", report.job_id, "--dest", container,
        "--journal", str(tmp_path / "j.sqlite"), "--json",
        azurite=azurite,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["files_missing"] == 1 and out["files_stamped"] == 2
    assert [(f["kind"], f["blob"]) for f in out["findings"]] == [("missing", "a/s0.dcm")]
    # without --json: the finding is one line of its own
    run = cli(
        "finalize", report.job_id, "--dest", container, "--journal", str(tmp_path / "j.sqlite"),
        azurite=azurite,
    )  # fmt: skip
    assert run.returncode == 1
    assert "missing: a/s0.dcm: not at the destination" in run.stdout.splitlines()


def test_finalize_maps_the_job_prefix_onto_another_dest_prefix(
    databox, azurite, container, sdk_blob, tmp_path
):
    files = tree(tmp_path / "src")
    report = copy(
        tmp_path / "src",
        databox.url(container) + "/device",
        azurite,
        tmp_path / "j.sqlite",
        target="databox",
        ca_cert_file=str(databox.ca_path),
        tier="Cool",
    )
    for rel in files:  # the import put them under another prefix
        src_blob = sdk_blob(container, f"device/{rel}")
        sdk_blob(container, f"account/{rel}").upload_blob(src_blob.download_blob().readall())
    fin = run_finalize(report.job_id, container + "/account", azurite, tmp_path / "j.sqlite")
    assert fin.ok and fin.files_stamped == len(files)
    for rel in files:
        props = sdk_blob(container, f"account/{rel}").get_blob_properties()
        assert props.blob_tier == "Cool" and props.metadata["pyengineuploadid"]


def share_phase1(tmp_path: Path, azurite: Any, n_small: int = 2) -> tuple[str, dict, Path]:
    share = tmp_path / "mnt" / "acct_BlockBlob" / "cont"
    share.mkdir(parents=True)
    files = tree(tmp_path / "src", n_small)
    report = copy(tmp_path / "src", str(share), azurite, tmp_path / "j.sqlite")
    assert report.failures == [] and report.files_copied == len(files)
    return report.job_id, files, share


def ship(share: Path, container: str, sdk_blob: Any) -> None:
    """What the Data Box service does with a share: each file becomes a block blob of that name,
    bytes only (no metadata, tags or tier)."""
    for path in sorted(p for p in share.rglob("*") if p.is_file()):
        rel = path.relative_to(share).as_posix()
        sdk_blob(container, rel).upload_blob(path.read_bytes())


def test_share_job_finalized_then_delta_sends_nothing_then_exactly_the_changed_file(
    azurite, container, sdk_blob, tmp_path
):
    job_id, files, share = share_phase1(tmp_path, azurite)
    ship(share, container, sdk_blob)
    journal = tmp_path / "j.sqlite"
    fin = run_finalize(job_id, container, azurite, journal)
    assert fin.ok and fin.files_stamped == len(files)
    for rel, data in files.items():
        props = sdk_blob(container, rel).get_blob_properties()
        assert props.metadata["pyenginesize"] == str(len(data))
        assert props.metadata["pyengineblake3"]
        assert props.content_settings.content_type  # from the share's record
    again = run_finalize(job_id, container, azurite, journal)
    assert again.files_stamped == 0 and again.files_already_stamped == len(files)

    delta = copy(tmp_path / "src", container, azurite, journal)
    assert delta.failures == []
    assert (delta.files_copied, delta.bytes_copied, delta.files_skipped) == (0, 0, len(files))

    changed = os.urandom(1500)
    (tmp_path / "src" / "a" / "s1.dcm").write_bytes(changed)
    delta = copy(tmp_path / "src", container, azurite, journal)
    assert (delta.files_copied, delta.bytes_copied) == (1, len(changed))
    assert delta.files_skipped == len(files) - 1
    assert sdk_blob(container, "a/s1.dcm").download_blob().readall() == changed
    # at cutover a deep re-run re-hashes the device's blobs; the one the delta replaced is not
    # the device's any more: neither a finding nor stamped
    last = run_finalize(job_id, container, azurite, journal, deep=True)
    assert last.ok and last.files_superseded == 1 and last.files_stamped == 0
    assert last.files_deep_checked == len(files) - 1


def test_deep_sample_50_reads_back_the_hash_chosen_half(azurite, container, sdk_blob, tmp_path):
    job_id, files, share = share_phase1(tmp_path, azurite, n_small=12)
    ship(share, container, sdk_blob)
    chosen = {rel for rel in files if in_sample(rel, 50)}
    assert 0 < len(chosen) < len(files)  # these names split (the choice is deterministic)
    fin = run_finalize(job_id, container, azurite, tmp_path / "j.sqlite", sample_percent=50)
    assert fin.ok and fin.deep
    assert fin.files_deep_checked == len(chosen)
    assert fin.bytes_read == sum(len(files[rel]) for rel in chosen)


def test_deep_finds_a_blob_whose_bytes_differ_and_stamps_nothing_on_it(
    azurite, container, sdk_blob, tmp_path
):
    job_id, files, share = share_phase1(tmp_path, azurite)
    ship(share, container, sdk_blob)
    sdk_blob(container, "a/s0.dcm").upload_blob(os.urandom(1000), overwrite=True)  # same size
    fin = run_finalize(job_id, container, azurite, tmp_path / "j.sqlite", deep=True)
    assert not fin.ok
    assert [(f.kind, f.blob) for f in fin.findings] == [("mismatched", "a/s0.dcm")]
    assert fin.files_stamped == len(files) - 1
    assert "pyengineblake3" not in sdk_blob(container, "a/s0.dcm").get_blob_properties().metadata


class _ImmutabilityProxy(FaultProxy):
    """Azurite answers 501 to Set Blob Immutability Policy and Set Legal Hold: this proxy
    answers them as the service does (200) and forwards everything else."""

    async def _forward(self, request: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if "comp=immutabilityPolicies" in request.raw_path or "comp=legalhold" in request.raw_path:
            return 200, {"Content-Length": "0"}, b""
        return await super()._forward(request, body)


def test_pending_immutability_is_stamped_with_its_headers_after_the_metadata(
    databox, azurite, container, sdk_blob, tmp_path
):
    report, files = rest_phase1(databox, azurite, container, tmp_path)
    until = "Fri, 01 Jan 2100 00:00:00 GMT"
    held = {"x-ms-immutability-policy-until-date": until, "x-ms-legal-hold": "true"}
    held["x-ms-immutability-policy-mode"] = "Unlocked"
    with Journal.open(tmp_path / "j.sqlite") as journal:  # as a --policy placement leaves it
        pending_mod.ensure_table(journal)
        value = pending_mod.pending_json(held)
        journal._write_now(
            pending_mod.SQL_UPSERT, (report.job_id, "a/s0.dcm", "immutability", value)
        )
    with _ImmutabilityProxy(azurite.account_url.rsplit("/", 1)[0]) as proxy:
        proxy.recording = True
        fin = run_finalize(report.job_id, proxy.url(container), azurite, tmp_path / "j.sqlite")
    assert fin.ok and fin.files_stamped == len(files)
    on_s0 = [(m, p, h) for m, p, h in proxy.recorded if "/a/s0.dcm" in p and m == "PUT"]
    comps = [p.split("comp=")[1].split("&")[0] for _, p, _ in on_s0]
    assert comps[-2:] == ["immutabilityPolicies", "legalhold"]  # last: immutable takes no more
    policy = on_s0[-2][2]
    assert policy["x-ms-immutability-policy-until-date"] == until
    assert policy["x-ms-immutability-policy-mode"] == "Unlocked"
    assert on_s0[-1][2]["x-ms-legal-hold"] == "true"
    others = [p for m, p, _ in proxy.recorded if "immutab" in p and "/a/s0.dcm" not in p]
    assert others == []
