"""`pyengine finalize JOB --dest URL`: after a Data Box's data has landed in the storage account,
check every blob of the device job there and stamp what the device could not carry (metadata,
tags, tier, immutability); findings one line each as found, then a summary (or one JSON object
with ``--json``); 0 all stamped, 1 any missing, mismatched or failed blob. The work itself is
:func:`pyengine.engine.finalize.finalize`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyengine.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_credential_flags,
    kek_of,
    positive,
    size_mib,
)
from pyengine.cli.signals import run_interruptible
from pyengine.options import CopyOptions, MiB


def add_parser(sub: Any) -> None:
    f = sub.add_parser(
        "finalize",
        help="after a Data Box import: check the job's blobs in the account and stamp their "
        "pending metadata, tags, tier and immutability",
    )
    f.add_argument("job", help="the job id of the copy to the Data Box (see `pyengine jobs`)")
    f.add_argument(
        "--dest",
        required=True,
        help="where the device's data landed: https://ACCOUNT.blob.core.windows.net/CONTAINER"
        "[/PREFIX] (the job's prefix is replaced by this one)",
    )
    f.add_argument(
        "--deep", action="store_true", help="also read back and re-hash every blob before stamping"
    )
    f.add_argument(
        "--sample",
        type=positive,
        default=None,
        metavar="PERCENT",
        help="--deep on about PERCENT %% of the blobs, chosen by a hash of their names (a re-run "
        "checks the same ones); implies --deep",
    )
    f.add_argument("--kek-file", help="key-encryption key of an encrypted job (--deep: needed)")
    f.add_argument(
        "--memory-cap",
        type=size_mib,
        default=CopyOptions.memory_cap_bytes,
        metavar="MIB",
        help="hard cap on --deep read buffers in MiB "
        f"(default: {CopyOptions.memory_cap_bytes // MiB})",
    )
    f.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_credential_flags(f)


def cmd_finalize(args: argparse.Namespace) -> int:
    """0 every blob checked and stamped; 1 any finding; usage errors raise ConfigError."""
    from pyengine.engine.finalize import FinalizeFinding, finalize

    kek = kek_of(args)

    def print_finding(finding: FinalizeFinding) -> None:
        print(finding.line(), flush=True)

    report = run_interruptible(
        finalize(
            args.job,
            args.dest,
            journal_path=args.journal,
            connection_string=args.connection_string,
            deep=args.deep,
            sample_percent=args.sample,
            kek=kek,
            memory_cap_bytes=args.memory_cap,
            on_event=None if args.json else print_finding,
        ),
        on_stop="stopping finalize (what is stamped stays so; run it again to go on)",
    )
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
    else:
        deep = ""
        if report.deep:
            deep = f", {report.files_deep_checked} read back and re-hashed"
        print(
            f"finalize {report.job_id} -> {report.dest}: {report.files_checked} checked, "
            f"{report.files_stamped} stamped, {report.files_already_stamped} stamped before, "
            f"{report.files_missing} missing, {report.files_mismatched} mismatched, "
            f"{report.files_failed} failed, {report.files_superseded} superseded by a later copy"
            f"{deep}",
            flush=True,
        )
        if report.location_recorded:
            print(
                f"journal: job {report.job_id}'s files are at {report.dest}; "
                f"`pyengine verify {report.dest}` checks them",
                flush=True,
            )
    return EXIT_OK if report.ok else EXIT_FAILED
