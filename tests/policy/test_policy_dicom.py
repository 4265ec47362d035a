"""pyengine.policy.dicom: read_dicom_head on real Part 10 files written by pydicom, cut short at
many offsets, malformed, and not DICOM at all."""

from __future__ import annotations

import datetime
import io
import logging
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pyengine.policy import HEAD_BYTES, PolicyError, read_dicom_head

TODAY = datetime.date(2026, 11, 26)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901"
NAME, PID, BIRTH = "SECRET^NAME", "PID-SECRET-99", "19800229"


def dicom_bytes(
    *,
    study_date: str | None = "20240101",
    birth: str | None = BIRTH,
    syntax: str = ExplicitVRLittleEndian,
    pixels_bytes: int = 2048,
    **extra: str,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = "1.2.3.4.6"
    ds.Modality = "MR"
    ds.InstitutionName = "North General"
    ds.PatientName = NAME
    ds.PatientID = PID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if study_date is not None:
            ds.StudyDate = study_date
        if birth is not None:
            ds.PatientBirthDate = birth
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
    ds.BitsAllocated = 16
    ds.PixelData = bytes(pixels_bytes)
    out = io.BytesIO()
    with warnings.catch_warnings():  # some cases write invalid dates on purpose
        warnings.simplefilter("ignore")
        dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_reads_study_attributes_and_age_but_keeps_no_patient_identifier():
    info = read_dicom_head(dicom_bytes(), today=TODAY)
    assert info is not None
    assert info.study_uid == STUDY_UID
    assert info.series_uid == "1.2.3.4.6"
    assert info.sop_uid == "1.2.3.4.5"
    assert info.modality == "MR"
    assert info.study_date == datetime.date(2024, 1, 1)
    assert info.study_date_status == "ok"
    assert info.birth_date_status == "ok"
    assert (
        info.patient_age_at_study_days
        == (datetime.date(2024, 1, 1) - datetime.date(1980, 2, 29)).days
    )
    assert dict(info.attributes) == {"InstitutionName": "North General"}
    text = repr(info)
    for secret in (NAME, PID, BIRTH, "1980-02-29"):
        assert secret not in text


def test_implicit_vr_files_are_read_too():
    info = read_dicom_head(dicom_bytes(syntax=ImplicitVRLittleEndian), today=TODAY)
    assert info is not None and info.study_uid == STUDY_UID and info.modality == "MR"


def test_reads_only_the_head_the_engine_hands_over():
    data = dicom_bytes(pixels_bytes=3 * HEAD_BYTES)
    info = read_dicom_head(data[:HEAD_BYTES], today=TODAY)
    assert info is not None and info.study_uid == STUDY_UID


def test_a_head_cut_anywhere_yields_exactly_the_attributes_that_ended_before_the_cut():
    data = dicom_bytes()
    full = read_dicom_head(data, today=TODAY)
    assert full is not None
    # where each value ends in the file: a cut at or after it keeps the whole value
    uid_end = data.index(STUDY_UID.encode()) + len(STUDY_UID)
    modality_end = data.index(b"MR") + 2
    seen_partial_uid = False
    for cut in range(132, len(data), 7):
        info = read_dicom_head(data[:cut], today=TODAY)
        assert info is not None
        if cut >= uid_end:
            assert info.study_uid == STUDY_UID
        else:
            # never a shortened UID: a cut mid-value drops the element
            assert info.study_uid is None
            seen_partial_uid = seen_partial_uid or cut > uid_end - len(STUDY_UID)
        if cut >= modality_end:
            assert info.modality == "MR"
        else:
            assert info.modality is None
    assert seen_partial_uid  # the loop did cut through the UID's value


def test_a_cut_inside_the_birth_date_means_the_birth_date_is_missing():
    data = dicom_bytes()
    at = data.index(BIRTH.encode())
    info = read_dicom_head(data[: at + 4], today=TODAY)
    assert info is not None
    assert info.study_date == datetime.date(2024, 1, 1)
    assert info.birth_date_status == "missing"
    assert info.patient_age_at_study_days is None


def test_not_dicom_is_none():
    assert read_dicom_head(b"%PDF-1.7\n" + bytes(400)) is None
    assert read_dicom_head(b"") is None
    assert read_dicom_head(bytes(131)) is None


@pytest.mark.parametrize(
    "head",
    [
        b"\0" * 128 + b"DICM" + b"\xff\xee" * 200,  # no File Meta Information group
        b"\0" * 128 + b"DICM" + b"\x08\x00\x20\x00DA\x08\x0020240101",  # data set, no meta
    ],
)
def test_a_malformed_dicom_file_raises_one_line_policy_error(head: bytes):
    with pytest.raises(PolicyError) as e:
        read_dicom_head(head, today=TODAY)
    assert "malformed" in e.value.reason
    assert "\n" not in e.value.one_line()


def test_malformed_error_carries_no_patient_data():
    data = bytearray(dicom_bytes())
    data[132:134] = b"\x09\x00"  # the meta group's first tag no longer in group 0002
    with pytest.raises(PolicyError) as e:
        read_dicom_head(bytes(data), today=TODAY)
    for secret in (NAME, PID, BIRTH):
        assert secret not in e.value.one_line()


@pytest.mark.parametrize(
    ("study", "birth", "study_status", "birth_status"),
    [
        ("20240101", None, "ok", "missing"),
        ("20240101", "", "ok", "missing"),
        ("20240101", "20250101", "ok", "implausible"),  # born after the study
        ("20240101", "18800101", "ok", "implausible"),  # 144 years old
        ("20240101", "1980XX01", "ok", "implausible"),  # not a date
        ("20300101", "19800101", "implausible", "implausible"),  # study in the future
        (None, "19800101", "missing", "missing"),
        ("2024.01.01", "1980.01.01", "ok", "ok"),  # ACR-NEMA style dates
    ],
)
def test_date_plausibility(study, birth, study_status, birth_status):
    info = read_dicom_head(dicom_bytes(study_date=study, birth=birth), today=TODAY)
    assert info is not None
    assert (info.study_date_status, info.birth_date_status) == (study_status, birth_status)
    if birth_status != "ok":
        assert info.patient_age_at_study_days is None


def test_rule_attributes_are_read_by_keyword_or_hex_tag():
    data = dicom_bytes(StationName="CT-7", InstitutionalDepartmentName="Radiology")
    info = read_dicom_head(data, attributes=["StationName", "00081040"], today=TODAY)
    assert info is not None
    assert dict(info.attributes) == {"StationName": "CT-7", "00081040": "Radiology"}


def test_pydicom_logs_nothing_while_the_head_is_read(caplog):
    # pydicom's validation messages may quote header values (a birth date among them)
    data = dicom_bytes(birth="1980XX01", StudyDescription="x" * 70)  # both invalid for pydicom
    caplog.clear()  # writing the file logged; reading it must not
    caplog.set_level(logging.DEBUG)
    info = read_dicom_head(data, attributes=["StudyDescription"], today=TODAY)
    assert info is not None and info.birth_date_status == "implausible"
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


def test_a_deflated_data_set_is_dicom_without_attributes():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    info = read_dicom_head(dicom_bytes(syntax=DeflatedExplicitVRLittleEndian), today=TODAY)
    assert info is not None
    assert info.study_uid is None and info.birth_date_status == "missing"


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(132, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(132, 10_000),
)
def test_a_corrupt_or_cut_header_is_placed_or_refused_never_a_crash(flips, cut):
    data = bytearray(CORRUPTIBLE)
    for at, byte in flips:
        data[132 + at % (len(data) - 132)] = byte  # "DICM" stays: DICOM, maybe broken
    try:
        info = read_dicom_head(bytes(data[:cut]), today=TODAY)
    except PolicyError as e:
        assert "\n" not in e.one_line()
        assert NAME not in e.one_line() and PID not in e.one_line()
    else:
        assert info is not None


CORRUPTIBLE = dicom_bytes()
