"""How a running copy is shown: a rich progress bar (or one JSON event per line), then the
summary lines. Used by `pyengine copy` and `pyengine resume` (cli/copy.py).
"""

from __future__ import annotations

import json
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from pyengine.cli.common import human_bytes, stderr
from pyengine.engine.report import CopyReport, Event


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
        elif ev.kind == "file_planned" and not ev.extra.get("up_to_date"):
            self.progress.console.print(Text(f"would copy: {ev.path} -> {ev.blob}"))
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
            lines = _dry_run_lines(report)
        else:
            rate = report.bytes_copied / report.elapsed_s / 1e6 if report.elapsed_s else 0.0
            lines = [
                f"job {report.job_id}: copied {report.files_copied} files "
                f"({human_bytes(report.bytes_copied)}), skipped {report.files_skipped} "
                f"({human_bytes(report.bytes_skipped)}), failed {report.files_failed}, "
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
            if report.foreign_blocks_discarded:
                lines.append(
                    f"{report.foreign_blocks_discarded} files had another tool's uncommitted "
                    "blocks on their blob: discarded, and the file sent again from its start"
                )
            if report.files_pending_finalize:
                lines.append(
                    f"{report.files_pending_finalize} files have properties pending for finalize "
                    "(the destination cannot store them: see `pyengine finalize`)"
                )
            if report.manifest_path:
                lines.append(f"manifest: {report.manifest_path}")
        lines.extend(_deletion_lines(report))
        for line in lines:
            stderr.print(line, markup=False, highlight=False)


def _dry_run_lines(report: CopyReport) -> list[str]:
    """The categories a real run would report, each file once: to copy, up to date, refused."""
    lines = []
    if report.container_to_create:
        lines.append(
            f"dry run: container {report.container_to_create} does not exist; a real run with "
            "--create-container would create it"
        )
    lines.append(
        f"dry run: {report.files_to_copy} files ({human_bytes(report.bytes_to_copy)}) would be "
        f"copied, {report.files_up_to_date} ({human_bytes(report.bytes_up_to_date)}) are up to "
        f"date, {report.files_failed} would fail (reasons above); nothing was changed"
    )
    if report.files_resent_for_encryption:
        lines.append(
            f"dry run: {report.files_resent_for_encryption} of the files to copy are stored in "
            "another encryption mode or under a KEK this run cannot unwrap"
        )
    if report.files_rewrapped:
        lines.append(
            f"dry run: {report.files_rewrapped} of the up-to-date blobs would have their content "
            "key re-wrapped under the current KEK"
        )
    return lines


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
