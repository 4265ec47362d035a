"""The online delta's unchanged files taken a batch at a time (engine/unchanged.py): the journal
rows, counts and manifest entries the per-file path would leave, and every file it cannot decide
handed back to that path. A real journal in a temporary directory; no destination is contacted
(the listing entries are built here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pyengine import CopyOptions
from pyengine.engine import metadata_names as mn
from pyengine.engine.context import JobContext
from pyengine.engine.delta import ListedBlob
from pyengine.engine.plan import read_plan
from pyengine.engine.scan import SourceFile
from pyengine.engine.unchanged import WHY, record_unchanged, takes
from pyengine.state.journal import Journal
from pyengine.targets.open import destination

PROFILE = SimpleNamespace(max_name_chars=1024, max_block_bytes=4000 << 20, max_blob_bytes=1 << 50)


def _src(rel_path: str, size: int = 10) -> SourceFile:
    return SourceFile(
        path="/src/" + rel_path,
        rel_path=rel_path,
        size_bytes=size,
        mtime_ns=1_700_000_000_123_456_789,
        ctime_ns=1_700_000_001_000_000_000,
        inode=hash(rel_path) & 0xFFFF,
        device=7,
    )


def _listed(src: SourceFile, **meta: str) -> ListedBlob:
    md = {
        mn.SIZE: str(src.size_bytes),
        mn.MTIME_NS: str(src.mtime_ns),
        mn.CTIME_NS: str(src.ctime_ns),
        mn.BLAKE3: "ab" * 32,
        mn.JOB_ID: "an-earlier-job",
        **meta,
    }
    return ListedBlob("pre/" + src.rel_path, src.size_bytes, '"0x8D"', md)


class _Manifest:
    def __init__(self) -> None:
        self.entries: list = []

    def add_many(self, entries) -> bool:
        self.entries.extend(entries)
        return False


@pytest.fixture
def ctx(tmp_path: Path):
    dest = destination("http://127.0.0.1:1/devstoreaccount1/cont/pre/")
    c = JobContext(source="/src", dest=dest, options=CopyOptions(), on_event=None)
    with Journal.open(tmp_path / "j.db") as journal:
        c.journal = journal
        c.report.job_id = journal.create_job("/src", dest.redacted(), {})
        c.manifest = _Manifest()  # type: ignore[assignment]
        yield c


def _row(journal: Journal, job_id: str, rel_path: str) -> tuple:
    journal.flush()
    r = journal.file_record(job_id, rel_path)
    assert r is not None
    fields = ("state", "error", "size_bytes", "mtime_ns", "ctime_ns", "inode", "device")
    fields += ("blob_name", "block_bytes", "encrypted", "acked_blocks")
    return tuple(getattr(r, f) for f in fields)


def test_batch_leaves_the_rows_counts_and_manifest_of_the_per_file_path(ctx):
    files = [_src(f"d/f{i}.dcm", size=i) for i in range(5)]
    left, _ = record_unchanged(ctx, PROFILE, [(f, _listed(f)) for f in files])
    assert left == []
    assert (ctx.report.files_skipped, ctx.report.bytes_skipped) == (5, sum(range(5)))
    # what begin_file + mark_skipped leave for the same file in the same job
    ref = _src("ref/f.dcm", size=3)
    chunk_bytes, _ = read_plan(
        3,
        single_put_max_bytes=ctx.options.single_put_max_bytes,
        block_bytes=ctx.options.block_bytes,
        encrypt=False,
        path=ref.rel_path,
    )
    rec = ctx.journal.begin_file(
        ctx.report.job_id,
        ref.rel_path,
        size_bytes=3,
        mtime_ns=ref.mtime_ns,
        ctime_ns=ref.ctime_ns,
        inode=ref.inode,
        device=ref.device,
        blob_name="pre/" + ref.rel_path,
        block_bytes=chunk_bytes,
        encrypted=False,
    )
    ctx.journal.mark_skipped(rec.file_id, WHY)
    batch_row = _row(ctx.journal, ctx.report.job_id, "d/f3.dcm")
    ref_row = _row(ctx.journal, ctx.report.job_id, ref.rel_path)
    f3 = files[3]
    expected = ["skipped", WHY, 3, f3.mtime_ns, f3.ctime_ns, f3.inode, 7, "pre/d/f3.dcm"]
    assert batch_row == (*expected, chunk_bytes, False, {})
    assert batch_row[:2] + batch_row[8:] == ref_row[:2] + ref_row[8:]
    summary = ctx.journal.summary(ctx.report.job_id)
    assert (summary.files_skipped, summary.bytes_skipped) == (6, sum(range(5)) + 3)
    lines = ctx.manifest.entries
    assert [e.path for e in lines] == [f.rel_path for f in files]
    e = lines[2]
    assert (e.status, e.size_bytes, e.blake3, e.etag, e.error) == (
        "skipped",
        2,
        "ab" * 32,
        '"0x8D"',
        None,
    )
    assert e.blob_url == "http://127.0.0.1:1/devstoreaccount1/cont/pre/d/f2.dcm"


def test_a_path_already_begun_and_a_refused_name_go_back_to_the_per_file_path(ctx):
    begun, long_name, fine = _src("a/begun"), _src("a/" + "x" * 40), _src("a/fine")
    ctx.journal.begin_file(
        ctx.report.job_id,
        begun.rel_path,
        size_bytes=begun.size_bytes,
        mtime_ns=begun.mtime_ns,
        inode=begun.inode,
        device=begun.device,
        blob_name="pre/a/begun",
        block_bytes=4 << 20,
        encrypted=False,
    )
    short = SimpleNamespace(**{**vars(PROFILE), "max_name_chars": 30})
    pairs = [(f, _listed(f)) for f in (begun, long_name, fine)]
    left, _ = record_unchanged(ctx, short, pairs)
    assert [f.rel_path for f, _ in left] == [long_name.rel_path, begun.rel_path]
    assert ctx.report.files_skipped == 1
    assert [e.path for e in ctx.manifest.entries] == ["a/fine"]
    ctx.journal.flush()
    assert ctx.journal.file_record(ctx.report.job_id, long_name.rel_path) is None
    assert ctx.journal.file_record(ctx.report.job_id, begun.rel_path).state == "planned"


def test_only_plain_blobs_of_other_jobs_in_a_new_metadata_checked_run_are_taken(ctx):
    f = _src("x")
    assert takes(ctx, _listed(f))
    assert not takes(ctx, _listed(f, encryptiondata="{}"))  # the KEK check needs a key unwrap
    assert not takes(ctx, _listed(f, **{mn.JOB_ID: ctx.report.job_id}))  # a commit it missed
    ctx.resumed = True
    assert not takes(ctx, _listed(f))
    ctx.resumed = False
    for opts in (CopyOptions(check="hash"), CopyOptions(encrypt=True)):
        ctx.options = opts
        assert not takes(ctx, _listed(f))


def test_a_job_this_journal_did_not_create_takes_nothing(tmp_path, ctx):
    with Journal.open(tmp_path / "j.db") as other:  # another process's view of the same job
        ctx.journal = other
        pairs = [(_src("q"), _listed(_src("q")))]
        left, _ = record_unchanged(ctx, PROFILE, pairs)
    assert left == pairs and ctx.report.files_skipped == 0
