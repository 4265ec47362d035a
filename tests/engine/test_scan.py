"""pyengine.engine.scan: streaming scan, problems, filters; and the DICOM demo tree generator."""

from __future__ import annotations

import os
import socket
import sys
import tracemalloc
from pathlib import Path

import pytest

from pyengine.bench.dicom_tree import make_tree
from pyengine.engine.scan import ScanProblem, SourceFile, restat, scan
from pyengine.errors import SourceError

ROOT_USER = os.geteuid() == 0


def files(root, **filters) -> list[str]:
    return [e.rel_path for e in scan(str(root), **filters) if isinstance(e, SourceFile)]


def problems(root, **filters) -> dict[str, str]:
    return {e.rel_path: e.reason for e in scan(str(root), **filters) if isinstance(e, ScanProblem)}


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- files -------------------------------------------------------------------------------------


def test_nested_files_come_sorted_with_posix_relative_paths(tmp_path):
    for rel in ["b/2.dcm", "a/z/1.dcm", "a/y.dcm", "c.dcm", "a/z/0.dcm"]:
        touch(tmp_path / rel, b"x")
    assert files(tmp_path) == ["a/y.dcm", "a/z/0.dcm", "a/z/1.dcm", "b/2.dcm", "c.dcm"]


def test_source_file_carries_absolute_path_size_mtime_ctime_and_identity(tmp_path):
    path = touch(tmp_path / "d" / "f.dcm", b"12345")
    (entry,) = scan(str(tmp_path))
    st = path.stat()
    assert entry == SourceFile(
        path=str(path),
        rel_path="d/f.dcm",
        size_bytes=5,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        ctime_ns=st.st_ctime_ns,
    )


def test_restat_takes_the_file_as_it_is_now_or_says_why_not(tmp_path):
    path = touch(tmp_path / "f.dcm", b"12345")
    (entry,) = scan(str(tmp_path))
    path.write_bytes(b"1234567")
    st = path.stat()
    now = restat(entry)
    assert isinstance(now, SourceFile)
    assert (now.rel_path, now.size_bytes, now.ctime_ns) == ("f.dcm", 7, st.st_ctime_ns)
    path.unlink()
    gone = restat(entry)
    assert isinstance(gone, ScanProblem) and gone.reason == "no such file or directory"


def test_empty_file_is_a_source_file_of_zero_bytes(tmp_path):
    touch(tmp_path / "empty.dcm")
    (entry,) = scan(str(tmp_path))
    assert isinstance(entry, SourceFile) and entry.size_bytes == 0


def test_unicode_names_keep_their_characters(tmp_path):
    touch(tmp_path / "Ünïcødé" / "患者.dcm", b"x")
    assert files(tmp_path) == ["Ünïcødé/患者.dcm"]


def test_empty_directories_yield_nothing(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert list(scan(str(tmp_path))) == []


def test_single_file_root_yields_just_that_file(tmp_path):
    path = touch(tmp_path / "dir" / "one.dcm", b"abc")
    touch(tmp_path / "dir" / "other.dcm")
    (entry,) = scan(str(path))
    assert (entry.path, entry.rel_path, entry.size_bytes) == (str(path), "one.dcm", 3)


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    touch(tmp_path / "src" / "f.dcm")
    monkeypatch.chdir(tmp_path)
    (entry,) = scan("src")
    assert entry.path == str(tmp_path / "src" / "f.dcm")


def test_missing_root_cannot_start_the_job(tmp_path):
    with pytest.raises(SourceError) as info:
        list(scan(str(tmp_path / "absent")))
    assert info.value.one_line() == f"{tmp_path / 'absent'}: no such file or directory"


def test_fifo_root_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SourceError, match=r"not a regular file \(FIFO\)"):
        list(scan(str(tmp_path / "pipe")))


# --- problems ----------------------------------------------------------------------------------


