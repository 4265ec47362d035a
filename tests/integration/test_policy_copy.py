"""`pyengine copy SRC --policy FILE` end to end against Azurite: a generated two-tenant DICOM tree
(pyengine.policy.sample: adult, child, infant, missing and implausible birth dates, a malformed
file, a non-DICOM report per tenant) lands file by file in its tenant's container, encrypted
under that tenant's key only, with the tier, tags and immutability headers its placement gives
(the headers as recorded by a proxy: Azurite does not keep immutability policies), and the study
manifest's counts are exact after kill -9 and a resume, and after a re-run."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from pyengine import CopyOptions, copy
from pyengine.crypto import LocalKeyWrapper, decrypt_with_sdk
from pyengine.policy import load_policy
from pyengine.policy.sample import (
    PLANTED_BIRTH_DATES,
    PLANTED_PATIENT_ID,
    PLANTED_PATIENT_NAME,
    sample_policy_toml,
    write_sample_tree,
)

TENANTS = ("north", "south")
PYENGINE = [sys.executable, "-m", "pyengine.cli"]
PLANTED = (PLANTED_PATIENT_NAME, PLANTED_PATIENT_ID, *PLANTED_BIRTH_DATES)


def _setup(tmp_path: Path, account_url: str, azurite, monkeypatch) -> tuple[Path, dict, dict]:
    """The tree, both tenants' keys and containers, and the policy file naming them."""
    expected = write_sample_tree(tmp_path / "src")
    keys = {}
    (tmp_path / "keys").mkdir()
    for t in TENANTS:
        keys[t] = os.urandom(32)
        (tmp_path / "keys" / f"{t}.kek").write_bytes(keys[t])
    containers = {t: f"{t}-{uuid.uuid4().hex[:12]}" for t in TENANTS}
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        for name in containers.values():
            svc.create_container(name)
    text = sample_policy_toml(account_url=account_url)
    for t in TENANTS:
        text = text.replace(f"/{t}/pacs", f"/{containers[t]}/pacs")
        monkeypatch.setenv(f"{t.upper()}_STORAGE_CONNECTION_STRING", azurite.connection_string)
    # both tenants encrypt, each under its own key
    text = text.replace(
        'connection_string_env = "SOUTH_STORAGE_CONNECTION_STRING"',
        'connection_string_env = "SOUTH_STORAGE_CONNECTION_STRING"\nkek_file = "keys/south.kek"',
    )
    (tmp_path / "policy.toml").write_text(text)
    return tmp_path / "policy.toml", expected, {"keys": keys, "containers": containers}


def _blobs(azurite, container: str) -> dict[str, object]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        cc = svc.get_container_client(container)
        return {b.name: b for b in cc.list_blobs(include=["metadata", "tags"])}


