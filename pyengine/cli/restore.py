"""`pyengine restore SRC_URL DEST_DIR`: flags, their mapping onto RestoreOptions, the summary.

Exit codes: 0 every blob restored (or already there), 1 some failed or wait in the Archive tier,
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from pyengine.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_credential_flags,
    human_bytes,
    kek_of,
    positive,
    size_mib,
    stderr,
)
from pyengine.cli.progress import _Presenter
from pyengine.errors import ConfigError
from pyengine.options import MiB, RetryPolicy


def add_parser(sub: Any) -> None:
    from pyengine.engine.restore import RestoreOptions

    d, r = RestoreOptions(), RetryPolicy()
    p = sub.add_parser("restore", help="download blobs into a directory, decrypted and verified")
    p.add_argument("source", help="https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS]")
    p.add_argument("dest_dir", help="directory to restore into (created if missing)")
    add_credential_flags(p)
    p.add_argument("--kek-file", help="key-encryption key of encrypted blobs (32 raw bytes)")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="migration policy (TOML) of the copy: each blob decrypted with the key of the tenant "
        "whose destination covers it (not with --kek-file)",
    )
    p.add_argument("--job", default=None, help="restore only the blobs this copy job committed")
    p.add_argument("--study", default=None, metavar="UID", help="only blobs tagged studyuid=UID")
    p.add_argument("--tenant", default=None, help="only blobs tagged tenant=TENANT")
    p.add_argument("--include", action="append", default=[], metavar="GLOB")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.add_argument(
        "--rehydrate",
        choices=("Standard", "High"),
        default=None,
        help="Archive-tier blobs: request rehydration to Hot in place and report them pending "
        "(restore again once done); without it they are reported pending, not restored",
    )
    p.add_argument(
        "--ca-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate(s) to trust for HTTPS, e.g. a Data Box's own or a private CA's "
        "(default: the system store; SSL_CERT_FILE is honoured)",
    )
    p.add_argument(
        "--target",
        choices=("azure", "databox"),
        default=None,
        help="the source endpoint: Azure Blob Storage, or a Data Box's Blob storage (REST "
        "2019-02-02) (default: databox for a *.microsoftdatabox.com host, else azure)",
    )
    p.add_argument("--json", action="store_true", help="one JSON event per line instead of a bar")
    p.add_argument("--manifest", default=None, help="audit manifest path (JSONL)")
    p.add_argument("--threads", type=int, default=d.threads, help="native writer threads")
    p.add_argument(
        "--memory-cap",
        type=size_mib,
        default=d.memory_cap_bytes,
        metavar="MIB",
        help=f"hard cap on downloaded bytes held at once, in MiB (default: "
        f"{d.memory_cap_bytes // MiB})",
    )
    p.add_argument(
        "--concurrency", type=int, default=d.max_concurrency, help="HTTP requests in flight"
    )
    p.add_argument(
        "--retry-window",
        type=positive,
        default=r.max_elapsed_s,
        metavar="SECONDS",
        help="keep retrying a failing request this long before its file fails",
    )


def options_from(args: argparse.Namespace) -> Any:
    from pyengine.engine.restore import RestoreOptions

    for name in ("threads", "concurrency"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", "must be at least 1")
    policy = None
    if args.policy is not None:
        if args.kek_file:
            raise ConfigError("--kek-file", "not with --policy (the policy names each key)")
        from pyengine.policy import load_policy

        policy = load_policy(args.policy)
    return RestoreOptions(
        threads=args.threads,
        memory_cap_bytes=args.memory_cap,
        max_concurrency=args.concurrency,
        kek=kek_of(args),
        policy=policy,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        job_id=args.job,
        study_uid=args.study,
        tenant=args.tenant,
        connection_string=args.connection_string,
        journal_path=args.journal,
        manifest_path=args.manifest,
        retry=RetryPolicy(max_elapsed_s=args.retry_window),
        rehydrate=args.rehydrate,
        ca_cert_file=args.ca_cert,
        target=args.target,
    )


def cmd_restore(args: argparse.Namespace) -> int:
    from pyengine.engine.restore import restore

    opts = options_from(args)
    with _Presenter(args.json) as presenter:
        report = asyncio.run(restore(args.source, args.dest_dir, opts, presenter.on_event))
    if args.json:
        print(json.dumps({"kind": "summary", **report.to_json()}, ensure_ascii=False), flush=True)
    else:
        rate = report.bytes_copied / report.elapsed_s / 1e6 if report.elapsed_s else 0.0
        lines = [
            f"restore {report.job_id}: restored {report.files_copied} files "
            f"({human_bytes(report.bytes_copied)}; {report.files_unverified} without a digest to "
            f"check), already there {report.files_skipped}, failed {report.files_failed}, "
            f"archived {report.files_pending_archive}, in {report.elapsed_s:.1f} s "
            f"({rate:.0f} MB/s); ranges fetched {report.ranges_fetched}, resumed "
            f"{report.ranges_resumed}; {report.retries} retries",
        ]
        lines += [f"archived (pending): {name}" for name in report.pending_archive[:20]]
        if report.manifest_path:
            lines.append(f"manifest: {report.manifest_path}")
        for line in lines:
            stderr.print(line, markup=False, highlight=False)
    return EXIT_OK if report.ok else EXIT_FAILED
