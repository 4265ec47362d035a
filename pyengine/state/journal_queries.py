"""What can be asked of the journal about jobs, beyond one file's resume state: the unfinished job
to resume, the job list with per-state totals, one job's per-path summary, a paged stream of its
files, and the questions verify asks (the latest committed version of every blob, whether a
job had a record of one, and where `pyengine finalize` found a device job's files).

None of these adds to the journal. Those that count or list files write the pending batch out
first (read-your-writes); the per-file streams page their rows, so memory stays bounded however
many files a job has.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pyengine.errors import JournalError
from pyengine.state.group_commit import GroupCommit
from pyengine.state.records import STATES, BlockAck, FileRecord, JobInfo, JobSummary
from pyengine.state.schema import FILE_COLUMNS, crc_from_db, file_record_from_row

#: fetchmany-sized pages for iter_files: bounded memory however many files a job has
PAGE_ROWS = 1_000

#: job statuses a re-run of the same source and destination resumes (the job's own records and
#: upload ids), and that `pyengine resume JOB` accepts: a job stopped before its end, whether
#: its process was stopped ("interrupted") or died ("running" with no live lock holder). A job
#: that ended with failed files is not resumed: a re-run starts a new job, which skips what is
#: up to date and retries the rest.
RESUMABLE_JOB_STATES = ("running", "interrupted")
#: the word `jobs` shows for each stored status: "completed" is stored by every journal since
#: schema 1, shown as "done" (no migration: old journals stay readable by old versions)
_SHOWN_STATUS = {"completed": "done"}


def shown_status(status: str) -> str:
    """The job status as `pyengine jobs` shows it: running, interrupted, failed or done."""
    return _SHOWN_STATUS.get(status, status)


class JournalQueries(GroupCommit):
    """The journal's queries (and finalize's record_location); Journal adds the uploader's
    writes on top."""

    def find_unfinished_job(self, source: str, dest: str) -> str | None:
        """The most recent unfinished job (running, or interrupted) for this source and
        (redacted) dest, if any."""
        rows = self._read(
            "SELECT job_id FROM jobs WHERE source = ? AND dest = ?"
            " AND status IN ('running', 'interrupted')"
            " ORDER BY created_ns DESC, job_id DESC LIMIT 1",
            (source, dest),
        )
        return rows[0][0] if rows else None

    def get_job(self, job_id: str) -> JobInfo:
        self._flush_if_any()
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JournalError(job_id, "no such job in the journal")
        counts = self._read(
            "SELECT state, count(*), sum(size_bytes) FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        )
        return self._job_info(rows[0], counts)

    def list_jobs(self) -> list[JobInfo]:
        """Every job, oldest first, with per-state totals (one pass over the files table)."""
        self._flush_if_any()
        counts: dict[str, list[tuple[str, int, int]]] = {}
        for job_id, state, files, size in self._read(
            "SELECT job_id, state, count(*), sum(size_bytes) FROM files GROUP BY job_id, state"
        ):
            counts.setdefault(job_id, []).append((state, files, size))
        jobs = self._read("SELECT * FROM jobs ORDER BY created_ns, job_id")
        return [self._job_info(row, counts.get(row[0], [])) for row in jobs]

    @staticmethod
    def _job_info(row: tuple[Any, ...], counts: Iterable[tuple[str, int, int]]) -> JobInfo:
        job_id, source, dest, options_json, status, created_ns, updated_ns = row
        counts = list(counts)
        return JobInfo(
            job_id=job_id,
            source=source,
            dest=dest,
            options=json.loads(options_json),
            status=status,
            created_ns=created_ns,
            updated_ns=updated_ns,
            files_by_state={state: files for state, files, _ in counts},
            bytes_by_state={state: size for state, _, size in counts},
        )

    def _load_blocks(self, file_id: int) -> dict[int, BlockAck]:
        rows = self._read(
            "SELECT block_index, length_bytes, crc64, xxh3_128 FROM blocks WHERE file_id = ?"
            " ORDER BY block_index",
            (file_id,),
        )
        return {
            index: BlockAck(index, length, crc_from_db(crc), bytes(digest))
            for index, length, crc, digest in rows
        }

    def iter_files(
        self, job_id: str, states: Iterable[str] | None = None, *, with_blocks: bool = False
    ) -> Iterator[FileRecord]:
        """Stream the job's files in rel_path order, PAGE_ROWS rows per query (memory stays
        bounded however many files). Without with_blocks, records carry acked_blocks=None."""
        wanted = tuple(states) if states is not None else None
        if wanted is not None:
            unknown = set(wanted) - set(STATES)
            if unknown:
                raise ValueError(f"unknown file states: {', '.join(sorted(unknown))}")
        self._flush_if_any()
        state_clause = ""
        if wanted is not None:
            state_clause = f" AND state IN ({', '.join('?' * len(wanted))})"
        sql = (
            f"SELECT {FILE_COLUMNS} FROM files WHERE job_id = ? AND rel_path > ?{state_clause}"
            f" ORDER BY rel_path LIMIT {PAGE_ROWS}"
        )
        # Keyset paging rather than one long-lived cursor: no statement stays open across the
        # caller's writes and commits, and each page is an index range scan.
        after = ""
        while True:
            rows = self._read(sql, (job_id, after, *(wanted or ())))
            for row in rows:
                record = file_record_from_row(row)
                record.acked_blocks = self._load_blocks(record.file_id) if with_blocks else None
                yield record
            if len(rows) < PAGE_ROWS:
                return
            after = rows[-1][2]

    def summary(self, job_id: str) -> JobSummary:
        """Totals over the latest version of every path of the job (flushes the batch first)."""
        self._flush_if_any()
        files: dict[str, int] = {}
        size: dict[str, int] = {}
        for state, count, total in self._read(
            "SELECT state, count(*), sum(size_bytes) FROM files WHERE job_id = ? GROUP BY state",
            (job_id,),
        ):
            group = {"committed": "copied", "skipped": "skipped", "failed": "failed"}.get(
                state, "pending"
            )
            files[group] = files.get(group, 0) + count
            size[group] = size.get(group, 0) + total
        return JobSummary(
            **{f"files_{g}": n for g, n in files.items()},
            **{f"bytes_{g}": n for g, n in size.items()},
        )

    # --- read-only queries for verify -------------------------------------------------------

    def iter_committed_by_blob(
        self,
        job_ids: Iterable[str],
        *,
        name_prefix: str = "",
        relocated: Iterable[tuple[str, str, str]] = (),
    ) -> Iterator[FileRecord]:
        """The latest committed version of every blob name among ``job_ids`` (the newest job
        wins) that starts with ``name_prefix``, in blob-name order: SQLite's BINARY collation on
        UTF-8, i.e. code-point order, the order of Python's str comparison.

        ``relocated``: (job_id, job_prefix, at_prefix) of jobs whose files now live elsewhere
        (:meth:`job_locations`): their blobs are named ``at_prefix`` + the blob name after
        ``job_prefix``, and compete for the newest version with the others under that name,
        aged by when finalize found them there.
        Records carry the name as at the destination.

        One read cursor, paged with fetchmany: nothing per blob stays in memory here (SQLite's
        sorter spills to a temp file for a large journal). Records carry acked_blocks=None.
        """
        # (job_id, the prefix its blob names lose, the prefix they gain): "" and "" for a job
        # whose names are already those of the destination
        relocated = list(relocated)
        sources = [(job_id, "", "", 0) for job_id in job_ids] + [(*r, 1) for r in relocated]
        if not sources:
            return
        self._flush_if_any()
        columns = ", ".join(f"f.{c.strip()}" for c in FILE_COLUMNS.split(","))
        if relocated:
            # SQLite's substr and length count characters of TEXT, as Python's str slicing does
            name = "s.at_prefix || substr(f.blob_name, length(s.job_prefix) + 1)"
            moved = " AND substr(f.blob_name, 1, length(s.job_prefix)) = s.job_prefix"
        else:  # every name as journaled: no string built per row
            name, moved = "f.blob_name", ""
        sql = (
            "WITH s(job_id, job_prefix, at_prefix, moved) AS"
            f" (VALUES {', '.join(['(?, ?, ?, ?)'] * len(sources))})"
            f" SELECT {columns}, {name} AS name FROM s"
            " JOIN files f ON f.job_id = s.job_id JOIN jobs j ON j.job_id = f.job_id"
            " LEFT JOIN job_locations l ON s.moved AND l.job_id = s.job_id"
            f" WHERE f.state = 'committed'{moved}"
            f" AND substr({name}, 1, ?) = ?"
            # a relocated job's blobs arrived when the device was imported, before finalize
            # found them (recorded_ns), long after the job was created: that is its age
            " ORDER BY name, CASE WHEN s.moved THEN l.recorded_ns ELSE j.created_ns END DESC,"
            " j.job_id DESC"
        )
        params = [value for source in sources for value in source]
        last_name = None
        try:
            with self._db_lock:
                cursor = self._conn.execute(sql, (*params, len(name_prefix), name_prefix))
            try:
                while True:
                    with self._db_lock:
                        rows = cursor.fetchmany(PAGE_ROWS)
                    if not rows:
                        return
                    for row in rows:
                        if row[-1] == last_name:  # an older job's version of the same blob
                            continue
                        last_name = row[-1]
                        record = file_record_from_row(row[:-1])
                        record.blob_name = last_name
                        record.acked_blocks = None
                        yield record
            finally:
                cursor.close()
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read journal: {e}") from None

    def record_location(self, job_id: str, dest: str, job_prefix: str) -> None:
        """Durably: job_id's files live at ``dest`` (a redacted blob URL whose prefix replaces
        ``job_prefix``), for `pyengine verify URL` (job_locations). The one write here: it is
        finalize's, beside the query verify reads it back with."""
        from pyengine.state.schema import SQL_RECORD_LOCATION

        self._write_now(SQL_RECORD_LOCATION, (job_id, dest, job_prefix, time.time_ns()))

    def job_locations(self) -> list[tuple[str, str, str]]:
        """(job_id, dest, job_prefix) of every job whose files `pyengine finalize` found at
        another destination than the job's own (schema.SQL_CREATE_JOB_LOCATIONS), oldest first."""
        return self._read(
            "SELECT job_id, dest, job_prefix FROM job_locations ORDER BY recorded_ns, job_id"
        )

    def job_has_blob(self, job_id: str, blob_name: str) -> bool:
        """Whether job_id has a record (any state) of blob_name. Scans that job's rows only (the
        (job_id, rel_path) index); meant for the rare blob verify finds missing."""
        self._flush_if_any()
        rows = self._read(
            "SELECT 1 FROM files WHERE job_id = ? AND blob_name = ? LIMIT 1", (job_id, blob_name)
        )
        return bool(rows)
