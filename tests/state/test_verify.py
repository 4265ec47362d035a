"""`pyengine verify` against a real Azurite: every blob the journal knows under a destination,
unknown and missing blobs, a job's own files, usage errors, and the journal query verify walks.
Bit rot, encrypted blobs and --deep: test_verify_deep."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from verify_helpers import MiB, container_client, copy_tree, findings_of, json_report, verify_cli

from pyengine.state.journal import Journal

# --- a job, a destination ---------------------------------------------------------------------


@pytest.mark.integration
def test_verify_job_passes_after_copy(copied, azurite) -> None:
    job_id, journal, files, _, _ = copied
    proc = verify_cli(job_id, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json_report(proc)
    assert out["ok"] is True
    assert out["job_ids"] == [job_id]
    assert out["files_ok"] == out["files_checked"] == len(files)
    assert out["findings"] == []


@pytest.mark.integration
def test_deep_verify_of_a_destination_passes_after_copy(copied, azurite, container) -> None:
    _job_id, journal, files, _, _ = copied
    proc = verify_cli(container, journal, azurite.connection_string, "--json", "--deep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json_report(proc)
    assert out["files_ok"] == len(files)
    assert out["blobs_unknown"] == 0
    assert out["bytes_checked"] == sum(len(d) for d in files.values())
    assert out["bytes_read"] == sum(len(d) for d in files.values())


@pytest.mark.integration
def test_verify_destination_checks_every_job_not_only_the_latest_delta_run(
    copied, azurite, container, tmp_path
) -> None:
    job_id, journal, files, client, src = copied
    # a delta run that sends one file: a job of its own, which committed one file
    (src / "study/notes.txt").write_bytes(b"report, amended\n")
    delta_id = copy_tree(src, container, journal, azurite.connection_string)
    assert delta_id != job_id
    # a blob only the first job committed, truncated since (a different size)
    name = "study/series1/img0002.dcm"
    blob = client.get_blob_client(name)
    blob.upload_blob(files[name][:-1], overwrite=True, metadata=blob.get_blob_properties().metadata)

    proc = verify_cli(container, journal, azurite.connection_string, "--json")
    assert proc.returncode == 1, proc.stderr
    out = json_report(proc)
    assert out["job_ids"] == [job_id, delta_id]
    assert out["files_checked"] == len(files)
    assert out["files_ok"] == len(files) - 1
    assert findings_of(out) == [
        ("damaged", name, f"blob holds {len(files[name]) - 1} bytes, expected {len(files[name])}")
    ]
    # the amended file is checked against the delta run's version, not the first job's
    assert out["files_damaged"] == 1


@pytest.mark.integration
def test_verify_destination_reports_unknown_and_missing_blobs_one_line_each(
    copied, azurite, container
) -> None:
    job_id, journal, files, client, _ = copied
    client.delete_blob("study/notes.txt")
    client.upload_blob("study/stray.dcm", b"not ours")
    proc = verify_cli(container, journal, azurite.connection_string)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"missing: study/notes.txt: committed by job {job_id}, not at the destination" in lines
    assert "unknown: study/stray.dcm: not written by any job of this journal" in lines

    out = json_report(verify_cli(container, journal, azurite.connection_string, "--json"))
    assert (out["files_ok"], out["files_missing"], out["blobs_unknown"]) == (len(files) - 1, 1, 1)
    assert out["ok"] is False


@pytest.mark.integration
def test_verify_of_a_prefix_checks_the_blobs_under_it_of_a_job_into_the_container_root(
    copied, azurite, container
) -> None:
    job_id, journal, _, client, _ = copied
    client.upload_blob("elsewhere/stray.dcm", b"outside the prefix")
    client.upload_blob("study/stray.dcm", b"inside the prefix")
    proc = verify_cli(f"{container}/study", journal, azurite.connection_string, "--json")
    assert proc.returncode == 1, proc.stderr
    out = json_report(proc)
    assert out["job_ids"] == [job_id]
    assert out["files_ok"] == out["files_checked"] == 3  # the three files under study/
    assert findings_of(out) == [
        ("unknown", "study/stray.dcm", "not written by any job of this journal")
    ]


@pytest.mark.integration
def test_verify_job_still_checks_only_that_jobs_files(copied, azurite) -> None:
    job_id, journal, _files, client, _ = copied
    client.upload_blob("study/stray.dcm", b"not ours")  # a job target lists nothing
    client.delete_blob("study/notes.txt")
    proc = verify_cli(job_id, journal, azurite.connection_string)
    assert proc.returncode == 1
    assert f"missing: study/notes.txt: committed by job {job_id}, not at the destination" in (
        proc.stdout.splitlines()
    )
    assert "stray" not in proc.stdout


@pytest.mark.integration
def test_blob_removed_by_a_later_delete_destination_run_is_not_missing(
    tmp_path, azurite, container
) -> None:
    src = tmp_path / "src"
    for i in range(12):  # one deletion in twelve blobs stays within a 10 % deletion limit
        (src / "s").mkdir(parents=True, exist_ok=True)
        (src / f"s/img{i:02d}.dcm").write_bytes(bytes([i]) * 100)
    journal = tmp_path / "jobs.sqlite"
    copy_tree(src, container, journal, azurite.connection_string)
    (src / "s/img05.dcm").unlink()
    copy_tree(src, container, journal, azurite.connection_string, "--delete-destination")
    with container_client(azurite, container) as client:
        assert "s/img05.dcm" not in {b.name for b in client.list_blobs()}
    proc = verify_cli(container, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stdout
    out = json_report(proc)
    assert (out["files_ok"], out["files_deleted_at_source"]) == (11, 1)


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.integration
def test_verify_unknown_job_is_a_one_line_usage_error(copied, azurite) -> None:
    _, journal, _, _, _ = copied
    proc = verify_cli("20000101-0000-dead", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: 20000101-0000-dead: no such job in the journal"
    assert proc.stdout == ""


@pytest.mark.integration
def test_verify_without_journal_is_a_usage_error(tmp_path: Path, azurite) -> None:
    proc = verify_cli("x", tmp_path / "none.sqlite", azurite.connection_string)
    assert proc.returncode == 2
    assert "no journal here" in " ".join(proc.stderr.split())
    assert not (tmp_path / "none.sqlite").exists()


@pytest.mark.integration
def test_usage_error_naming_a_long_path_stays_on_one_line(tmp_path: Path, azurite) -> None:
    # rich wraps at 80 columns when stderr is not a terminal; an operator's log must not
    journal = tmp_path / ("deep" * 20) / "none.sqlite"
    proc = verify_cli("x", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {journal}: no journal here (--journal PATH)\n"


def test_journal_gives_the_latest_committed_version_of_each_blob(tmp_path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as j:
        ids = []
        for digest in ("aa", "bb", "cc"):
            job = j.create_job("/src", "http://127.0.0.1:1/devstoreaccount1/c", {})
            ids.append(job)
            time.sleep(0.002)  # created_ns orders the jobs
            for rel in ("a.dcm", "b.dcm"):
                rec = j.begin_file(
                    job, rel, size_bytes=1, mtime_ns=1, inode=1, device=1, blob_name=rel,
                    block_bytes=4 * MiB, encrypted=False,
                )  # fmt: skip
                if digest == "cc" and rel == "a.dcm":
                    j.mark_skipped(rec.file_id, "unchanged")  # a later job skipping a file
                else:
                    j.mark_committed(rec.file_id, etag="e", blake3_hex=digest * 32)
        got = [(r.blob_name, r.job_id, r.blake3_hex) for r in j.iter_committed_by_blob(ids)]
        assert got == [("a.dcm", ids[1], "bb" * 32), ("b.dcm", ids[2], "cc" * 32)]
        assert [r.job_id for r in j.iter_committed_by_blob(ids[:1])] == [ids[0], ids[0]]
        assert [r.blob_name for r in j.iter_committed_by_blob(ids, name_prefix="b")] == ["b.dcm"]
        assert j.job_has_blob(ids[2], "a.dcm") and not j.job_has_blob(ids[2], "z.dcm")
