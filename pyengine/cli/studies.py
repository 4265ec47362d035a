"""`pyengine studies JOB [--json|--csv]`: the study manifest of a policy copy, one row per
study instance UID with per-tenant totals (state/studies.py says what "complete" means).

JOB is any tenant's job id of the run (`pyengine jobs list`): the run's other tenants' jobs are
found through the ``policy_run`` their options share.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from pyengine.cli.common import EXIT_OK, human_bytes

CSV_COLUMNS = (
    "tenant",
    "study_uid",
    "modalities",
    "series",
    "instances",
    "committed",
    "failed",
    "bytes",
    "retain_until",
    "tier",
    "status",
)


def add_parser(sub: Any) -> None:
    s = sub.add_parser("studies", help="the study manifest of a policy copy")
    s.add_argument("job", help="a job id of the policy copy (see `pyengine jobs list`)")
    s.add_argument("--journal", default=None)
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per study")


def cmd_studies(args: argparse.Namespace) -> int:
    from pyengine.state import studies
    from pyengine.state.journal import Journal

    with Journal.open_existing(args.journal) as journal:
        jobs = studies.run_jobs(journal, args.job)
        job_ids = [j.job_id for j in jobs]
        if not studies.has_table(journal):
            rows, totals = [], []
        else:
            rows, totals = studies.study_table(journal, jobs)
    if args.json:
        doc = {
            "jobs": job_ids,
            "studies": [s.to_json() for s in rows],
            "tenants": [t.to_json() for t in totals],
        }
        print(json.dumps(doc, indent=None))
        return EXIT_OK
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(CSV_COLUMNS)
        for s in rows:
            d = s.to_json()
            d["modalities"] = "/".join(d["modalities"])
            w.writerow([d[c] for c in CSV_COLUMNS])
        return EXIT_OK
    # a study UID is up to 64 characters: wide enough not to fold it, even into a pipe
    console = Console(width=max(Console().width, 180))
    table = Table(*CSV_COLUMNS, title=f"studies of {', '.join(job_ids)}")
    for s in rows:
        d = s.to_json()
        table.add_row(
            d["tenant"],
            d["study_uid"],
            "/".join(d["modalities"]),
            str(d["series"]),
            str(d["instances"]),
            str(d["committed"]),
            str(d["failed"]),
            human_bytes(d["bytes"]),
            d["retain_until"] or "",
            d["tier"] or "",
            d["status"],
        )
    console.print(table)
    tt = Table(
        "tenant", "studies", "complete", "incomplete", "instances", "committed", "failed",
        "bytes", "other files", "failed, no study", title="per tenant",
    )  # fmt: skip
    for t in totals:
        d = t.to_json()
        tt.add_row(
            d["tenant"],
            *(str(d[k]) for k in ("studies", "complete", "incomplete", "instances")),
            str(d["committed"]),
            str(d["failed"]),
            human_bytes(d["bytes"]),
            str(d["other_files"]),
            str(d["failed_unplaced"]),
        )
    console.print(tt)
    return EXIT_OK