def test_policy_copy_places_each_file_in_its_tenant_with_its_key_tier_tags_and_immutability(
    tmp_path, azurite, fault_proxy, sdk_blob, monkeypatch
):
    policy_path, expected, env = _setup(
        tmp_path, fault_proxy.url(azurite.account_url), azurite, monkeypatch
    )
    fault_proxy.recording = True
    policy = load_policy(policy_path)
    report = asyncio.run(
        copy(
            tmp_path / "src",
            options=CopyOptions(journal_path=str(tmp_path / "journal.db")),
            policy=policy,
        )
    )
    malformed = {p for p, f in expected.items() if f.malformed}
    assert {p for p, _ in report.failures} == malformed
    assert all("malformed" in reason for _, reason in report.failures)
    assert report.files_copied == len(expected) - len(malformed)

    today = datetime.date.today()
    commits = {}
    for method, path_qs, headers in fault_proxy.recorded:
        if method == "PUT" and ("comp=blocklist" in path_qs or "comp=" not in path_qs):
            commits[path_qs.split("?")[0]] = headers
    for t in TENANTS:
        container = env["containers"][t]
        blobs = _blobs(azurite, container)
        mine = {p: f for p, f in expected.items() if f.tenant == t and not f.malformed}
        assert set(blobs) == {f"pacs/{p}" for p in mine}
        for rel, f in mine.items():
            name = f"pacs/{rel}"
            data = (tmp_path / "src" / rel).read_bytes()
            # decrypts with the tenant's key, and with no other
            got = sdk_blob(f"{azurite.account_url}/{container}", name, env["keys"][t])
            assert got.download_blob().readall() == data
            props = sdk_blob(f"{azurite.account_url}/{container}", name).get_blob_properties()
            raw = sdk_blob(f"{azurite.account_url}/{container}", name).download_blob().readall()
            other = LocalKeyWrapper(env["keys"][next(o for o in TENANTS if o != t)])
            with pytest.raises(ValueError):  # the SDK's decryption refuses the other key
                decrypt_with_sdk(raw, props.metadata["encryptiondata"], other)
            tags = sdk_blob(f"{azurite.account_url}/{container}", name).get_blob_tags()
            assert tags["tenant"] == t
            if f.kind == "report":  # not DICOM: path rules, longest retention from today
                assert "studyuid" not in tags
                retain = datetime.date.fromisoformat(tags["retainuntil"])
                assert retain >= today.replace(year=today.year + 21)
            else:
                assert tags["studyuid"] == f.study_uid
                assert tags["modality"] == "CT"
                assert tags["studydate"] == f.study_date.isoformat()
                retain = f.retain_until
                assert tags["retainuntil"] == retain.isoformat()
                age_days = (today - f.study_date).days
                assert 730 <= age_days < 3650  # the sample's studies: Cold at copy time
                assert props.blob_tier == "Cold"
            if t == "north":
                assert tags["project"] == "migration2026"
            headers = commits[f"/{azurite.account_url.rsplit('/', 1)[1]}/{container}/{name}"]
            until = parsedate_to_datetime(headers["x-ms-immutability-policy-until-date"])
            assert until.date() == retain
            assert headers["x-ms-immutability-policy-mode"] == "Unlocked"
            assert "x-ms-legal-hold" not in headers  # legal_hold = false in the sample
            # no patient identifier in metadata or tags
            shown = json.dumps({**props.metadata, **tags})
            assert not any(v in shown for v in PLANTED)
    manifest = Path(report.manifest_path).read_text()
    lines = [json.loads(line) for line in manifest.splitlines()]
    by_path = {line["path"]: line for line in lines}
    assert by_path["north/study1/adult.dcm"]["tenant"] == "north"
    assert (
        by_path["north/study1/adult.dcm"]["study_uid"]
        == expected["north/study1/adult.dcm"].study_uid
    )
    for path in (report.manifest_path, tmp_path / "journal.db"):
        raw = Path(path).read_bytes()
        assert not any(v.encode() in raw for v in PLANTED), path


