"""`pyengine verify TARGET`: findings printed one line each as they are found, then a summary
table (or the report as one JSON object with ``--json``); 0 all ok, 1 any finding. The checks
themselves are :func:`pyengine.state.verify.verify`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyengine.cli.common import EXIT_FAILED, EXIT_OK, add_credential_flags, kek_of, size_mib
from pyengine.cli.signals import run_interruptible
from pyengine.options import CopyOptions, MiB
from pyengine.state.verify_report import Finding, VerifyReport


def add_parser(sub: Any) -> None:
    v = sub.add_parser("verify", help="check a destination against the journal")
    v.add_argument(
        "target",
        help="a destination URL (every blob the journal knows under it, and blobs it does not "
        "know), or a job id (that job's committed files)",
    )
    v.add_argument(
        "--deep", action="store_true", help="read back (ranged), decrypt and re-hash every blob"
    )
    v.add_argument(
        "--kek-file", help="key-encryption key: checks encrypted blobs' digests (--deep: needed)"
    )
    v.add_argument(
        "--memory-cap",
        type=size_mib,
        default=CopyOptions.memory_cap_bytes,
        metavar="MIB",
        help="hard cap on --deep read buffers in MiB, as for copy "
        f"(default: {CopyOptions.memory_cap_bytes // MiB})",
    )
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_credential_flags(v)


def _print_summary(report: VerifyReport, kek_given: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    mode = "deep (read back, decrypted, re-hashed)" if report.deep else "metadata"
    jobs = ", ".join(report.job_ids)
    console.print(f"verify {report.target}: {mode}; jobs {jobs}", markup=False, soft_wrap=True)
    if report.located_by_finalize:
        console.print(
            f"checked at {report.dest}, where finalize found them", markup=False, soft_wrap=True
        )
    table = Table("", "blobs")
    table.add_row("ok", str(report.files_ok))
    table.add_row("damaged", str(report.files_damaged))
    table.add_row("missing", str(report.files_missing))
    table.add_row("unknown", str(report.blobs_unknown))
    if report.files_unreadable:
        table.add_row("unreadable", str(report.files_unreadable))
    if report.files_deleted_at_source:
        table.add_row("deleted at source (not checked)", str(report.files_deleted_at_source))
    if report.files_not_committed:
        table.add_row("not committed (not checked)", str(report.files_not_committed))
    console.print(table)
    if report.files_digest_unchecked:
        why = "this run had no --kek-file" if not kek_given else "no KEK"
        console.print(
            f"{report.files_digest_unchecked} encrypted blobs: existence and size checked, "
            f"digest not checked ({why})",
            markup=False,
            soft_wrap=True,
        )


def cmd_verify(args: argparse.Namespace) -> int:
    """0 all ok, 1 any finding; usage errors raise ConfigError (exit 2 through cli.main)."""
    from pyengine.state.verify import verify

    kek = kek_of(args)

    def print_finding(finding: Finding) -> None:
        # one line each, as found: an operator sees them during a long deep run
        print(finding.line(), flush=True)

    report = run_interruptible(
        verify(
            args.target,
            journal_path=args.journal,
            deep=args.deep,
            kek=kek,
            connection_string=args.connection_string,
            memory_cap_bytes=args.memory_cap,
            on_finding=None if args.json else print_finding,
        ),
        on_stop="stopping verify (nothing to undo; run it again to check everything)",
    )
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
    else:
        _print_summary(report, kek is not None)
    return EXIT_OK if report.ok else EXIT_FAILED
