"""`pyengine rekey DEST`: re-wrap encrypted blobs' content keys under a new KEK (metadata only,
through pyengine.engine.rekey), and print what was done."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyengine.cli.common import EXIT_FAILED, EXIT_OK, add_credential_flags, stderr
from pyengine.cli.signals import run_interruptible


def add_parser(sub: Any) -> None:
    k = sub.add_parser(
        "rekey",
        help="re-wrap encrypted blobs' content keys under a new KEK (metadata only)",
    )
    k.add_argument("dest", help="container URL with optional prefix")
    k.add_argument("--kek-file", required=True, help="the current (old) key-encryption key")
    k.add_argument("--new-kek-file", required=True, help="the key-encryption key to move to")
    k.add_argument("--dry-run", action="store_true", help="count what would be re-wrapped")
    k.add_argument("--json", action="store_true")
    add_credential_flags(k)


def cmd_rekey(args: argparse.Namespace) -> int:
    from pyengine.crypto import load_kek_file
    from pyengine.engine.rekey import rekey

    old, new = load_kek_file(args.kek_file), load_kek_file(args.new_kek_file)
    report = run_interruptible(
        rekey(args.dest, old, new, connection_string=args.connection_string, dry_run=args.dry_run),
        on_stop="stopping (blobs re-wrapped so far stay re-wrapped; run it again to go on)",
    )
    if args.json:
        print(json.dumps({"kind": "summary", **report.to_json()}, ensure_ascii=False), flush=True)
    else:
        for name, reason in report.problems:
            stderr.print(f"error: {name}: {reason}", markup=False, highlight=False)
        verb = "would re-wrap" if report.dry_run else "re-wrapped"
        stderr.print(
            f"{verb} {report.blobs_rewrapped} blobs; {report.blobs_already_new} already under "
            f"the new KEK, {report.blobs_plain} not encrypted, {len(report.problems)} problems",
            markup=False,
            highlight=False,
        )
    return EXIT_OK if report.ok else EXIT_FAILED
