"""The study manifest: per file of a policy job, the tenant and DICOM study it belongs to, and
per study what the source held and what reached the destination (`pyengine studies JOB`).

A policy copy (engine/policy_job.py) writes one ``study_files`` row per file it placed (tenant,
study / series / SOP instance UIDs, modality, retain-until, tier, retention flag): never a
patient name, ID or birth date. The rows join the journal's ``files`` table on (job_id,
rel_path), so a file's state (committed, failed, pending) is always the journal's own; a
resumed job or a re-run adds rows under its own job; per file the newest placement and
the newest state of the run
count, so the table follows the source as it is now.

The table lives in the journal file, created with CREATE TABLE IF NOT EXISTS when a policy job
opens the journal (a journal without policy jobs never has it), and its rows are written through
the journal's group commit (the batch and its writer thread), in the same batches as the file
states they describe: a row is durable no later than the commit of its file.

A study is *complete* when every instance found in the source is committed with its BLAKE3
journaled ("verified": the commit is sent only after the whole file was read and hashed, with an
unchanged identity, and the digest is in the blob's metadata), or was found up to date at the
destination by the re-run's --check; otherwise *incomplete*.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyengine.errors import ConfigError
from pyengine.state.journal import JobInfo, Journal

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS study_files ("
    " job_id TEXT NOT NULL, rel_path TEXT NOT NULL, tenant TEXT NOT NULL,"
    " study_uid TEXT, series_uid TEXT, sop_uid TEXT, modality TEXT,"
    " retain_until TEXT, tier TEXT, flag TEXT,"
    " PRIMARY KEY (job_id, rel_path)) WITHOUT ROWID"
)
SQL_PUT = (
    "INSERT OR REPLACE INTO study_files (job_id, rel_path, tenant, study_uid, series_uid,"
    " sop_uid, modality, retain_until, tier, flag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_PLACED = (
    "SELECT job_id, rel_path, study_uid, series_uid, modality, retain_until, tier, flag"
    " FROM study_files WHERE job_id IN ({marks})"
)
SQL_STATES = (
    "SELECT job_id, rel_path, state, blake3_hex, size_bytes FROM files WHERE job_id IN ({marks})"
)


@dataclass(frozen=True)
class StudyFile:
    """What the study manifest keeps of one placed file (no patient identifiers)."""

    tenant: str
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    retain_until: datetime.date | None
    tier: str | None
    flag: str | None


def ensure_table(journal: Journal) -> None:
    """Create the table in this journal if it has none (one durable statement)."""
    journal._write_now(SCHEMA, ())


def has_table(journal: Journal) -> bool:
    rows = journal._read(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'study_files'"
    )
    return bool(rows)


def record(journal: Journal, job_id: str, rel_path: str, file_id: int, row: StudyFile) -> None:
    """Batched with the file's own writes (the group commit keeps their order)."""
    params = (
        job_id,
        rel_path,
        row.tenant,
        row.study_uid,
        row.series_uid,
        row.sop_uid,
        row.modality,
        row.retain_until.isoformat() if row.retain_until else None,
        row.tier,
        row.flag,
    )
    journal._append(SQL_PUT, params, file_id, (job_id, rel_path))


def has_row(journal: Journal, job_ids: list[str], tenant: str, rel_path: str) -> bool:
    """Whether some job of the run (job_ids) placed this tenant's file."""
    for job_id in job_ids:
        journal._flush_if_touched(path=(job_id, rel_path))
    rows = journal._read(
        f"SELECT 1 FROM study_files WHERE job_id IN ({', '.join('?' * len(job_ids))})"
        " AND tenant = ? AND rel_path = ? LIMIT 1",
        (*job_ids, tenant, rel_path),
    )
    return bool(rows)


def is_policy_job(info: JobInfo) -> bool:
    return "tenant" in info.options


def run_of(info: JobInfo) -> str:
    """The id of the policy run a tenant's job belongs to (its first job's id)."""
    return info.options.get("policy_run") or info.job_id


def run_jobs(journal: Journal, job_id: str) -> list[JobInfo]:
    """Every job of the policy run that job_id belongs to, oldest first (a resume adds none; a
    re-run adds one per tenant)."""
    info = journal.get_job(job_id)
    if not is_policy_job(info):
        raise ConfigError(job_id, "not a policy copy (pyengine copy SRC --policy FILE)")
    run = run_of(info)
    return [j for j in journal.list_jobs() if is_policy_job(j) and run_of(j) == run]


