"""`pyengine verify`: check a destination against what the job store (journal) says is there.

Two targets:

- ``DEST`` (a blob URL): every blob the journal knows under DEST, i.e. the latest committed
  version of every path of every job whose destination is DEST or a prefix under it, merged with
  one listing of DEST (List Blobs with metadata: no request per blob). A job into a prefix
  above DEST counts for its blobs under DEST, and so does a Data Box job that ``pyengine
  finalize JOB --dest URL`` found at a URL overlapping DEST (journal table ``job_locations``):
  its blob names with the job's prefix replaced by URL's. A blob there that no job
  committed is *unknown*; a known blob that is not there is *missing*, unless a later completed
  ``--delete-destination`` job without that file removed it on purpose (its source was gone).
- ``JOB`` (a job id): that job's committed files, one Get Blob Properties each; for a job
  ``pyengine finalize`` found elsewhere, at that location (names mapped as above), not at the
  job's own destination (a Data Box, usually gone by then).

This module chooses the jobs and walks the blobs; the rest lives beside it:
:mod:`~pyengine.state.verify_check` (the per-blob metadata check: size and digest),
:mod:`~pyengine.state.verify_deep` (``deep``: every byte read back in ranged GETs under the
memory cap, decrypted and re-hashed), :mod:`~pyengine.state.verify_report` (findings and the
report) and :mod:`pyengine.cli.verify` (the command's output). A bad blob never stops the
run: each finding is one line.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyengine.engine.metadata_names import JOB_ID, meta_get
from pyengine.engine.scan import display_path
from pyengine.errors import ConfigError, DestinationError
from pyengine.options import CopyOptions, RetryPolicy
from pyengine.state.journal import FileRecord, JobInfo, Journal, default_journal_path
from pyengine.state.verify_check import HEAD_CONCURRENCY, BlobChecker
from pyengine.state.verify_deep import decrypt_regions
from pyengine.state.verify_report import Finding, VerifyReport
from pyengine.targets.azure_blob import (
    BlobProps,
    BlobStore,
    Destination,
    parse_destination,
    resolve_credential,
)
from pyengine.targets.profile import choose_profile

# --- which jobs, which blobs -------------------------------------------------------------------


def _overlaps(dest: Destination, job_dest: Destination) -> bool:
    """Whether a job into job_dest may have written blobs under dest: the same container, and
    one prefix within the other (a job into the container's root wrote under every prefix)."""
    return (
        dest.account_url == job_dest.account_url
        and dest.container == job_dest.container
        and (job_dest.prefix.startswith(dest.prefix) or dest.prefix.startswith(job_dest.prefix))
    )


def _job_dest(info: JobInfo) -> Destination | None:
    try:
        return parse_destination(info.dest)
    except ConfigError:
        return None


#: (job_id, the job's own prefix, the prefix its blobs have at the destination being verified)
Relocated = tuple[str, str, str]


def _relocated(locations: list[tuple[str, str, str]], dest: Destination) -> list[Relocated]:
    """The jobs `pyengine finalize` found at a destination overlapping dest (a Data Box job's
    files, imported into the account), with how their blob names map there."""
    out = []
    for job_id, at, job_prefix in locations:
        try:
            at_dest = parse_destination(at)
        except ConfigError:
            continue
        if _overlaps(dest, at_dest):
            out.append((job_id, job_prefix, at_dest.prefix))
    return out


@dataclass(frozen=True)
class _Selection:
    #: the jobs to check, oldest first
    jobs: list[JobInfo]
    #: the destination to read
    dest: Destination
    #: whether the target named a destination (else a job)
    by_dest: bool
    #: the jobs whose own destination holds blobs under dest
    direct: list[str] = field(default_factory=list)
    #: the jobs whose files finalize found under dest (a Data Box job's, imported)
    relocated: list[Relocated] = field(default_factory=list)
    #: JOB target that finalize found elsewhere: (the job's prefix, the prefix there); dest is
    #: that location, not the job's own destination (a device, usually gone by then)
    moved: tuple[str, str] | None = None


def _select_jobs(
    jobs: list[JobInfo], target: str, locations: list[tuple[str, str, str]]
) -> _Selection:
    if "://" in target:
        dest = parse_destination(target)  # ConfigError for a malformed URL
        relocated = _relocated(locations, dest)
        moved = {job_id for job_id, _, _ in relocated}
        direct = {
            info.job_id
            for info in jobs
            if (d := _job_dest(info)) is not None and _overlaps(dest, d)
        }
        chosen = [info for info in jobs if info.job_id in direct or info.job_id in moved]
        if not chosen:
            raise ConfigError(dest.redacted(), "no job in the journal copied to this destination")
        ids = [info.job_id for info in chosen if info.job_id in direct]
        return _Selection(chosen, dest, True, ids, relocated)
    for info in jobs:
        if info.job_id == target:
            found = [(at, prefix) for job_id, at, prefix in locations if job_id == target]
            if found:  # the latest location recorded (oldest first) is where the files are now
                at = parse_destination(found[-1][0])
                return _Selection([info], at, False, moved=(found[-1][1], at.prefix))
            dest = _job_dest(info)
            if dest is None:
                raise ConfigError(target, f"the job's destination is not a blob URL: {info.dest}")
            return _Selection([info], dest, False)
    raise ConfigError(target, "no such job in the journal")


def _deleters(
    all_jobs: list[JobInfo], store_dest: Destination
) -> list[tuple[JobInfo, Destination]]:
    """Completed jobs into this container that deleted blobs whose source was gone (any job of
    the journal: one to a prefix under DEST or above it may have removed a blob)."""
    return [
        (info, d)
        for info in all_jobs
        if info.options.get("delete_destination")
        and info.status == "completed"
        and (d := _job_dest(info)) is not None
        and d.account_url == store_dest.account_url
        and d.container == store_dest.container
    ]


# --- the run -----------------------------------------------------------------------------------


async def _check_dest(
    checker: BlobChecker, dest: Destination, job_ids: list[str], relocated: list[Relocated]
) -> None:
    """Merge the journal's known blobs with one listing of DEST, both in name order."""
    records = checker.journal.iter_committed_by_blob(
        job_ids, name_prefix=dest.prefix, relocated=relocated
    )
    listing: AsyncIterator[BlobProps] = checker.store.list_blobs(dest.prefix, metadata=True)
    record = next(records, None)
    props = await anext(listing, None)
    last_listed = ""
    while record is not None or props is not None:
        if props is not None:
            if props.name < last_listed:
                # The merge needs the listing in code-point order (the order of the service
                # and of Azurite for every name that is not a supplementary-plane character).
                raise DestinationError(
                    dest.redacted(),
                    f"the listing is not in name order at {display_path(props.name)!r}",
                )
            last_listed = props.name
        if props is None or (record is not None and record.blob_name < props.name):
            assert record is not None
            checker.missing(record)
            record = next(records, None)
        elif record is None or props.name < record.blob_name:
            _unknown(checker.report, props, {*job_ids, *(r[0] for r in relocated)})
            props = await anext(listing, None)
        else:
            lowered = BlobProps(
                name=props.name,
                size_bytes=props.size_bytes,
                etag=props.etag,
                metadata={k.lower(): v for k, v in props.metadata.items()},
            )
            if checker.deep:
                await checker.spawn(checker.check(record, lowered))
            else:  # no request: the listing brought the metadata
                await checker.check(record, lowered)
            record = next(records, None)
            props = await anext(listing, None)
        if checker.failure:
            break
    await checker.drain()


def _unknown(report: VerifyReport, props: BlobProps, job_ids: set[str]) -> None:
    writer = meta_get({k.lower(): v for k, v in props.metadata.items()}, JOB_ID)
    if writer in job_ids:
        reason = f"written by job {writer}, never journaled as committed (resume that job)"
    elif writer:
        reason = f"written by job {writer}, which this journal does not hold"
    else:
        reason = "not written by any job of this journal"
    report.add("unknown", props.name, reason)


async def _check_job(
    checker: BlobChecker, job_id: str, moved: tuple[str, str] | None = None
) -> None:
    """One HEAD per committed file of the job (a listing could be far larger than the job);
    ``moved`` (job prefix, prefix there): each name as at the location finalize found."""

    async def one(record: FileRecord) -> None:
        props = await checker.store.get_properties(record.blob_name)
        if props is None:
            checker.missing(record)
        else:
            await checker.check(record, props)

    # iter_files pages through the journal: only the files in flight are held at once
    for record in checker.journal.iter_files(job_id, states=("committed",)):
        if moved is not None and record.blob_name.startswith(moved[0]):
            record.blob_name = moved[1] + record.blob_name[len(moved[0]) :]
        await checker.spawn(one(record))
        if checker.failure:
            break
    await checker.drain()


async def verify(
    target: str,
    *,
    journal_path: str | os.PathLike[str] | None = None,
    deep: bool = False,
    kek: Any = None,
    connection_string: str | None = None,
    memory_cap_bytes: int = CopyOptions.memory_cap_bytes,
    on_finding: Callable[[Finding], None] | None = None,
) -> VerifyReport:
    """Check a destination (``target`` = a blob URL) or one job (``target`` = a job id) against
    the journal; see the module docstring. Findings go into the report (and to ``on_finding``
    as they are found); they never raise.

    Raises ConfigError (unknown job or destination, missing journal, --deep over encrypted jobs
    without a kek) and DestinationError / AuthError when the destination cannot be used.
    """
    path = os.fspath(journal_path) if journal_path is not None else str(default_journal_path())
    if not os.path.exists(path):
        raise ConfigError(path, "no journal here (--journal PATH)")
    if memory_cap_bytes <= 0:
        raise ConfigError("--memory-cap", "must be positive")
    with Journal.open(path) as journal:
        all_jobs = journal.list_jobs()
        chosen = _select_jobs(all_jobs, target, journal.job_locations())
        jobs, dest, by_dest = chosen.jobs, chosen.dest, chosen.by_dest
        if deep and kek is None and any(info.options.get("encrypt") for info in jobs):
            subject = dest.redacted() if by_dest else jobs[0].job_id
            raise ConfigError(subject, "encrypted blobs: --deep needs --kek-file")
        report = VerifyReport(
            target=dest.redacted() if by_dest else target,
            dest=dest.redacted(),
            job_ids=[info.job_id for info in jobs],
            deep=deep,
            on_finding=on_finding,
            located_by_finalize=chosen.moved is not None,
        )
        if not by_dest:
            summary = journal.summary(jobs[0].job_id)
            report.files_not_committed = summary.files_total - summary.files_copied
        # the user's URL (it may carry a SAS) for a destination; the journaled one for a job
        credential = resolve_credential(dest, connection_string)
        # a Data Box host gets the REST version it accepts (targets/profile.py)
        profile = choose_profile(None, urlsplit(dest.account_url).hostname or "")
        async with BlobStore(
            dest,
            credential,
            retry=RetryPolicy(),
            max_connections=HEAD_CONCURRENCY,
            profile=profile,
        ) as store:
            checker = BlobChecker(
                journal,
                store,
                report,
                deep=deep,
                kek=kek,
                memory_cap_bytes=memory_cap_bytes,
                all_jobs=all_jobs,
                deleters=_deleters(all_jobs, store.dest),
            )
            if by_dest:
                await _check_dest(checker, dest, chosen.direct, chosen.relocated)
            else:
                await _check_job(checker, jobs[0].job_id, chosen.moved)
    return report


__all__ = [
    "Finding",
    "VerifyReport",
    "decrypt_regions",
    "verify",
]
