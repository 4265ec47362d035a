"""`pyengine jobs list` and `pyengine jobs show JOB`: what the journal knows of each job, as a
table or JSON (one object per job for `list`).

A job's status is shown as running, interrupted, failed or done. A job the journal still calls
running whose lock no live process holds (its process was killed: kill -9, OOM, a power loss)
is shown as "interrupted (holder gone)"; the next run of it resumes it either way.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pyengine.cli.common import EXIT_OK, Parser, human_bytes
from pyengine.engine.scan import display_path


def add_parser(sub: Any) -> None:
    j = sub.add_parser("jobs", help="list or show jobs in the journal")
    jsub = j.add_subparsers(dest="jobs_command", required=True, parser_class=Parser)
    jl = jsub.add_parser("list", help="every job, newest first")
    js = jsub.add_parser("show", help="one job: totals per state and its failures")
    js.add_argument("job")
    for q in (jl, js):
        q.add_argument("--journal", default=None)
        q.add_argument("--json", action="store_true")


def cmd_jobs(args: argparse.Namespace) -> int:
    from pyengine.state.journal import Journal

    with Journal.open_existing(args.journal) as journal:
        journal_path = journal.path
        if args.jobs_command == "list":
            jobs = journal.list_jobs()
            if args.json:
                for info in jobs:
                    print(json.dumps(_job_json(info, journal_path)))
                return EXIT_OK
            table = Table("job", "status", "source", "destination", "files", "bytes")
            table.columns[0].no_wrap = table.columns[1].no_wrap = True  # grep-able
            for info in jobs:
                table.add_row(
                    info.job_id,
                    job_status(info, journal_path),
                    info.source,
                    info.dest,
                    str(sum(info.files_by_state.values())),
                    human_bytes(sum(info.bytes_by_state.values())),
                )
            Console(soft_wrap=True).print(table)
            return EXIT_OK
        info = journal.get_job(args.job)
        summary = journal.summary(args.job)
        failures = [(r.rel_path, r.error) for r in journal.iter_files(args.job, states=("failed",))]
    if args.json:
        print(
            json.dumps(
                {
                    **_job_json(info, journal_path),
                    "summary": summary.__dict__,
                    "failures": [{"path": p, "reason": e} for p, e in failures],
                }
            )
        )
        return EXIT_OK
    console = Console()
    status = job_status(info, journal_path)
    console.print(f"job {info.job_id} ({status}): {info.source} -> {info.dest}", markup=False)
    table = Table("", "files", "bytes")
    for state in ("copied", "skipped", "failed", "pending"):
        table.add_row(
            state,
            str(getattr(summary, f"files_{state}")),
            human_bytes(getattr(summary, f"bytes_{state}")),
        )
    console.print(table)
    for path, reason in failures[:50]:
        console.print(Text.assemble(("failed:", "red"), f" {display_path(path)}: {reason}"))
    return EXIT_OK


def job_status(info: Any, journal_path: str) -> str:
    """running | interrupted | interrupted (holder gone) | failed | done."""
    from pyengine.state.joblock import job_lock_path, lock_is_held
    from pyengine.state.journal_queries import shown_status

    if info.status == "running" and not lock_is_held(
        job_lock_path(journal_path, info.source, info.dest)
    ):
        return "interrupted (holder gone)"
    return shown_status(info.status)


def _job_json(info: Any, journal_path: str) -> dict[str, Any]:
    return {
        "job_id": info.job_id,
        "status": job_status(info, journal_path),
        "source": info.source,
        "dest": info.dest,
        "files_by_state": info.files_by_state,
        "bytes_by_state": info.bytes_by_state,
    }
