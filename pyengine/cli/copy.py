"""`pyengine copy` and `pyengine resume`: their flags, and the mapping of flags onto CopyOptions.

Exit codes: the table in cli/common.py; an interrupted job exits 130 (SIGINT) or 143 (SIGTERM)
after its journal is durable and the job marked interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from pyengine.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_credential_flags,
    kek_of,
    positive,
    size_mib,
)
from pyengine.cli.progress import _Presenter
from pyengine.cli.signals import run_interruptible
from pyengine.errors import ConfigError
from pyengine.options import TIERS, CopyOptions, DeleteLimit, MiB, RetryPolicy, parse_max_delete
from pyengine.state.journal_queries import RESUMABLE_JOB_STATES, shown_status


def add_parsers(sub: Any) -> None:
    """`copy SOURCE DEST` and `resume JOB`: the same flags (a resume asks for secrets again)."""
    c = sub.add_parser("copy", help="copy a file or a tree into a container")
    c.add_argument(
        "source",
        nargs="?",
        default=None,
        help="file or directory to copy (with --policy: the policy's policy.source when left out)",
    )
    c.add_argument(
        "dest",
        nargs="?",
        default=None,
        help="https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS] (none with --policy)",
    )
    c.add_argument(
        "--policy",
        metavar="FILE",
        default=None,
        help="migration policy (TOML): each file goes to its tenant's destination",
    )
    _add_copy_flags(c)

    r = sub.add_parser("resume", help="resume an unfinished job (credentials are asked again)")
    r.add_argument("job", help="job id (see `pyengine jobs list`)")
    r.add_argument("--dest", default=None, help="the destination again, e.g. with a fresh SAS")
    _add_copy_flags(r)


def _max_delete(text: str) -> DeleteLimit:
    try:
        return parse_max_delete(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _content_type(text: str) -> str:
    from pyengine.engine.content_type import check_content_type

    try:
        return check_content_type(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def _add_copy_flags(p: argparse.ArgumentParser) -> None:
    add_credential_flags(p)
    d = CopyOptions()
    p.add_argument("--encrypt", action="store_true", help="Azure client-side encryption v2")
    p.add_argument("--kek-file", help="key-encryption key: a file of 32 raw bytes (A256KW)")
    p.add_argument("--tier", choices=TIERS, help="access tier of the new blobs")
    p.add_argument(
        "--tag",
        action="append",
        type=_tag,
        default=[],
        metavar="KEY=VALUE",
        help="blob index tag (repeatable)",
    )
    p.add_argument(
        "--content-type",
        type=_content_type,
        metavar="TYPE",
        help="Content-Type of every blob (default: application/dicom for DICOM Part 10 files, "
        "else from the file name's extension, else application/octet-stream)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="copy only matching paths (repeatable; ** spans directories)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip matching paths (repeatable)",
    )
    p.add_argument(
        "--target",
        choices=("azure", "databox"),
        default=None,
        help="the destination endpoint: Azure Blob Storage, or a Data Box's Blob storage (REST "
        "2019-02-02, names <= 880 characters, blocks <= 100 MiB; tags, tier and immutability "
        "are journaled for `pyengine finalize`) (default: databox for a "
        "*.microsoftdatabox.com host, else azure)",
    )
    p.add_argument(
        "--ca-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate(s) to trust for HTTPS, e.g. the Data Box's own "
        "(default: the system store; SSL_CERT_FILE is honoured)",
    )
    p.add_argument(
        "--put-md5",
        action="store_true",
        help="store each blob's Content-MD5 (of the stored bytes: the ciphertext when "
        "encrypting) so AzCopy --check-md5 and rclone check can verify it",
    )
    p.add_argument("--dry-run", action="store_true", help="scan and plan, send nothing")
    p.add_argument("--json", action="store_true", help="one JSON event per line instead of a bar")
    p.add_argument(
        "--create-container", action="store_true", help="create the container if missing"
    )
    p.add_argument(
        "--check",
        choices=("metadata", "hash", "none"),
        default=d.check,
        help="how a re-run decides a blob is up to date (default: %(default)s)",
    )
    p.add_argument(
        "--delete-destination",
        action="store_true",
        help="delete blobs whose source file is gone (default: only report them)",
    )
    p.add_argument(
        "--max-delete",
        type=_max_delete,
        default=None,
        metavar="N|P%",
        help="most blobs one run may delete, a count or a share of the blobs under the prefix "
        "(default: 10%%, and none when the source tree is empty)",
    )
    p.add_argument(
        "--old-kek-file",
        action="append",
        default=[],
        metavar="PATH",
        help="an earlier key-encryption key (repeatable): blobs it wrapped get their content key "
        "re-wrapped under --kek-file in place instead of being sent again",
    )
    p.add_argument("--manifest", default=None, help="audit manifest path (JSONL)")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="native reader threads (default: %(default)s)",
    )
    p.add_argument(
        "--memory-cap",
        type=size_mib,
        default=d.memory_cap_bytes,
        metavar="MIB",
        help=f"hard cap on chunk memory in MiB (default: {d.memory_cap_bytes // MiB})",
    )
    p.add_argument(
        "--block-size",
        type=size_mib,
        default=None,
        metavar="MIB",
        help="block size in MiB, a power of two (default: from the file size)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=d.max_concurrency,
        help="HTTP requests in flight (default: %(default)s)",
    )
    p.add_argument("--direct-io", action="store_true", help="read with O_DIRECT (bypass the cache)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="send the files from N worker processes of an embedded Dask LocalCluster; "
        "--threads and --memory-cap apply per worker (default: this process only)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="send the files from the workers of an existing Dask cluster (tcp://host:8786), "
        "which see SRC at the same path (default: $DASK_SCHEDULER_ADDRESS, else none)",
    )
    r = RetryPolicy()
    p.add_argument(
        "--cap-mbps",
        type=positive,
        default=None,
        metavar="MBPS",
        help="cap on upload bandwidth in megabits per second (default: none)",
    )
    p.add_argument(
        "--max-requests-per-s",
        type=positive,
        default=None,
        metavar="N",
        help="cap on requests started per second, retries included (default: none)",
    )
    p.add_argument(
        "--retry-window",
        type=positive,
        default=r.max_elapsed_s,
        metavar="SECONDS",
        help="keep retrying a throttled or failing request this long before its file fails "
        "(default: %(default)g)",
    )
    p.add_argument(
        "--stall-timeout",
        type=positive,
        default=r.stall_timeout_s,
        metavar="SECONDS",
        help="abort and retry a request that makes no progress this long (default: %(default)g)",
    )


def _options_from(args: argparse.Namespace) -> CopyOptions:
    from pyengine.crypto import load_kek_file

    if args.encrypt and not args.kek_file:
        raise ConfigError("--encrypt", "needs --kek-file PATH (a file of 32 raw bytes)")
    kek = kek_of(args)
    for name in ("threads", "concurrency"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", "must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", "must be at least 1")
    if args.workers is not None and args.scheduler:
        raise ConfigError("--workers", "not with --scheduler (the cluster has its own workers)")
    # Dask's own convention for "the cluster to use"; --workers N asks for an embedded one
    scheduler = args.scheduler
    if scheduler is None and args.workers is None:
        scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    return CopyOptions(
        threads=args.threads,
        memory_cap_bytes=args.memory_cap,
        block_bytes=args.block_size,
        max_concurrency=args.concurrency,
        encrypt=args.encrypt,
        kek=kek,
        tier=args.tier,
        tags=tuple(args.tag),
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        dry_run=args.dry_run,
        create_container=args.create_container,
        connection_string=args.connection_string,
        check=args.check,
        journal_path=args.journal,
        manifest_path=args.manifest,
        delete_destination=args.delete_destination,
        max_delete=args.max_delete or DeleteLimit(),
        old_keks=tuple(load_kek_file(path) for path in args.old_kek_file),
        direct_io=args.direct_io,
        retry=RetryPolicy(max_elapsed_s=args.retry_window, stall_timeout_s=args.stall_timeout),
        max_requests_per_s=args.max_requests_per_s,
        cap_mbps=args.cap_mbps,
        content_type=args.content_type,
        target=args.target,
        ca_cert_file=args.ca_cert,
        put_md5=args.put_md5,
        workers=args.workers,
        scheduler=scheduler,
    )


def _run_copy(
    source: str, dest: str | None, options: CopyOptions, as_json: bool, policy: Any = None
) -> int:
    from pyengine.engine.job import copy

    with _Presenter(as_json) as presenter:
        report = run_interruptible(
            copy(source, dest, options, on_event=presenter.on_event, policy=policy),
            on_stop="stopping: journaling the blocks in flight, then marking the job interrupted",
        )
    presenter.summary(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_copy(args: argparse.Namespace) -> int:
    if args.policy is None:
        if args.source is None or args.dest is None:
            raise ConfigError("copy", "SRC and DEST are required (or SRC --policy FILE)")
        return _run_copy(args.source, args.dest, _options_from(args), args.json)
    from pyengine.policy import load_policy

    # The policy decides each of these per tenant: given as well, one would silently lose.
    for flag, given in (
        ("DEST", args.dest is not None),
        ("--encrypt", args.encrypt),
        ("--kek-file", args.kek_file is not None),
        ("--tier", args.tier is not None),
        ("--tag", bool(args.tag)),
    ):
        if given:
            raise ConfigError(flag, "not with --policy (the policy decides it per tenant)")
    policy = load_policy(args.policy)
    source = args.source
    if source is None and policy.source is not None:  # relative to the policy file, as keys
        source = os.path.join(os.path.dirname(os.path.abspath(args.policy)), policy.source)
    if source is None:
        raise ConfigError("copy", "SRC is required (the policy declares no policy.source)")
    return _run_copy(source, None, _options_from(args), args.json, policy)


#: saved job option -> (CopyOptions field, flag): the choices that decide what the destination
#: holds or how it is reached (the Data Box profile and its certificate). A resume keeps them
#: whether or not they are given again; given with another value, the resume is refused (one job
#: never mixes two), except --ca-cert (the device's certificate may have moved).
_KEPT = {
    "target": ("target", "--target"),
    "ca_cert_file": ("ca_cert_file", "--ca-cert"),
    "tier": ("tier", "--tier"),
    "tags": ("tags", "--tag"),
    "put_md5": ("put_md5", "--put-md5"),
    "content_type": ("content_type", "--content-type"),
    "delete_destination": ("delete_destination", "--delete-destination"),
}
#: what a --policy run's tenants may differ in (the policy decides tier and tags per tenant; the
#: target is kept when it was not the one the host name implies: see _kept)
_KEPT_BY_POLICY_RUN = ("ca_cert_file", "put_md5", "content_type", "delete_destination")


def _kept(job: Any, opts: CopyOptions, names: Any) -> dict[str, Any]:
    """The saved options in ``names`` as CopyOptions fields (a journal of an older pyengine may
    lack some: those stay as given). Raises ConfigError for a flag given with another value."""
    saved, out = job.options, {}
    for name in names:
        if name not in saved:
            continue
        field_name, flag = _KEPT[name]
        value = saved[name]
        if name == "tags":
            value = tuple((k, v) for k, v in (value or {}).items())
        given = getattr(opts, field_name)
        # argparse defaults (None, False, ()) mean "not given"; tags were saved sorted
        differs = dict(given) != dict(value) if name == "tags" else given != value
        if given not in (None, False, ()) and differs and name != "ca_cert_file":
            shown = dict(value) if name == "tags" else value
            raise ConfigError(
                flag,
                f"job {job.job_id} was started with {shown!r}; resume it with the same value, "
                "or start a new job",
            )
        if name != "ca_cert_file" or given is None:
            out[field_name] = value
    return out


def cmd_resume(args: argparse.Namespace) -> int:
    from pyengine.state.journal import Journal

    with Journal.open_existing(args.journal) as journal:
        info = journal.get_job(args.job)
    if info.status not in RESUMABLE_JOB_STATES:
        raise ConfigError(args.job, f"job is {shown_status(info.status)}; nothing to resume")
    dest = args.dest or info.dest
    if args.dest:
        from pyengine.targets.open import destination

        # --dest brings a fresh SAS (or key) for the job's own URL, nothing else: another URL
        # would start a new job there with this one's kept options (--delete-destination)
        if destination(args.dest).redacted() != info.dest:
            raise ConfigError(
                "--dest",
                f"job {info.job_id} copies to {info.dest}; --dest may only renew the "
                "credentials of that URL (start a new job for another destination)",
            )
    opts = _options_from(args)
    saved = info.options
    if saved.get("policy"):  # one tenant's job of a policy copy: the whole run goes on
        from urllib.parse import urlsplit

        from pyengine.policy import load_policy
        from pyengine.targets.open import destination
        from pyengine.targets.profile import choose_profile

        policy = load_policy(info.options["policy"])
        keep = {k: tuple(saved.get(k, ())) for k in ("include", "exclude")}
        keep.update(_kept(info, opts, _KEPT_BY_POLICY_RUN))
        # each tenant's host implies its profile; a saved one it does not imply was --target
        host = urlsplit(getattr(destination(info.dest), "account_url", "")).hostname or ""
        if saved.get("target") not in (None, choose_profile(None, host).name):
            keep.update(_kept(info, opts, ("target",)))
        opts = dataclasses.replace(opts, **keep, journal_path=args.journal)
        return _run_copy(info.source, None, opts, args.json, policy)
    # The job keeps the choices that decide block IDs and payloads; secrets are asked again.
    opts = dataclasses.replace(
        opts,
        encrypt=bool(saved.get("encrypt", opts.encrypt)),
        block_bytes=saved.get("block_bytes", opts.block_bytes),
        include=tuple(saved.get("include", opts.include)),
        exclude=tuple(saved.get("exclude", opts.exclude)),
        journal_path=args.journal,
        **_kept(info, opts, _KEPT),
    )
    if opts.encrypt and opts.kek is None:
        raise ConfigError(args.job, "the job encrypts: give --kek-file again")
    return _run_copy(info.source, dest, opts, args.json)
