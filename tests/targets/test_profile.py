"""Target profiles (pyengine.targets.profile): choosing Azure or Data Box, what a Data Box commit
keeps, and the plan-time limits each profile sets."""

from __future__ import annotations

import pytest

from pyengine.engine.plan import blob_name, read_plan
from pyengine.errors import ConfigError, SourceError
from pyengine.options import MiB
from pyengine.targets.profile import AZURE, DATABOX, choose_profile, fit_properties

TiB = 1024**4


@pytest.mark.parametrize(
    "host, expected",
    [
        ("myacct.blob.abc123def.microsoftdatabox.com", DATABOX),
        ("MYACCT.BLOB.SERIAL.MICROSOFTDATABOX.COM.", DATABOX),
        ("myacct.blob.core.windows.net", AZURE),
        ("127.0.0.1", AZURE),
        ("microsoftdatabox.com.evil.example", AZURE),
    ],
)
def test_profile_is_detected_from_the_host_name_suffix(host, expected):
    assert choose_profile(None, host) is expected


def test_an_explicit_target_wins_over_the_host_name():
    assert choose_profile("databox", "127.0.0.1") is DATABOX
    assert choose_profile("azure", "a.blob.x.microsoftdatabox.com") is AZURE
    with pytest.raises(ConfigError):
        choose_profile("s3", "127.0.0.1")


def test_databox_profile_holds_the_documented_limits():
    assert DATABOX.api_version == "2019-02-02"
    assert DATABOX.max_name_chars == 880
    assert DATABOX.max_block_bytes == 100 * MiB
    assert DATABOX.max_blob_bytes == 100 * MiB * 50_000  # 4.75 TiB


def test_databox_commit_drops_tags_tier_and_immutability_into_pending():
    headers = {
        "x-ms-blob-content-type": "application/dicom",
        "x-ms-immutability-policy-until-date": "Fri, 01 Jan 2100 00:00:00 GMT",
        "x-ms-immutability-policy-mode": "Unlocked",
        "x-ms-legal-hold": "true",
        "x-ms-blob-content-md5": "AAAAAAAAAAAAAAAAAAAAAA==",
    }
    tier, tags, kept, pending = fit_properties(DATABOX, "Cool", {"tenant": "t1"}, headers)
    assert (tier, tags) == (None, None)
    assert kept == {
        "x-ms-blob-content-type": "application/dicom",
        "x-ms-blob-content-md5": "AAAAAAAAAAAAAAAAAAAAAA==",
    }
    assert pending == {
        "tier": "Cool",
        "tags": {"tenant": "t1"},
        "immutability": {
            "x-ms-immutability-policy-until-date": "Fri, 01 Jan 2100 00:00:00 GMT",
            "x-ms-immutability-policy-mode": "Unlocked",
            "x-ms-legal-hold": "true",
        },
    }


def test_azure_commit_keeps_everything():
    headers = {"x-ms-legal-hold": "true"}
    assert fit_properties(AZURE, "Cool", {"a": "b"}, headers) == (
        "Cool",
        {"a": "b"},
        headers,
        {},
    )


def test_name_over_880_characters_is_refused_for_databox_only():
    rel = "d/" + "x" * 879  # 881 characters
    assert blob_name("", rel) == rel
    with pytest.raises(SourceError, match="881 characters > 880"):
        blob_name("", rel, max_len=DATABOX.max_name_chars)


def test_databox_blocks_stay_within_100_mib():
    chunk_bytes, single = read_plan(
        2 * TiB,
        single_put_max_bytes=8 * MiB,
        block_bytes=None,
        encrypt=True,
        max_block_bytes=DATABOX.max_block_bytes,
        max_blob_bytes=DATABOX.max_blob_bytes,
    )
    assert not single and chunk_bytes == 64 * MiB


def test_a_user_block_size_over_100_mib_fails_the_file_for_databox():
    with pytest.raises(SourceError, match=r"block size .* > 104857600 bytes"):
        read_plan(
            1024 * MiB,
            single_put_max_bytes=8 * MiB,
            block_bytes=128 * MiB,
            encrypt=False,
            path="big.dcm",
            max_block_bytes=DATABOX.max_block_bytes,
        )


def test_a_file_over_the_blob_limit_fails_at_plan_time():
    with pytest.raises(SourceError, match="file too large for the destination"):
        read_plan(
            5 * TiB,
            single_put_max_bytes=8 * MiB,
            block_bytes=None,
            encrypt=False,
            max_block_bytes=DATABOX.max_block_bytes,
            max_blob_bytes=DATABOX.max_blob_bytes,
        )
    # between 3.05 TiB (64 MiB power-of-two blocks) and 4.75 TiB: too large for a block plan
    with pytest.raises(SourceError, match="50000 blocks of at most 64 MiB"):
        read_plan(
            4 * TiB,
            single_put_max_bytes=8 * MiB,
            block_bytes=None,
            encrypt=False,
            max_block_bytes=DATABOX.max_block_bytes,
            max_blob_bytes=DATABOX.max_blob_bytes,
        )


def test_single_put_never_exceeds_the_largest_block():
    _, single = read_plan(
        200 * MiB,
        single_put_max_bytes=256 * MiB,
        block_bytes=None,
        encrypt=False,
        max_block_bytes=DATABOX.max_block_bytes,
    )
    assert not single
