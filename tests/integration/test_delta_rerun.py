"""The online delta against Azurite: a re-run into a prefix that holds blobs compares one listing
with the scan instead of sending one HEAD per file. Requests are counted through the fault proxy
(tests/faultproxy.py); outcomes are checked with the official SDK."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions
from pyengine.engine.mirror import DeleteLimit

pytestmark = pytest.mark.integration

#: names whose listing order differs from a plain per-directory sort ("a.b" < "a/x" < "a0"),
#: and names past ASCII
NAMES = [
    "a.b",
    "a/x",
    "a/y/z",
    "a0",
    "a-b",
    "A",
    "b/é.dcm",
    "b/e.dcm",
    "b/ß/1",
    "b/日本/2",
    "c/d/e/f/g",
    "c/d.e",
    "c/d-e",
]


def _write_tree(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"file {i} {name}".encode())


def _opts(azurite, journal: Path, **kw) -> CopyOptions:
    return CopyOptions(connection_string=azurite.connection_string, journal_path=str(journal), **kw)


def _heads(proxy) -> list[str]:
    return [path for method, path, _ in proxy.recorded if method == "HEAD"]


@pytest.fixture
def client(azurite, container: str):
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    with ContainerClient.from_container_url(container, credential=cred) as c:
        yield c


def _rerun_setup(tmp_path: Path, container: str, azurite) -> tuple[Path, str]:
    src = tmp_path / "src"
    _write_tree(src, NAMES)
    dest = container + "/pre/"
    first = asyncio.run(pyengine.copy(src, dest, _opts(azurite, tmp_path / "j1.db")))
    assert first.files_copied == len(NAMES) and first.ok
    time.sleep(0.01)  # a new mtime/ctime for the changed files
    (src / "a/y/z").write_bytes(b"changed 1")
    (src / "b/é.dcm").write_bytes(b"changed 2")
    (src / "c/d/new").write_bytes(b"new")
    os.unlink(src / "a-b")
    return src, dest


def test_rerun_sends_new_and_changed_files_without_a_head_per_file(
    tmp_path, container, azurite, fault_proxy, client
):
    src, dest = _rerun_setup(tmp_path, container, azurite)
    fault_proxy.recording = True
    report = asyncio.run(
        pyengine.copy(src, fault_proxy.url(dest), _opts(azurite, tmp_path / "j2.db"))
    )
    assert report.ok, report.failures
    assert report.files_copied == 3
    assert report.files_skipped == len(NAMES) - 2 - 1  # 2 changed, 1 gone
    assert _heads(fault_proxy) == []
    lists = [p for m, p, _ in fault_proxy.recorded if m == "GET" and "comp=list" in p]
    # besides the one-blob probes (container exists, prefix empty): one listing, shared by the
    # delta and the deletion report
    full = [p for p in lists if "maxresults=1&" not in p and not p.endswith("maxresults=1")]
    assert len(full) == 1 and "include=metadata" in full[0], "\n".join(lists)
    assert report.deleted_at_source == ["a-b"]
    names = {b.name for b in client.list_blobs()}
    assert "pre/a-b" in names  # reported, not deleted
    assert client.download_blob("pre/a/y/z").readall() == b"changed 1"
    assert client.download_blob("pre/b/é.dcm").readall() == b"changed 2"
    assert client.download_blob("pre/c/d/new").readall() == b"new"


def test_rerun_with_delete_destination_deletes_the_gone_blob_under_the_mirror_rules(
    tmp_path, container, azurite, fault_proxy, client
):
    src, dest = _rerun_setup(tmp_path, container, azurite)
    fault_proxy.recording = True
    opts = _opts(
        azurite,
        tmp_path / "j2.db",
        delete_destination=True,
        max_delete=DeleteLimit(count=1, explicit=True),
    )
    report = asyncio.run(pyengine.copy(src, fault_proxy.url(dest), opts))
    assert report.ok and report.files_copied == 3 and report.blobs_deleted == 1
    assert _heads(fault_proxy) == []
    names = {b.name for b in client.list_blobs()}
    assert "pre/a-b" not in names
    assert names == {"pre/" + n for n in NAMES if n != "a-b"} | {"pre/c/d/new"}


def test_rerun_deletes_nothing_past_the_limit_with_the_listing_reused(
    tmp_path, container, azurite, client
):
    src, dest = _rerun_setup(tmp_path, container, azurite)
    for name in ("a.b", "a0", "A"):
        os.unlink(src / name)
    opts = _opts(
        azurite,
        tmp_path / "j2.db",
        delete_destination=True,
        max_delete=DeleteLimit(count=2, explicit=True),
    )
    report = asyncio.run(pyengine.copy(src, dest, opts))
    assert report.blobs_deleted == 0
    # counted from the delta's listing, taken before this run added c/d/new
    assert "4 of 13 blobs" in (report.deletion_refused or "")
    assert len(list(client.list_blobs())) == len(NAMES) + 1


def test_rerun_of_an_encrypted_tree_skips_by_the_listed_encryption_metadata(
    tmp_path, container, azurite, fault_proxy
):
    from pyengine.crypto import LocalKeyWrapper

    src = tmp_path / "src"
    _write_tree(src, NAMES[:5])
    kek = LocalKeyWrapper(b"k" * 32)
    other = LocalKeyWrapper(b"o" * 32, kid="other")
    first = asyncio.run(
        pyengine.copy(src, container, _opts(azurite, tmp_path / "j1.db", encrypt=True, kek=kek))
    )
    assert first.files_copied == 5
    fault_proxy.recording = True
    same = asyncio.run(
        pyengine.copy(
            src,
            fault_proxy.url(container),
            _opts(azurite, tmp_path / "j2.db", encrypt=True, kek=kek),
        )
    )
    assert same.files_skipped == 5 and same.files_copied == 0
    # another KEK cannot unwrap the listed content keys: everything is sent again under it
    again = asyncio.run(
        pyengine.copy(
            src,
            fault_proxy.url(container),
            _opts(azurite, tmp_path / "j3.db", encrypt=True, kek=other),
        )
    )
    assert again.files_copied == 5 and again.files_resent_for_encryption == 5
    assert _heads(fault_proxy) == []


def test_unchanged_files_taken_a_batch_at_once_leave_what_the_per_file_path_leaves(
    tmp_path, container, azurite, monkeypatch
):
    """engine/unchanged.py against copy_file on the same re-run: the same report counts, the
    same manifest lines (but the job id) and the same journaled states and reasons."""
    import json

    from pyengine.engine import job as job_mod
    from pyengine.state.journal import Journal

    src, dest = _rerun_setup(tmp_path, container, azurite)
    batched: list[int] = []
    real = job_mod.record_unchanged

    def counting(ctx, profile, files):
        batched.append(len(files))
        return real(ctx, profile, files)

    def run(tag: str) -> tuple[object, list[dict], list[tuple]]:
        journal, manifest = tmp_path / f"{tag}.db", tmp_path / f"{tag}.jsonl"
        opts = _opts(azurite, journal, manifest_path=str(manifest))
        report = asyncio.run(pyengine.copy(src, dest, opts))
        lines = [json.loads(line) for line in manifest.read_text().splitlines()]
        for line in lines:
            line.pop("job_id")
        with Journal.open(journal) as j:
            rows = j._read("SELECT rel_path, state, error, size_bytes, blob_name FROM files")
        return report, sorted(lines, key=lambda e: e["path"]), sorted(rows)

    assert run("settle")[0].files_copied == 3  # the changed and new files: now all unchanged
    files = len(NAMES)  # one gone, one new
    monkeypatch.setattr(job_mod, "record_unchanged", counting)
    report_b, lines_b, rows_b = run("batched")
    assert sum(batched) == files  # every file went through the batch
    monkeypatch.setattr(job_mod, "unchanged_here", lambda ctx, listed: False)
    report_p, lines_p, rows_p = run("per-file")
    assert sum(batched) == files  # ... and none the second time
    for r in (report_b, report_p):
        assert (r.files_copied, r.files_skipped, r.files_failed) == (0, files, 0)
    assert report_b.bytes_skipped == report_p.bytes_skipped > 0
    assert lines_b == lines_p and len(lines_b) == files
    assert all(e["status"] == "skipped" and e["etag"] and e["blake3"] for e in lines_b)
    assert rows_b == rows_p and {r[1] for r in rows_b} == {"skipped"}


def test_a_stop_mid_batch_still_records_the_unchanged_files_it_decided(
    tmp_path, container, azurite, monkeypatch
):
    """Files the batch path decided unchanged before a stop (SIGINT cancels the job's task)
    get their journal row and manifest line, as the per-file path had given them at once."""
    import json

    from pyengine.engine import job as job_mod
    from pyengine.state.journal import Journal

    src = tmp_path / "src"
    names = [f"d{i // 100}/f{i:04d}" for i in range(400)]  # two scan batches and a half
    _write_tree(src, names)
    first = asyncio.run(pyengine.copy(src, container, _opts(azurite, tmp_path / "j1.db")))
    assert first.files_copied == len(names)
    real = job_mod._Job.delta_lookup
    calls = []

    async def stop_at_the_300th(self, item):
        calls.append(item.rel_path)
        if len(calls) == 300:  # inside the second batch of 256
            raise asyncio.CancelledError
        return await real(self, item)

    monkeypatch.setattr(job_mod._Job, "delta_lookup", stop_at_the_300th)
    journal, manifest = tmp_path / "j2.db", tmp_path / "m2.jsonl"
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(
            pyengine.copy(src, container, _opts(azurite, journal, manifest_path=str(manifest)))
        )
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(e["path"] for e in lines) == sorted(calls[:299])
    assert {e["status"] for e in lines} == {"skipped"}
    with Journal.open(journal) as j:
        (job,) = j.list_jobs()
        assert job.status == "interrupted"
        assert j.summary(job.job_id).files_skipped == 299
