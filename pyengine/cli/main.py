"""`pyengine` command line: argument parsing and presentation only (rich progress or --json).

Exit codes: 0 everything copied, 1 some files failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from pyengine import __version__
from pyengine.engine.mirror import DeleteLimit, parse_max_delete
from pyengine.engine.report import CopyReport, Event
from pyengine.errors import ConfigError, PyEngineError
from pyengine.options import TIERS, CopyOptions, MiB, RetryPolicy

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# soft_wrap: an error stays on one line whatever the terminal width (scripts grep for it)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; this keeps the message on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}\n")


def _size_mib(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value * MiB)


def _max_delete(text: str) -> DeleteLimit:
    try:
        return parse_max_delete(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_credential_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connection-string",
        default=None,
        help="storage connection string (default: $AZURE_STORAGE_CONNECTION_STRING; a SAS on "
        "DEST, $AZURE_STORAGE_KEY or azure-identity are tried otherwise)",
    )
    p.add_argument("--journal", default=None, help="job store (default: the user's state dir)")


def _add_copy_flags(p: argparse.ArgumentParser) -> None:
    _add_credential_flags(p)
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
        type=_size_mib,
        default=d.memory_cap_bytes,
        metavar="MIB",
        help=f"hard cap on chunk memory in MiB (default: {d.memory_cap_bytes // MiB})",
    )
    p.add_argument(
        "--block-size",
        type=_size_mib,
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
    r = RetryPolicy()
    p.add_argument(
        "--cap-mbps",
        type=_positive,
        default=None,
        metavar="MBPS",
        help="cap on upload bandwidth in megabits per second (default: none)",
    )
    p.add_argument(
        "--max-requests-per-s",
        type=_positive,
        default=None,
        metavar="N",
        help="cap on requests started per second, retries included (default: none)",
    )
    p.add_argument(
        "--retry-window",
        type=_positive,
        default=r.max_elapsed_s,
        metavar="SECONDS",
        help="keep retrying a throttled or failing request this long before its file fails "
        "(default: %(default)g)",
    )
    p.add_argument(
        "--stall-timeout",
        type=_positive,
        default=r.stall_timeout_s,
        metavar="SECONDS",
        help="abort and retry a request that makes no progress this long (default: %(default)g)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyengine", description="Bulk copy of archives into Azure Blob Storage.")
    parser.add_argument("--version", action="version", version=f"pyengine {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("copy", help="copy a file or a tree into a container")
    c.add_argument("source", help="file or directory to copy")
    c.add_argument("dest", help="https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS]")
    _add_copy_flags(c)

    r = sub.add_parser("resume", help="resume an unfinished job (credentials are asked again)")
    r.add_argument("job", help="job id (see `pyengine jobs list`)")
    r.add_argument("--dest", default=None, help="the destination again, e.g. with a fresh SAS")
    _add_copy_flags(r)

    j = sub.add_parser("jobs", help="list or show jobs in the journal")
    jsub = j.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    jl = jsub.add_parser("list", help="every job, newest first")
    js = jsub.add_parser("show", help="one job: totals per state and its failures")
    js.add_argument("job")
    for q in (jl, js):
        q.add_argument("--journal", default=None)
        q.add_argument("--json", action="store_true")

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
        type=_size_mib,
        default=CopyOptions.memory_cap_bytes,
        metavar="MIB",
        help="hard cap on --deep read buffers in MiB, as for copy "
        f"(default: {CopyOptions.memory_cap_bytes // MiB})",
    )
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_credential_flags(v)

    k = sub.add_parser(
        "rekey",
        help="re-wrap encrypted blobs' content keys under a new KEK (metadata only)",
    )
    k.add_argument("dest", help="container URL with optional prefix")
    k.add_argument("--kek-file", required=True, help="the current (old) key-encryption key")
    k.add_argument("--new-kek-file", required=True, help="the key-encryption key to move to")
    k.add_argument("--dry-run", action="store_true", help="count what would be re-wrapped")
    k.add_argument("--json", action="store_true")
    _add_credential_flags(k)

    from pyengine.bench.runs import add_bench_parser

    add_bench_parser(sub)
    return parser


def _options_from(args: argparse.Namespace) -> CopyOptions:
    from pyengine.crypto import load_kek_file

    if args.encrypt and not args.kek_file:
        raise ConfigError("--encrypt", "needs --kek-file PATH (a file of 32 raw bytes)")
    kek = load_kek_file(args.kek_file) if args.kek_file else None
    for name in ("threads", "concurrency"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", "must be at least 1")
    block = args.block_size
    if block is not None and block & (block - 1):
        raise ConfigError("--block-size", "must be a power of two in MiB (4, 8, 16, ...)")
    return CopyOptions(
        threads=args.threads,
        memory_cap_bytes=args.memory_cap,
        block_bytes=block,
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
    )


class _Presenter:
    """Turns events into a rich progress bar (or JSON lines) and the final summary.

    Totals count each source file once, whatever its events: a file may end (failed, skipped,
    or copied by an earlier run) with or without a ``file_started``, and with fewer or more
    ``progress`` bytes than its size. So progress is kept per file in flight, capped at its
    size, and a file's end brings its count to exactly its size. (Counting ``file_failed`` on
    top of ``file_started`` showed "192.4/219.4 MB ... 208/228 files" for a 125 MB, 208-file
    tree where 20 files failed after retries.)
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress: Progress | None = None
        self.bytes_task: Any = None
        self.files_done = 0
        self.files_known = 0
        self.bytes_known = 0
        self.bytes_done = 0
        #: files started and not ended: path -> (size_bytes, bytes shown done)
        self._open: dict[str | None, tuple[int, int]] = {}

    def __enter__(self) -> _Presenter:
        return self

    def _start(self) -> Progress:
        # Started on the first event, so an error before the job starts prints alone.
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[files]}"),
                TimeRemainingColumn(),
                console=stderr,
                transient=False,
            )
            self.progress.start()
            self.bytes_task = self.progress.add_task("copy", total=0, files="0 files")
        return self.progress

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_event(self, ev: Event) -> None:
        if self.as_json:
            print(json.dumps(ev.to_json(), ensure_ascii=False), flush=True)
            return
        self._start()
        assert self.progress is not None
        self._count(ev)
        if ev.kind == "file_failed":
            # Text, not markup: a file name such as "scan[red].dcm" must print verbatim
            self.progress.console.print(
                Text.assemble(("error:", "red"), f" {ev.path}: {ev.reason}")
            )
        if ev.kind == "file_planned":
            self.progress.console.print(Text(f"plan: {ev.path} -> {ev.blob}"))
        elif ev.kind == "deleted_at_source":
            self.progress.console.print(
                Text.assemble(("no source file (kept):", "yellow"), f" {ev.path}")
            )
        elif ev.kind == "file_deleted":
            self.progress.console.print(Text.assemble(("deleted:", "yellow"), f" {ev.blob}"))
        elif ev.kind == "delete_planned":
            self.progress.console.print(Text.assemble(("would delete:", "yellow"), f" {ev.blob}"))
        self.progress.update(
            self.bytes_task,
            total=self.bytes_known,
            completed=self.bytes_done,
            files=f"{self.files_done}/{self.files_known} files",
        )

    def _count(self, ev: Event) -> None:
        if ev.kind == "file_started":
            if ev.path not in self._open:  # a file started again is still one file
                self._open[ev.path] = (ev.bytes, 0)
                self.files_known += 1
                self.bytes_known += ev.bytes
        elif ev.kind == "progress":
            if ev.path in self._open:
                size_bytes, done_bytes = self._open[ev.path]
                # resent bytes (a retried request, a restarted file) are not new bytes
                step = min(ev.bytes, size_bytes - done_bytes)
                self._open[ev.path] = (size_bytes, done_bytes + step)
                self.bytes_done += step
        elif ev.kind in ("file_skipped", "file_copied", "file_failed", "file_planned"):
            opened = self._open.pop(ev.path, None)
            if opened is None:  # ended without file_started: not counted yet
                self.files_known += 1
                self.bytes_known += ev.bytes
                self.bytes_done += ev.bytes
            else:
                size_bytes, done_bytes = opened
                self.bytes_done += size_bytes - done_bytes
            self.files_done += 1

    def summary(self, report: CopyReport) -> None:
        if self.as_json:
            print(
                json.dumps({"kind": "summary", **report.to_json()}, ensure_ascii=False), flush=True
            )
            return
        if report.dry_run:
            lines = [
                f"dry run: {report.files_skipped} files ({_human(report.bytes_skipped)}) would be "
                f"copied, {report.files_failed} cannot be"
            ]
        else:
            rate = report.bytes_copied / report.elapsed_s / 1e6 if report.elapsed_s else 0.0
            lines = [
                f"job {report.job_id}: copied {report.files_copied} files "
                f"({_human(report.bytes_copied)}), skipped {report.files_skipped} "
                f"({_human(report.bytes_skipped)}), failed {report.files_failed}, "
                f"in {report.elapsed_s:.1f} s ({rate:.0f} MB/s); {report.retries} retries, "
                f"throttled {report.throttled_s:.1f} s, "
                f"concurrency {report.concurrency_min}-{report.concurrency_max}"
            ]
            if report.files_resent_for_encryption:
                lines.append(
                    f"{report.files_resent_for_encryption} files sent again: their blobs were "
                    "stored in another encryption mode or under a KEK this run cannot unwrap"
                )
            if report.files_rewrapped:
                lines.append(
                    f"{report.files_rewrapped} blobs had their content key re-wrapped under "
                    "the current KEK (no bytes re-sent)"
                )
            if report.manifest_path:
                lines.append(f"manifest: {report.manifest_path}")
        lines.extend(_deletion_lines(report))
        for line in lines:
            stderr.print(line, markup=False, highlight=False)


