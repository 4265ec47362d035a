"""pyengine.engine.plan: block sizes, blob names, block IDs, encrypted sizes, metadata."""

from __future__ import annotations

import base64
import re

import pytest
from azure.storage.blob import _encryption as sdk
from hypothesis import given
from hypothesis import strategies as st

from pyengine.crypto import keyed_digest_hex
from pyengine.engine.plan import (
    blob_metadata,
    blob_name,
    block_id,
    check_block_bytes,
    choose_block_bytes,
    encrypted_bytes,
    new_upload_id,
    parse_block_id,
    read_plan,
)
from pyengine.errors import ConfigError, SourceError
from pyengine.options import MAX_BLOCK_BYTES, MAX_BLOCKS_PER_BLOB, MiB

GiB = 1024 * MiB
TiB = 1024 * GiB
MAX_BLOB_BYTES = 2 * GiB * MAX_BLOCKS_PER_BLOB  # 100 TiB (2000 GiB blocks would not be 2^n)


# --- choose_block_bytes ------------------------------------------------------------------------


def test_small_file_gets_the_minimum_block():
    assert choose_block_bytes(0) == 8 * MiB
    assert choose_block_bytes(1) == 8 * MiB


def test_block_doubles_just_past_fifty_thousand_minimum_blocks():
    assert choose_block_bytes(MAX_BLOCKS_PER_BLOB * 8 * MiB) == 8 * MiB
    assert choose_block_bytes(MAX_BLOCKS_PER_BLOB * 8 * MiB + 1) == 16 * MiB


def test_minimum_that_is_not_a_power_of_two_rounds_up():
    assert choose_block_bytes(10, min_block_bytes=5 * MiB) == 8 * MiB


def test_encrypting_raises_the_block_to_a_whole_region():
    assert choose_block_bytes(10, min_block_bytes=1 * MiB) == 1 * MiB
    assert choose_block_bytes(10, min_block_bytes=1 * MiB, encrypt=True) == 4 * MiB


def test_largest_blob_uses_two_gib_blocks():
    assert choose_block_bytes(MAX_BLOB_BYTES) == 2 * GiB
    assert 2 * GiB <= MAX_BLOCK_BYTES < 4 * GiB


def test_file_over_one_hundred_tib_is_refused_with_its_path():
    with pytest.raises(SourceError) as info:
        choose_block_bytes(MAX_BLOB_BYTES + 1, path="/data/huge.raw")
    assert info.value.subject == "/data/huge.raw"
    assert "file too large" in info.value.reason


def test_negative_size_is_a_programming_error():
    with pytest.raises(ValueError):
        choose_block_bytes(-1)