def test_fifo_is_reported_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    touch(tmp_path / "z.dcm")
    assert problems(tmp_path) == {"pipe": "not a regular file (FIFO)"}
    assert files(tmp_path) == ["z.dcm"]


def test_socket_is_reported(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp_path / "sock"))
        assert problems(tmp_path) == {"sock": "not a regular file (socket)"}
    finally:
        sock.close()


def test_device_is_reported(tmp_path):
    os.symlink("/dev/null", tmp_path / "null")
    assert problems(tmp_path) == {"null": "not a regular file (device)"}


def test_symlink_to_file_is_followed(tmp_path):
    touch(tmp_path / "data" / "real.dcm", b"1234")
    os.symlink("data/real.dcm", tmp_path / "link.dcm")
    entries = {e.rel_path: e for e in scan(str(tmp_path))}
    assert entries["link.dcm"].size_bytes == 4
    assert entries["link.dcm"].inode == entries["data/real.dcm"].inode
    assert entries["link.dcm"].path == str(tmp_path / "link.dcm")


def test_symlinked_directory_is_followed(tmp_path):
    touch(tmp_path / "real" / "f.dcm")
    os.symlink("real", tmp_path / "alias")
    assert files(tmp_path) == ["alias/f.dcm", "real/f.dcm"]


def test_directory_symlink_to_its_parent_is_a_loop_reported_once(tmp_path):
    touch(tmp_path / "a" / "f.dcm")
    os.symlink("..", tmp_path / "a" / "up")
    assert problems(tmp_path) == {"a/up": "symlink loop"}
    assert files(tmp_path) == ["a/f.dcm"]


def test_self_referential_symlink_is_a_loop(tmp_path):
    os.symlink("self", tmp_path / "self")
    assert problems(tmp_path) == {"self": "symlink loop"}


def test_dangling_symlink_is_reported(tmp_path):
    os.symlink("nowhere", tmp_path / "dangling")
    assert problems(tmp_path) == {"dangling": "dangling symlink"}