def _deletion_lines(report: CopyReport) -> list[str]:
    """What --delete-destination did, in words that match it: "deleted" only for deletions."""
    if report.deletion_refused:
        return [f"--delete-destination: {report.deletion_refused}"]
    if report.blobs_to_delete:
        return [f"dry run: would delete {report.blobs_to_delete} blobs (listed above)"]
    if report.blobs_deleted:
        return [f"deleted {report.blobs_deleted} blobs whose source file is gone (see manifest)"]
    if report.deleted_at_source:
        n = len(report.deleted_at_source)
        if report.dry_run:
            return [f"dry run: {n} blobs have no source file (listed above)"]
        return [f"{n} blobs have no source file any more (kept; --delete-destination removes them)"]
    return []


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{n} B"


def _run_copy(source: str, dest: str, options: CopyOptions, as_json: bool) -> int:
    from pyengine.engine.job import copy

    with _Presenter(as_json) as presenter:
        report = asyncio.run(copy(source, dest, options, on_event=presenter.on_event))
    presenter.summary(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_copy(args: argparse.Namespace) -> int:
    return _run_copy(args.source, args.dest, _options_from(args), args.json)


def _cmd_resume(args: argparse.Namespace) -> int:
    from pyengine.state.journal import Journal

    with Journal.open(args.journal) as journal:
        info = journal.get_job(args.job)
    if info.status != "running":
        raise ConfigError(args.job, f"job is {info.status}; nothing to resume")
    dest = args.dest or info.dest
    opts = _options_from(args)
    saved = info.options
    # The job keeps the choices that decide block IDs and payloads; secrets are asked again.
    opts = CopyOptions(
        **{
            **opts.__dict__,
            "encrypt": bool(saved.get("encrypt", opts.encrypt)),
            "block_bytes": saved.get("block_bytes", opts.block_bytes),
            "include": tuple(saved.get("include", opts.include)),
            "exclude": tuple(saved.get("exclude", opts.exclude)),
            "journal_path": args.journal,
        }
    )
    if opts.encrypt and opts.kek is None:
        raise ConfigError(args.job, "the job encrypts: give --kek-file again")
    return _run_copy(info.source, dest, opts, args.json)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from pyengine.state.journal import Journal

    with Journal.open(args.journal) as journal:
        if args.jobs_command == "list":
            jobs = journal.list_jobs()
            if args.json:
                for info in jobs:
                    print(json.dumps(_job_json(info)))
                return EXIT_OK
            table = Table("job", "status", "source", "destination", "files", "bytes")
            table.columns[0].no_wrap = True
            for info in jobs:
                table.add_row(
                    info.job_id,
                    info.status,
                    info.source,
                    info.dest,
                    str(sum(info.files_by_state.values())),
                    _human(sum(info.bytes_by_state.values())),
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
                    **_job_json(info),
                    "summary": summary.__dict__,
                    "failures": [{"path": p, "reason": e} for p, e in failures],
                }
            )
        )
        return EXIT_OK
    console = Console()
    console.print(f"job {info.job_id} ({info.status}): {info.source} -> {info.dest}")
    table = Table("", "files", "bytes")
    for state in ("copied", "skipped", "failed", "pending"):
        table.add_row(
            state,
            str(getattr(summary, f"files_{state}")),
            _human(getattr(summary, f"bytes_{state}")),
        )
    console.print(table)
    for path, reason in failures[:50]:
        console.print(f"[red]failed:[/] {path}: {reason}")
    return EXIT_OK