@given(
    size_bytes=st.integers(min_value=0, max_value=200 * TiB),
    min_exp=st.integers(min_value=16, max_value=28),
    encrypt=st.booleans(),
)
def test_chosen_block_is_the_smallest_power_of_two_that_fits(size_bytes, min_exp, encrypt):
    min_block_bytes = 1 << min_exp
    floor_bytes = max(min_block_bytes, 4 * MiB) if encrypt else min_block_bytes
    if size_bytes > MAX_BLOB_BYTES:
        with pytest.raises(SourceError):
            choose_block_bytes(size_bytes, min_block_bytes=min_block_bytes, encrypt=encrypt)
        return
    block = choose_block_bytes(size_bytes, min_block_bytes=min_block_bytes, encrypt=encrypt)
    assert block & (block - 1) == 0
    assert floor_bytes <= block <= MAX_BLOCK_BYTES
    assert -(-size_bytes // block) <= MAX_BLOCKS_PER_BLOB
    # minimal: half the block is below the floor or would need too many blocks
    assert block // 2 < floor_bytes or -(-size_bytes // (block // 2)) > MAX_BLOCKS_PER_BLOB


# --- blob_name ---------------------------------------------------------------------------------


def test_blob_name_joins_prefix_and_relative_path():
    assert blob_name("archive/", "Ünïcødé/患者.dcm") == "archive/Ünïcødé/患者.dcm"
    assert blob_name("", "a/b.dcm") == "a/b.dcm"


def test_blob_name_of_exactly_max_len_is_accepted():
    assert len(blob_name("p/", "x" * 1022)) == 1024


@pytest.mark.parametrize(
    ("rel_path", "needle"),
    [
        ("x" * 1025, "too long"),
        ("a//b", "empty path segment"),
        ("a/./b", "'.' path segment"),
        ("../b", "'..' path segment"),
        ("a/b.", "must not end"),
        ("a/b/", "must not end"),
        ("/".join(["d"] * 255), "path segments"),
        ("", "empty blob name"),
    ],
)
def test_blob_name_rejects_names_azure_refuses_or_rewrites(rel_path, needle):
    with pytest.raises(SourceError) as info:
        blob_name("", rel_path)
    assert needle in info.value.reason
    assert "\n" not in str(info.value)


def test_blob_name_limit_is_a_parameter_for_data_box():
    blob_name("", "x" * 880, max_len=880)
    with pytest.raises(SourceError, match="881 characters > 880"):
        blob_name("", "x" * 881, max_len=880)


def test_blob_name_counts_characters_not_bytes():
    assert blob_name("", "患" * 1024) == "患" * 1024


def test_blob_name_rejects_undecodable_file_names_printably():
    with pytest.raises(SourceError) as info:
        blob_name("", "a/\udcffb.dcm")
    assert info.value.subject == "a/\\xffb.dcm"
    info.value.one_line().encode("utf-8")  # printable: no lone surrogates


def test_blob_name_prefix_must_end_with_a_slash():
    with pytest.raises(ValueError):
        blob_name("archive", "a.dcm")


# --- block IDs ---------------------------------------------------------------------------------


def test_upload_ids_are_32_hex_and_fresh():
    ids = {new_upload_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_block_ids_of_one_upload_have_equal_length():
    upload_id = new_upload_id()
    lengths = {len(block_id(upload_id, i)) for i in (0, 1, 9, 10, 999, 1000, 49_999)}
    assert lengths == {52}


def test_block_id_is_base64_of_upload_id_and_six_digit_index():
    upload_id = "0123456789abcdef0123456789abcdef"
    raw = base64.b64decode(block_id(upload_id, 42))
    assert raw == b"0123456789abcdef0123456789abcdef-000042"


@given(index=st.integers(min_value=0, max_value=MAX_BLOCKS_PER_BLOB - 1))
def test_block_id_round_trips(index):
    upload_id = "fedcba9876543210fedcba9876543210"
    assert parse_block_id(block_id(upload_id, index)) == (upload_id, index)


@pytest.mark.parametrize(
    "foreign",
    [
        "",
        "not base64!",
        base64.b64encode(b"block-000001").decode(),
        base64.b64encode(b"0123456789ABCDEF0123456789ABCDEF-000001").decode(),  # upper hex
        base64.b64encode(b"0123456789abcdef0123456789abcdef-1").decode(),  # short index
        base64.b64encode(bytes(range(39))).decode(),
        base64.b64encode(b"\xff" * 39).decode(),
    ],
)
def test_parse_block_id_returns_none_for_foreign_ids(foreign):
    assert parse_block_id(foreign) is None


def test_block_index_outside_the_blob_limit_is_refused():
    with pytest.raises(ValueError):
        block_id(new_upload_id(), MAX_BLOCKS_PER_BLOB)
    with pytest.raises(ValueError):
        block_id(new_upload_id(), -1)


def test_block_id_refuses_a_malformed_upload_id():
    with pytest.raises(ValueError):
        block_id("short", 0)


# --- encrypted sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "stored"),
    [
        (0, 0),
        (1, 29),
        (4 * MiB - 1, 4 * MiB - 1 + 28),
        (4 * MiB, 4 * MiB + 28),
        (4 * MiB + 1, 4 * MiB + 1 + 56),
    ],
)
def test_each_started_region_adds_28_bytes(plain, stored):
    assert encrypted_bytes(plain) == stored


@given(plain=st.integers(min_value=0, max_value=100 * TiB))
def test_encrypted_size_matches_the_sdk(plain):
    assert encrypted_bytes(plain) == sdk.get_adjusted_upload_size(plain, "2.0")


def test_sdk_writes_nothing_for_an_empty_encrypted_blob():
    from io import BytesIO

    assert sdk.GCMBlobEncryptionStream(bytes(32), BytesIO(b"")).read() == b""
    assert encrypted_bytes(0) == 0


# --- metadata ----------------------------------------------------------------------------------


def test_blob_metadata_names_are_letters_and_digits_only():
    metadata = blob_metadata(
        size_bytes=5,
        mtime_ns=1_700_000_000_123_456_789,
        blake3_hex="ab" * 32,
        upload_id="0" * 32,
        ctime_ns=17,
    )
    assert all(re.fullmatch(r"[A-Za-z0-9]+", k) for k in metadata)
    assert metadata == {
        "pyenginesize": "5",
        "pyenginemtimens": "1700000000123456789",
        "pyengineblake3": "ab" * 32,
        "pyengineuploadid": "0" * 32,
        "pyenginectimens": "17",
    }


def test_encrypted_blob_metadata_holds_a_keyed_digest_never_the_plaintext_blake3():
    key = bytes(range(32))
    metadata = blob_metadata(
        size_bytes=5,
        mtime_ns=1,
        blake3_hex="ab" * 32,
        upload_id="0" * 32,
        encryptiondata="{}",
        content_key=key,
    )
    assert "ab" * 32 not in metadata.values()
    assert "pyengineblake3" not in metadata
    assert metadata["pyenginekeyedblake3"] == keyed_digest_hex(key, "ab" * 32)
    assert metadata["encryptiondata"] == "{}"
    with pytest.raises(ValueError):
        blob_metadata(
            size_bytes=5, mtime_ns=1, blake3_hex="ab" * 32, upload_id="0" * 32, encryptiondata="{}"
        )


def test_blob_metadata_has_no_encryptiondata_when_not_encrypting():
    metadata = blob_metadata(size_bytes=0, mtime_ns=0, blake3_hex="", upload_id="0" * 32)
    assert "encryptiondata" not in metadata


def test_read_plan_reads_a_small_file_as_one_power_of_two_chunk_for_one_put_blob() -> None:
    plan = {"single_put_max_bytes": 4 * MiB, "block_bytes": None, "encrypt": False}
    assert read_plan(0, **plan) == (64 * 1024, True)
    assert read_plan(100_000, **plan) == (128 * 1024, True)
    # encrypted: at least one whole 4 MiB region
    assert read_plan(100_000, **{**plan, "encrypt": True}) == (4 * MiB, True)


def test_read_plan_sends_a_large_file_in_blocks_of_the_chosen_or_the_planned_size() -> None:
    plan = {"single_put_max_bytes": 4 * MiB, "block_bytes": None, "encrypt": False}
    assert read_plan(4 * MiB + 1, **plan) == (choose_block_bytes(4 * MiB + 1), False)
    assert read_plan(4 * MiB + 1, **{**plan, "block_bytes": 16 * MiB}) == (16 * MiB, False)
    with pytest.raises(SourceError):
        read_plan(MAX_BLOB_BYTES + 1, **plan, path="huge.dcm")


def test_a_chosen_block_size_is_one_the_core_reads_in() -> None:
    for fine, encrypt in ((None, True), (64 * 1024, False), (1 * MiB, False), (4 * MiB, True)):
        check_block_bytes(fine, encrypt=encrypt)
    for bad, encrypt in ((32 * 1024, False), (3 * MiB, False), (2 * MiB, True), (6 * MiB, True)):
        with pytest.raises(ConfigError) as e:
            check_block_bytes(bad, encrypt=encrypt)
        assert e.value.subject == "--block-size"