@pytest.mark.skipif(ROOT_USER, reason="root reads directories whatever their mode")
def test_unreadable_directory_is_reported_and_the_scan_goes_on(tmp_path):
    touch(tmp_path / "locked" / "hidden.dcm")
    touch(tmp_path / "open" / "seen.dcm")
    (tmp_path / "locked").chmod(0)
    try:
        assert problems(tmp_path) == {"locked": "permission denied"}
        assert files(tmp_path) == ["open/seen.dcm"]
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes")
def test_name_that_is_not_utf8_is_reported_printably(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/bad\xff.dcm"
    with open(raw, "wb"):
        pass
    (entry,) = scan(str(tmp_path))
    assert entry == ScanProblem(
        path=f"{tmp_path}/bad\\xff.dcm",
        rel_path="bad\\xff.dcm",
        reason="file name is not valid UTF-8",
    )


def test_file_vanishing_after_listing_is_reported(tmp_path):
    touch(tmp_path / "a.dcm")
    touch(tmp_path / "b.dcm")
    it = scan(str(tmp_path))
    assert next(it).rel_path == "a.dcm"
    os.unlink(tmp_path / "b.dcm")  # already listed: the scan is lazy, so it meets the gap
    assert list(it) == [ScanProblem(str(tmp_path / "b.dcm"), "b.dcm", "no such file or directory")]


# --- filters -----------------------------------------------------------------------------------


@pytest.fixture
def filter_tree(tmp_path):
    for rel in [
        "p1/s1/a.dcm",
        "p1/s1/a.tmp",
        "p1/notes.txt",
        "p2/deep/er/b.dcm",
        "top.dcm",
        "skip/c.dcm",
    ]:
        touch(tmp_path / rel)
    return tmp_path


def test_basename_pattern_matches_at_any_depth(filter_tree):
    assert files(filter_tree, include=["*.dcm"]) == [
        "p1/s1/a.dcm",
        "p2/deep/er/b.dcm",
        "skip/c.dcm",
        "top.dcm",
    ]


def test_single_star_does_not_cross_directories(filter_tree):
    assert files(filter_tree, include=["p1/*"]) == ["p1/notes.txt"]


def test_double_star_spans_directories(filter_tree):
    assert files(filter_tree, include=["p2/**"]) == ["p2/deep/er/b.dcm"]
    assert files(filter_tree, include=["**/s1/*.dcm"]) == ["p1/s1/a.dcm"]


def test_double_star_slash_also_matches_no_directory(filter_tree):
    assert files(filter_tree, include=["**/top.dcm"]) == ["top.dcm"]


def test_exclude_wins_over_include(filter_tree):
    got = files(filter_tree, include=["*.dcm", "*.txt"], exclude=["p2/**", "notes.*"])
    assert got == ["p1/s1/a.dcm", "skip/c.dcm", "top.dcm"]


def test_character_classes_work_as_in_fnmatch(filter_tree):
    assert files(filter_tree, include=["[pt]*.dcm"], exclude=["[!t]*"]) == ["top.dcm"]


def test_excluded_entries_are_not_reported_as_problems(tmp_path):
    os.mkfifo(tmp_path / "pipe.tmp")
    assert problems(tmp_path, exclude=["*.tmp"]) == {}


def test_excluded_directory_is_not_even_listed(tmp_path):
    touch(tmp_path / "keep" / "f.dcm")
    (tmp_path / "skip").mkdir()
    os.symlink("..", tmp_path / "skip" / "up")
    # a listed "skip" would report its loop; an excluded one is never entered
    assert problems(tmp_path) == {"skip/up": "symlink loop"}
    assert problems(tmp_path, exclude=["skip/**"]) == {}
    assert files(tmp_path, exclude=["skip/**"]) == ["keep/f.dcm"]


def test_filters_apply_to_a_single_file_root(filter_tree):
    assert files(filter_tree / "top.dcm", exclude=["*.dcm"]) == []
    assert files(filter_tree / "top.dcm", include=["top.*"]) == ["top.dcm"]


# --- streaming ---------------------------------------------------------------------------------


def test_scan_memory_does_not_grow_with_the_tree(tmp_path):
    # 40 directories × 60 files: holding every entry would take ~800 kB (measured); the scan
    # keeps only the names of the directories on its current path (~20 kB peak).
    for d in range(40):
        sub = tmp_path / f"d{d:02d}"
        sub.mkdir()
        for f in range(60):
            (sub / f"{f:03d}.dcm").touch()
    tracemalloc.start()
    try:
        count = 0
        for entry in scan(str(tmp_path)):
            count += isinstance(entry, SourceFile)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2400
    assert peak_bytes < 200_000


# --- the DICOM demo tree -----------------------------------------------------------------------


def test_dicom_tree_holds_valid_part10_files_in_patient_study_series_layout(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    totals = make_tree(str(tmp_path), 5_000_000, seed=7)
    entries = list(scan(str(tmp_path)))
    assert all(isinstance(e, SourceFile) for e in entries)
    assert len(entries) == totals.files >= 2
    assert sum(e.size_bytes for e in entries) == totals.size_bytes >= 5_000_000
    for entry in entries:
        ds = pydicom.dcmread(entry.path)  # raises unless there is a Part-10 preamble + meta
        expected = f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}"
        assert entry.rel_path == f"{expected}/{ds.SOPInstanceUID}.dcm"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        frames = int(ds.get("NumberOfFrames", 1))
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2 * frames


def test_dicom_tree_is_deterministic_for_a_seed(tmp_path):
    make_tree(str(tmp_path / "one"), 3_000_000, seed=3)
    make_tree(str(tmp_path / "two"), 3_000_000, seed=3)
    one = [(e.rel_path, Path(e.path).read_bytes()) for e in scan(str(tmp_path / "one"))]
    two = [(e.rel_path, Path(e.path).read_bytes()) for e in scan(str(tmp_path / "two"))]
    assert one == two