def _job_json(info: Any) -> dict[str, Any]:
    return {
        "job_id": info.job_id,
        "status": info.status,
        "source": info.source,
        "dest": info.dest,
        "files_by_state": info.files_by_state,
        "bytes_by_state": info.bytes_by_state,
    }


def _cmd_verify(args: argparse.Namespace) -> int:
    from pyengine.state.verify import run_verify

    return run_verify(args)


def _cmd_rekey(args: argparse.Namespace) -> int:
    from pyengine.crypto import load_kek_file
    from pyengine.engine.rekey import rekey

    old, new = load_kek_file(args.kek_file), load_kek_file(args.new_kek_file)
    report = asyncio.run(
        rekey(args.dest, old, new, connection_string=args.connection_string, dry_run=args.dry_run)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "copy": _cmd_copy,
        "resume": _cmd_resume,
        "jobs": _cmd_jobs,
        "verify": _cmd_verify,
        "rekey": _cmd_rekey,
    }
    try:
        if args.command == "bench":
            from pyengine.bench.runs import run_bench

            return run_bench(args)
        return commands[args.command](args)
    except PyEngineError as e:
        stderr.print(f"error: {e.one_line()}", markup=False, highlight=False)
        if getattr(args, "json", False):  # tools reading stdout get the failure too
            print(
                json.dumps(
                    {
                        "kind": "error",
                        "subject": e.subject,
                        "reason": e.reason,
                        "exit_code": e.exit_code,
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        return e.exit_code
    except OSError as e:  # a path given on the command line that cannot be used
        subject = e.filename if e.filename is not None else args.command
        stderr.print(f"error: {subject}: {e.strerror or e}", markup=False, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.print("interrupted: run the same command (or `pyengine resume JOB`) to go on")
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
