"""The Content-Type rule (issue 16 item 5), pure: DICOM Part 10 by its magic, else the name's
extension from Python's built-in table, else application/octet-stream; an override wins."""

from __future__ import annotations

import pytest

from pyengine import CopyOptions
from pyengine.engine.content_type import check_content_type, content_type_for
from pyengine.errors import ConfigError

PART10_HEAD = bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + bytes(200)


@pytest.mark.parametrize("name", ["IM000001", "1.2.840.113619.2.55.3", "a/b/x.dcm", "scan.txt"])
def test_part10_files_are_application_dicom_whatever_their_name(name: str) -> None:
    assert content_type_for(PART10_HEAD, name) == "application/dicom"


def test_dicm_elsewhere_than_offset_128_is_not_part10() -> None:
    assert content_type_for(b"DICM" + bytes(200), "x") == "application/octet-stream"
    assert content_type_for(bytes(127) + b"DICM" + bytes(8), "x") == "application/octet-stream"
    assert content_type_for(bytes(130), "x") == "application/octet-stream"  # a short file


def test_a_dcm_without_the_preamble_is_not_part10_so_octet_stream() -> None:
    assert content_type_for(b"\x08\x00\x05\x00CS" + bytes(100), "raw.dcm") == (
        "application/octet-stream"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.json", "application/json"),
        ("dir/NOTES.TXT", "text/plain"),
        ("photo.jpg", "image/jpeg"),
        ("table.csv", "text/csv"),
        ("archive.zip", "application/zip"),
        ("archive.tar.gz", "application/gzip"),  # the stored bytes are gzip
        ("volume.nii.gz", "application/gzip"),
        ("dump.xz", "application/x-xz"),
        ("extensionless", "application/octet-stream"),
        ("odd.unknownext", "application/octet-stream"),
        ("data:text/html,x", "application/octet-stream"),  # a file name, never a URL
        ("a:b.json", "application/json"),
    ],
)
def test_other_files_get_the_type_of_their_extension(name: str, expected: str) -> None:
    assert content_type_for(b"plain bytes", name) == expected


def test_the_builtin_table_is_used_not_the_hosts_mime_types() -> None:
    # Debian's /etc/mime.types maps .dcm to application/dicom; the rule must not depend on it
    assert content_type_for(b"", "x.dcm") == "application/octet-stream"


def test_an_override_wins_over_sniffing_and_extension() -> None:
    assert content_type_for(PART10_HEAD, "x.dcm", "application/x-test") == "application/x-test"
    assert content_type_for(b"", "a.json", "text/plain; charset=utf-8") == (
        "text/plain; charset=utf-8"
    )


@pytest.mark.parametrize(
    "text", ["text/plain", "application/dicom", 'text/plain; charset="utf-8"', "a/b;c=d"]
)
def test_media_types_are_accepted_as_overrides(text: str) -> None:
    assert check_content_type(text) == text
    assert CopyOptions(content_type=text).content_type == text


@pytest.mark.parametrize(
    "text", ["", "plain", "text/", "text/ plain", "text/plain\r\nx-ms-meta-a: b", 'a/b; c="é"']
)
def test_a_malformed_override_is_a_config_error_before_anything_is_sent(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        CopyOptions(content_type=text)
    assert info.value.subject == "--content-type"
    assert "\n" not in info.value.one_line()