def latest_run(journal: Journal, source: str, dests: Iterable[str]) -> str | None:
    """The run of the newest policy job of this source into one of these destinations: a
    re-run continues it, so its study manifest follows the source."""
    wanted = set(dests)
    runs = [
        run_of(j)
        for j in journal.list_jobs()
        if is_policy_job(j) and j.source == source and j.dest in wanted
    ]
    return runs[-1] if runs else None


@dataclass
class Study:
    tenant: str
    study_uid: str
    modalities: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    instances: int = 0
    committed: int = 0
    failed: int = 0
    size_bytes: int = 0
    retain_until: str | None = None
    tiers: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)

    @property
    def status(self) -> str:
        return "complete" if self.committed == self.instances else "incomplete"

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "study_uid": self.study_uid,
            "modalities": sorted(self.modalities),
            "series": len(self.series),
            "instances": self.instances,
            "committed": self.committed,
            "failed": self.failed,
            "bytes": self.size_bytes,
            "retain_until": self.retain_until,
            "tier": ",".join(sorted(self.tiers)) or None,
            "flags": sorted(self.flags),
            "status": self.status,
        }


@dataclass
class TenantTotals:
    tenant: str
    studies: int = 0
    complete: int = 0
    instances: int = 0
    committed: int = 0
    failed: int = 0
    size_bytes: int = 0
    #: files of the tenant that are not DICOM instances of a study (path rules only)
    other_files: int = 0
    #: files that failed before the policy could place them (unreadable, malformed DICOM):
    #: no study can claim them
    failed_unplaced: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "studies": self.studies,
            "complete": self.complete,
            "incomplete": self.studies - self.complete,
            "instances": self.instances,
            "committed": self.committed,
            "failed": self.failed,
            "bytes": self.size_bytes,
            "other_files": self.other_files,
            "failed_unplaced": self.failed_unplaced,
        }


def _latest(
    journal: Journal, sql: str, jobs: list[JobInfo]
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(tenant, rel_path) -> the row of the newest job of the run that has one."""
    order = {j.job_id: i for i, j in enumerate(jobs)}
    tenant = {j.job_id: j.options["tenant"] for j in jobs}
    ids = list(order)
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    newest: dict[tuple[str, str], int] = {}
    for row in journal._read(sql.format(marks=", ".join("?" * len(ids))), ids):
        key = (tenant[row[0]], row[1])
        if order[row[0]] >= newest.get(key, -1):
            newest[key] = order[row[0]]
            rows[key] = row[2:]
    return rows


def study_table(journal: Journal, jobs: list[JobInfo]) -> tuple[list[Study], list[TenantTotals]]:
    """Studies (by tenant, then study UID) and per-tenant totals over a policy run's jobs
    (oldest first): per file its newest placement and its newest state in the run."""
    journal._flush_if_any()
    placed = _latest(journal, SQL_PLACED, jobs)
    states = _latest(journal, SQL_STATES, jobs)
    studies: dict[tuple[str, str], Study] = {}
    totals: dict[str, TenantTotals] = {}
    for (tenant, rel_path), row in placed.items():
        study_uid, series_uid, modality, retain, tier, flag = row
        state, b3, size = states.get((tenant, rel_path), (None, None, 0))
        t = totals.setdefault(tenant, TenantTotals(tenant))
        done = (state == "committed" and bool(b3)) or state == "skipped"
        if study_uid is None:
            t.other_files += 1
            continue
        s = studies.setdefault((tenant, study_uid), Study(tenant, study_uid))
        s.instances += 1
        s.committed += done
        s.failed += state == "failed"
        s.size_bytes += size or 0
        if modality:
            s.modalities.add(modality)
        if series_uid:
            s.series.add(series_uid)
        if retain and (s.retain_until is None or retain > s.retain_until):
            s.retain_until = retain  # the study is kept as long as its longest-kept instance
        if tier:
            s.tiers.add(tier)
        if flag:
            s.flags.add(flag)
    for (tenant, rel_path), (state, _, _) in states.items():
        if state == "failed" and (tenant, rel_path) not in placed:
            totals.setdefault(tenant, TenantTotals(tenant)).failed_unplaced += 1
    ordered = [studies[k] for k in sorted(studies)]
    for s in ordered:
        t = totals[s.tenant]
        t.studies += 1
        t.complete += s.status == "complete"
        t.instances += s.instances
        t.committed += s.committed
        t.failed += s.failed
        t.size_bytes += s.size_bytes
    return ordered, [totals[k] for k in sorted(totals)]
