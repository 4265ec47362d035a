"""The study manifest's arithmetic (state/studies.py) over a real journal: per file the newest
placement and state of the run count, complete means every instance found is committed with its
BLAKE3, failures before placement are counted per tenant, and a non-policy job is refused."""

from __future__ import annotations

import datetime

import pytest

from pyengine.errors import ConfigError
from pyengine.state import studies
from pyengine.state.journal import Journal


def _file(journal: Journal, job_id: str, rel: str, n: int):
    return journal.begin_file(
        job_id, rel, size_bytes=100 + n, mtime_ns=n, inode=n, device=1,
        blob_name=rel, block_bytes=4 << 20, encrypted=False, ctime_ns=n,
    )  # fmt: skip


def _row(tenant: str, study: str | None, series: str = "se1") -> studies.StudyFile:
    return studies.StudyFile(
        tenant=tenant, study_uid=study, series_uid=series if study else None, sop_uid=None,
        modality="CT" if study else None, retain_until=datetime.date(2040, 1, 1),
        tier="Cold", flag=None,
    )  # fmt: skip


def test_study_table_counts_the_newest_state_per_file_and_marks_incomplete_studies(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        studies.ensure_table(journal)
        first = journal.create_job("/src", "https://a.blob.core.windows.net/n", {"tenant": "n"})
        files = {rel: _file(journal, first, rel, i) for i, rel in enumerate("abcde")}
        for rel, study, series in (("a", "S1", "x"), ("b", "S1", "y"), ("c", "S2", "x")):
            studies.record(journal, first, rel, files[rel].file_id, _row("n", study, series))
        studies.record(journal, first, "d", files["d"].file_id, _row("n", None))  # not DICOM
        journal.mark_committed(files["a"].file_id, etag="e", blake3_hex="ab")
        journal.mark_failed(files["b"].file_id, "boom")
        journal.mark_committed(files["c"].file_id, etag="e", blake3_hex="cd")
        journal.mark_committed(files["d"].file_id, etag="e", blake3_hex="ef")
        journal.mark_failed(files["e"].file_id, "malformed")  # never placed
        # a re-run of the run: b now goes through (skipped = up to date counts as there too)
        again = journal.create_job(
            "/src", "https://a.blob.core.windows.net/n", {"tenant": "n", "policy_run": first}
        )
        b2 = _file(journal, again, "b", 1)
        journal.mark_skipped(b2.file_id, "up to date")
        jobs = studies.run_jobs(journal, again)
        assert [j.job_id for j in jobs] == [first, again]
        before, _ = studies.study_table(journal, jobs[:1])
        after, totals = studies.study_table(journal, jobs)
    s1_before = next(s for s in before if s.study_uid == "S1")
    assert (s1_before.instances, s1_before.committed, s1_before.failed) == (2, 1, 1)
    assert s1_before.status == "incomplete"
    by_uid = {s.study_uid: s for s in after}
    assert (by_uid["S1"].instances, by_uid["S1"].committed, by_uid["S1"].failed) == (2, 2, 0)
    assert len(by_uid["S1"].series) == 2 and by_uid["S1"].status == "complete"
    (t,) = totals
    assert (t.studies, t.complete, t.other_files, t.failed_unplaced) == (2, 2, 1, 1)


def test_studies_of_a_job_without_a_policy_is_a_one_line_error(tmp_path):
    with Journal.open(tmp_path / "j.db") as journal:
        job = journal.create_job("/src", "https://a.blob.core.windows.net/n", {})
        with pytest.raises(ConfigError, match="not a policy copy"):
            studies.run_jobs(journal, job)