def test_policy_copy_refuses_dest_and_per_tenant_flags(tmp_path, azurite, monkeypatch):
    policy_path, _, _ = _setup(tmp_path, azurite.account_url, azurite, monkeypatch)
    for extra in (["https://a.blob.core.windows.net/c"], ["--tier", "Hot"], ["--tag", "a=b"]):
        out = subprocess.run(
            [*PYENGINE, "copy", str(tmp_path / "src"), *extra, "--policy", str(policy_path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2, out.stderr
        assert "not with --policy" in out.stderr
        assert out.stderr.count("\n") == 1


def test_policy_copy_without_src_copies_the_policys_source(tmp_path, azurite, monkeypatch):
    policy_path, expected, env = _setup(tmp_path, azurite.account_url, azurite, monkeypatch)
    text = policy_path.read_text().replace("[policy]\n", '[policy]\nsource = "src"\n', 1)
    policy_path.write_text(text)
    out = subprocess.run(
        [*PYENGINE, "copy", "--policy", str(policy_path), "--journal", str(tmp_path / "j.db")],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert out.returncode == 1, out.stderr  # the two malformed files
    assert out.stderr.count("error: ") == 2 and "malformed.dcm: malformed" in out.stderr
    north = _blobs(azurite, env["containers"]["north"])
    assert set(north) == {
        f"pacs/{p}" for p, f in expected.items() if f.tenant == "north" and not f.malformed
    }


def _committed(journal: Path) -> int:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM files WHERE state = 'committed'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_study_manifest_counts_are_exact_after_kill_and_resume_and_rerun(
    tmp_path, azurite, monkeypatch
):
    policy_path, expected, _ = _setup(tmp_path, azurite.account_url, azurite, monkeypatch)
    src = tmp_path / "src"
    # more instances per study, so that a kill lands mid-run: copies of each DICOM file
    per_study: dict[str, int] = {}
    for rel, f in list(expected.items()):
        if f.study_uid is None:
            continue
        data = (src / rel).read_bytes()
        for i in range(12):
            (src / f"{rel}.{i}.dcm").write_bytes(data)
        per_study[f.study_uid] = 13
    total = sum(per_study.values()) + 2 * 2  # + per tenant a malformed file and a report
    journal = tmp_path / "journal.db"
    cmd = [*PYENGINE, "copy", str(src), "--policy", str(policy_path)]
    cmd += ["--journal", str(journal), "--json"]
    # slowed down so that the kill lands mid-run; the resume and the re-run go at full speed
    slow = [*cmd, "--max-requests-per-s", "40"]
    proc = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _committed(journal) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the copy ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _committed(journal) < total - 4

    def studies_json(job_id: str) -> dict:
        out = subprocess.run(
            [*PYENGINE, "studies", job_id, "--json", "--journal", str(journal)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert not any(v in out.stdout for v in PLANTED)
        return json.loads(out.stdout)

    first_job = None
    jobs = subprocess.run(
        [*PYENGINE, "jobs", "list", "--json", "--journal", str(journal)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    killed_job = json.loads(jobs.stdout.splitlines()[0])["job_id"]
    # `resume JOB` of one tenant's job goes on with the whole policy; then the same command again
    resume = [*PYENGINE, "resume", killed_job, "--journal", str(journal), "--json"]
    for run, argv in (("resume", resume), ("re-run", cmd)):
        out = subprocess.run(argv, capture_output=True, text=True)
        assert out.returncode == 1, out.stderr  # the malformed files fail, every time
        assert not any(v in out.stdout + out.stderr for v in PLANTED)
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        started = next(e for e in events if e.get("kind") == "job_started")
        assert started["extra"]["resumed"] == (run == "resume")
        first_job = first_job or started["extra"]["job_id"]
        for job_id in {first_job, started["extra"]["tenants"]["south"]}:
            doc = studies_json(job_id)  # any job of the run shows the run's table
            got = {s["study_uid"]: s for s in doc["studies"]}
            assert set(got) == set(per_study)
            for uid, n in per_study.items():
                s = got[uid]
                assert (s["instances"], s["committed"], s["failed"]) == (n, n, 0), (run, s)
                assert s["series"] == 1 and s["modalities"] == ["CT"]
                assert s["status"] == "complete"
            for t in doc["tenants"]:
                assert (t["studies"], t["complete"], t["other_files"]) == (5, 5, 1)
                assert t["failed_unplaced"] == 1  # the malformed file


def test_resumed_copy_restores_a_study_row_lost_with_the_last_journal_batch(
    tmp_path, azurite, monkeypatch
):
    """A kill after Put Blob and before the journal's group commit loses the file's state and
    study row together; the resume finds the blob its own, counts it copied, and reads the
    file's head again so the study is still counted."""
    policy_path, expected, _ = _setup(tmp_path, azurite.account_url, azurite, monkeypatch)
    journal = tmp_path / "journal.db"
    options = CopyOptions(journal_path=str(journal))
    policy = load_policy(policy_path)
    asyncio.run(copy(tmp_path / "src", options=options, policy=policy))
    lost = "north/study1/adult.dcm"
    with sqlite3.connect(journal) as db:  # what that lost batch would have held
        db.execute("DELETE FROM study_files WHERE rel_path = ?", (lost,))
        db.execute("UPDATE files SET state = 'uploading' WHERE rel_path = ?", (lost,))
        db.execute("UPDATE jobs SET status = 'running'")
    report = asyncio.run(copy(tmp_path / "src", options=options, policy=policy))
    assert report.blocks_sent == 0 and report.files_copied == len(expected) - 2
    out = subprocess.run(
        [*PYENGINE, "studies", report.job_id, "--json", "--journal", str(journal)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = {s["study_uid"]: s for s in json.loads(out.stdout)["studies"]}
    s = got[expected[lost].study_uid]
    assert (s["instances"], s["committed"], s["status"]) == (1, 1, "complete")
    # each tenant's job is a plain job to `verify JOB`: its own destination, its own blobs
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    for job_id in json.loads(out.stdout)["jobs"]:
        check = subprocess.run(
            [*PYENGINE, "verify", job_id, "--journal", str(journal)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr


def _attribute_policy(tmp_path: Path, azurite, monkeypatch, *, east_key: bool) -> tuple:
    expected = write_sample_tree(tmp_path / "src")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "north.kek").write_bytes(north := os.urandom(32))
    (tmp_path / "keys" / "east.kek").write_bytes(os.urandom(32))
    containers = {t: f"{t}-{uuid.uuid4().hex[:12]}" for t in ("north", "east")}
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        for name in containers.values():
            svc.create_container(name)
    monkeypatch.setenv("STORAGE_CONNECTION_STRING", azurite.connection_string)
    text = f"""
[tenants.north]
dest = "{azurite.account_url}/{containers["north"]}/pacs"
connection_string_env = "STORAGE_CONNECTION_STRING"
kek_file = "keys/north.kek"
paths = ["north/**"]
[tenants.east]
dest = "{azurite.account_url}/{containers["east"]}/pacs"
connection_string_env = "STORAGE_CONNECTION_STRING"
{'kek_file = "keys/east.kek"' if east_key else ""}
[[tenants.east.match]]
InstitutionName = "SOUTH GENERAL*"
"""
    (tmp_path / "policy.toml").write_text(text)
    return load_policy(tmp_path / "policy.toml"), expected, containers, north


def test_files_no_path_rule_takes_are_routed_by_their_header_to_a_tenant_without_a_key(
    tmp_path, azurite, sdk_blob, monkeypatch
):
    policy, expected, containers, north_key = _attribute_policy(
        tmp_path, azurite, monkeypatch, east_key=False
    )
    options = CopyOptions(journal_path=str(tmp_path / "journal.db"))
    report = asyncio.run(copy(tmp_path / "src", options=options, policy=policy))
    south_dicom = {
        p for p, f in expected.items() if f.tenant == "south" and f.study_uid is not None
    }
    north = {p for p, f in expected.items() if f.tenant == "north" and not f.malformed}
    failures = dict(report.failures)
    assert set(failures) == {
        "north/broken/malformed.dcm", "south/broken/malformed.dcm", "south/reports/report.txt",
    }  # fmt: skip
    assert "no tenant matches" in failures["south/reports/report.txt"]  # not DICOM: path only
    assert set(_blobs(azurite, containers["east"])) == {f"pacs/{p}" for p in south_dicom}
    assert set(_blobs(azurite, containers["north"])) == {f"pacs/{p}" for p in north}
    for rel in south_dicom:
        blob = sdk_blob(f"{azurite.account_url}/{containers['east']}", f"pacs/{rel}")
        assert blob.download_blob().readall() == (tmp_path / "src" / rel).read_bytes()
        assert blob.get_blob_tags()["tenant"] == "east"
        assert blob.get_blob_tags()["studyuid"] == expected[rel].study_uid
    rel = "north/study1/adult.dcm"
    blob = sdk_blob(f"{azurite.account_url}/{containers['north']}", f"pacs/{rel}", north_key)
    assert blob.download_blob().readall() == (tmp_path / "src" / rel).read_bytes()
    # a re-run finds every routed file up to date, and the study table still counts it
    again = asyncio.run(copy(tmp_path / "src", options=options, policy=policy))
    assert again.files_copied == 0 and again.files_skipped == len(south_dicom) + len(north)
    out = subprocess.run(
        [*PYENGINE, "studies", again.job_id, "--json", "--journal", str(tmp_path / "journal.db")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    east = [s for s in json.loads(out.stdout)["studies"] if s["tenant"] == "east"]
    assert len(east) == 5 and all(s["status"] == "complete" for s in east)


def test_header_routing_to_a_tenant_with_a_key_is_refused_before_anything_starts(
    tmp_path, azurite, monkeypatch
):
    from pyengine.errors import ConfigError

    policy, *_ = _attribute_policy(tmp_path, azurite, monkeypatch, east_key=True)
    options = CopyOptions(journal_path=str(tmp_path / "journal.db"))
    with pytest.raises(ConfigError, match="before encryption must use path rules"):
        asyncio.run(copy(tmp_path / "src", options=options, policy=policy))
    assert not (tmp_path / "journal.db").exists()
