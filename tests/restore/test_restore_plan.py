"""Restore planning: hostile blob names are refused one by one; ranges follow upload's blocks."""

from __future__ import annotations

import pytest

from pyengine.engine.restore.plan import (
    UnsafeNameError,
    check_name,
    find_kind_clashes,
    layout_for,
    meta,
    part_name,
    plain_size_of,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("../evil", "'..' segment"),
        ("a/../../evil", "'..' segment"),
        ("a/./b", "'.' segment"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("", "empty name"),
        ("..\\evil", "backslash"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character U+000A"),
        ("a\x85b", "control character U+0085"),
        ("a\ud800b", "lone surrogate"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8, 128 characters
    ],
)
def test_hostile_names_are_refused_with_a_one_line_reason(name, reason):
    with pytest.raises(UnsafeNameError) as info:
        check_name(name)
    assert reason in info.value.reason
    assert "\n" not in info.value.one_line()


def test_a_path_past_path_max_is_refused():
    name = "/".join(["d" * 200] * 21)  # 4220 bytes
    with pytest.raises(UnsafeNameError, match="path longer than 4096"):
        check_name(name)


def test_ordinary_and_unicode_names_are_accepted_as_their_segments():
    assert check_name("2026/study 1/ü é.dcm") == ["2026", "study 1", "ü é.dcm"]
    assert check_name("x" * 255) == ["x" * 255]
    assert check_name("..a/b..") == ["..a", "b.."]


def test_a_name_that_is_both_file_and_directory_fails_its_file_side():
    clashes = find_kind_clashes(["a", "a/b", "c/d", "c/d/e", "f"])
    assert set(clashes) == {"a", "c/d"}


def test_long_leaf_gets_a_digest_temporary_name_within_name_max():
    assert part_name("x.dcm") == ".x.dcm.pyengine-part"
    long_leaf = "y" * 250
    name = part_name(long_leaf)
    assert len(name.encode()) <= 255 and name.startswith(".pyengine-")
    assert part_name(long_leaf) == name and part_name("z" * 250) != name


@pytest.mark.parametrize(
    ("plain", "encrypted", "range_bytes", "count"),
    [
        (0, False, 8 * MiB, 0),
        (1, True, 8 * MiB, 1),
        (8 * MiB, False, 8 * MiB, 1),
        (8 * MiB + 1, True, 8 * MiB, 2),
        (40 * MiB, False, 8 * MiB, 5),
        (8 * MiB * 50_000 + 1, False, 16 * MiB, 25_001),
    ],
)
def test_ranges_are_the_block_size_upload_would_choose(plain, encrypted, range_bytes, count):
    regions = -(-plain // (4 * MiB))
    stored = plain + 28 * regions if encrypted else plain
    layout = layout_for(stored, encrypted=encrypted, min_range_bytes=8 * MiB)
    assert (layout.plain_bytes, layout.range_bytes, layout.count) == (plain, range_bytes, count)
    if count:
        last_offset, last_len = layout.stored_span(count - 1)
        assert last_offset + last_len == stored


def test_plain_size_of_an_encrypted_blob_removes_28_bytes_per_region():
    assert plain_size_of(0, True) == 0
    assert plain_size_of(29, True) == 1
    assert plain_size_of(4 * MiB + 28, True) == 4 * MiB
    assert plain_size_of(4 * MiB + 28 + 29, True) == 4 * MiB + 1


def test_metadata_is_read_in_both_spellings():
    assert meta({"pyengine_size": "5"}, "pyenginesize", "pyengine_size") == "5"
    assert meta({"PyEngineSize": "6"}, "pyenginesize", "pyengine_size") == "6"
    assert meta({}, "pyenginesize") is None
