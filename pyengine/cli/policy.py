"""`pyengine policy lifecycle FILE` prints the Azure lifecycle management policy that carries a
migration policy's later tier moves; `pyengine policy check FILE [--explain PATH...]` validates
the file and shows where given files would go (tenant, tier, tags, retain-until; never patient
data). The decisions are pyengine.policy's; this module only presents them."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from typing import Any

from pyengine.cli.common import EXIT_FAILED, EXIT_OK, stderr


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="check a migration policy file, print its lifecycle rules")
    cmds = p.add_subparsers(dest="policy_command", required=True, parser_class=type(p))
    life = cmds.add_parser(
        "lifecycle", help="print the Azure lifecycle management policy (JSON) for FILE"
    )
    life.add_argument("file", help="policy file (TOML)")
    life.add_argument(
        "--account", default=None, help="storage account (when the tenants span several)"
    )
    check = cmds.add_parser("check", help="validate FILE; --explain shows where files would go")
    check.add_argument("file", help="policy file (TOML)")
    check.add_argument(
        "--explain", nargs="+", default=[], metavar="PATH", help="files to place (not copied)"
    )
    check.add_argument(
        "--source",
        default=None,
        help="source root the paths are relative to (default: the policy's source, else .)",
    )
    check.add_argument(
        "--today", type=_date, default=None, help="copy date to assume (default: today)"
    )
    check.add_argument("--json", action="store_true", help="one JSON object per file")


def cmd_policy(args: argparse.Namespace) -> int:
    from pyengine.policy import lifecycle_policy, load_policy

    policy = load_policy(args.file)
    if args.policy_command == "lifecycle":
        print(json.dumps(lifecycle_policy(policy, account=args.account), indent=2), flush=True)
        return EXIT_OK
    return _check(policy, args)


def _check(policy: Any, args: argparse.Namespace) -> int:
    from pyengine.policy import HEAD_BYTES, PolicyError

    today = args.today or datetime.date.today()
    root = os.path.abspath(args.source or policy.source or ".")
    if not args.explain:
        stderr.print(
            f"{args.file}: ok ({len(policy.tenants)} tenants)", markup=False, highlight=False
        )
        return EXIT_OK
    failed = 0
    for path in args.explain:
        rel = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
            placed = policy.place(rel, policy.read_dicom_head(head), today=today)
        except (PolicyError, OSError) as e:
            failed += 1
            reason = e.reason if isinstance(e, PolicyError) else (e.strerror or str(e))
            stderr.print(f"error: {path}: {reason}", markup=False, highlight=False)
            continue
        row = {
            "path": rel,
            "tenant": placed.tenant.name,
            "dest": placed.tenant.dest,
            "encrypt": placed.tenant.encrypt,
            "tier": placed.tier,
            "retain_until": placed.retain_until.isoformat(),
            "retention_flag": placed.retention_flag,
            "immutable_until": (
                placed.immutable_until.isoformat() if placed.immutable_until else None
            ),
            "legal_hold": placed.legal_hold,
            "tags": placed.tags,
        }
        if args.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            flag = f" ({placed.retention_flag})" if placed.retention_flag else ""
            tags = " ".join(f"{k}={v}" for k, v in placed.tags.items())
            print(
                f"{rel}: tenant {placed.tenant.name}, tier {placed.tier or 'account default'}, "
                f"retain until {placed.retain_until}{flag}; tags {tags}",
                flush=True,
            )
    return EXIT_FAILED if failed else EXIT_OK
