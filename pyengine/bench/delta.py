"""``pyengine bench delta``: how fast a re-run finds an unchanged tree unchanged (issue 11 item 4,
the online delta: one streamed List Blobs merge-joined with the scan, no HEAD per file).

Two figures:
- against the discard sink (:mod:`pyengine.bench.sink`), which serves a pre-generated listing of
  the tree from files (nginx, no Python on its side): what our side costs per file (target
  ≥ 20,000 files/s on 2 cores, 100,000 files);
- against Azurite, on a smaller tree copied there first: the same re-run with a real listing
  (Azurite's own cost included; it is the slower side there).

The tree is tiny files (the delta's cost is per file, not per byte) in a DICOM-like layout:
study / series / instance, 100 instances a series.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pyengine
from pyengine import CopyOptions
from pyengine.bench.sink import DiscardSink, listing_marker
from pyengine.engine import metadata_names as mn
from pyengine.engine.scan import SourceFile, scan

#: the issue's target for the re-check of an unchanged tree against the sink, on 2 cores
TARGET_FILES_PER_S = 20_000
#: List Blobs' largest page (and the one pyengine asks for)
PAGE_BLOBS = 5000


@dataclass
class DeltaRun:
    where: str  # "sink" or "azurite"
    files: int
    seconds: float
    files_skipped: int
    files_copied: int
    #: requests the destination saw during the re-run (the sink's access log; None: not counted)
    requests: int | None = None

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DeltaResult:
    runs: list[DeltaRun]
    #: the top of a cProfile of the sink run, when asked for
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [{**asdict(r), "files_per_s": round(r.files_per_s)} for r in self.runs],
            "target_files_per_s": TARGET_FILES_PER_S,
            "profile": self.profile,
        }


def write_tree(root: Path, count: int) -> None:
    """``count`` files of a few bytes: study s<k>/series e<k>/instance i<k>.dcm."""
    for i in range(count):
        d = root / f"s{i // 10_000:04d}" / f"e{(i // 100) % 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"i{i:07d}.dcm").write_bytes(b"%d" % i)


def _entry_xml(src: SourceFile, prefix: str) -> str:
    # what a committed pyengine blob carries (engine/plan.py blob_metadata): the up-to-date
    # check reads size, mtime, ctime and the digest; the rest is there for a realistic page size
    meta = {
        mn.SIZE: str(src.size_bytes),
        mn.MTIME_NS: str(src.mtime_ns),
        mn.CTIME_NS: str(src.ctime_ns),
        mn.BLAKE3: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        mn.UPLOAD_ID: "0123456789abcdef0123456789abcdef",
        mn.JOB_ID: "20260101-0000-bench",
    }
    meta_xml = "".join(f"<{k}>{v}</{k}>" for k, v in meta.items())
    return (
        f"<Blob><Name>{escape(prefix + src.rel_path)}</Name><Properties>"
        f"<Content-Length>{src.size_bytes}</Content-Length><Etag>0x8DC0000000000000</Etag>"
        "<BlobType>BlockBlob</BlobType></Properties>"
        f"<Metadata>{meta_xml}</Metadata></Blob>"
    )


def listing_pages(root: Path, prefix: str = "") -> Iterator[bytes]:
    """List Blobs pages (5000 blobs, with metadata) of ``root`` as pyengine would have stored
    it, in listing order (the scan's), each naming the sink's marker of the next."""
    entries: list[str] = []
    pages = 0

    def page(last: bool) -> bytes:
        nxt = "" if last else listing_marker(pages + 1)
        return (
            '<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>'
            + "".join(entries)
            + f"</Blobs><NextMarker>{nxt}</NextMarker></EnumerationResults>"
        ).encode()

    for item in scan(str(root)):
        if isinstance(item, SourceFile):
            if len(entries) == PAGE_BLOBS:
                yield page(last=False)
                pages += 1
                entries = []
            entries.append(_entry_xml(item, prefix))
    yield page(last=True)


async def _rerun(src: Path, url: str, conn: str, tmp: Path, tag: str) -> tuple[float, Any]:
    opts = CopyOptions(
        connection_string=conn,
        journal_path=str(tmp / f"journal-{tag}.sqlite"),
        manifest_path=str(tmp / f"manifest-{tag}.jsonl"),
    )
    start = time.perf_counter()
    report = await pyengine.copy(src, url, opts)
    return time.perf_counter() - start, report


async def run_delta(
    *,
    files: int = 100_000,
    azurite_files: int = 10_000,
    workdir: str | None = None,
    profile: bool = False,
    on_progress: Callable[[str], None] = lambda _: None,
) -> DeltaResult:
    """Re-check an unchanged ``files``-file tree against the sink, and an ``azurite_files``-file
    tree against Azurite (0 skips either)."""
    base = Path(tempfile.mkdtemp(prefix="pyengine-delta-", dir=workdir or "/dev/shm"))
    runs: list[DeltaRun] = []
    profile_text = None
    try:
        if files:
            src = base / "tree"
            on_progress(f"writing {files} files under {src}")
            write_tree(src, files)
            async with DiscardSink() as sink:
                pages = sink.serve_listing(listing_pages(src))
                on_progress(f"sink serves {pages} listing pages; re-checking")
                sink.reset_counts()
                prof = cProfile.Profile() if profile else None
                if prof is not None:
                    prof.enable()
                seconds, report = await _rerun(src, sink.url, sink.connection_string, base, "sink")
                if prof is not None:
                    prof.disable()
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
                    profile_text = out.getvalue()
                count = await sink.acounted()
            runs.append(
                DeltaRun(
                    "sink",
                    files,
                    seconds,
                    report.files_skipped,
                    report.files_copied,
                    count.requests,
                )
            )
            shutil.rmtree(src, ignore_errors=True)
        if azurite_files:
            runs.append(await _azurite_run(base, azurite_files, on_progress))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return DeltaResult(runs, profile_text)


async def _azurite_run(base: Path, count: int, on_progress: Callable[[str], None]) -> DeltaRun:
    from pyengine.targets.azurite import Azurite

    src = base / "small-tree"
    write_tree(src, count)
    with Azurite(base / "azurite") as az:
        url = f"{az.account_url}/delta"
        opts = CopyOptions(
            connection_string=az.connection_string,
            create_container=True,
            journal_path=str(base / "journal-first.sqlite"),
            manifest_path=str(base / "manifest-first.jsonl"),
        )
        on_progress(f"copying {count} files to Azurite")
        first = await pyengine.copy(src, url, opts)
        if first.files_copied != count:
            on_progress(f"first copy: {first.files_copied} of {count} copied")
        on_progress("re-checking against Azurite")
        seconds, report = await _rerun(src, url, az.connection_string, base, "azurite")
    return DeltaRun("azurite", count, seconds, report.files_skipped, report.files_copied)


def print_delta(result: DeltaResult, console: Any) -> None:
    from rich.table import Table

    table = Table(title="re-check of an unchanged tree (online delta)")
    for col in ("against", "files", "seconds", "files/s", "skipped", "copied", "requests"):
        table.add_column(col, justify="right")
    for r in result.runs:
        table.add_row(
            r.where,
            str(r.files),
            f"{r.seconds:.2f}",
            f"{r.files_per_s:,.0f}",
            str(r.files_skipped),
            str(r.files_copied),
            "-" if r.requests is None else str(r.requests),
        )
    console.print(table)
    console.print(f"target against the sink: ≥ {TARGET_FILES_PER_S:,} files/s")
    if result.profile:
        console.print(result.profile, markup=False, highlight=False)


__all__ = ["DeltaResult", "DeltaRun", "listing_pages", "print_delta", "run_delta", "write_tree"]
