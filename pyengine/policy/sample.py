"""A small multi-tenant DICOM tree with known ages, and the complete example policy that places
it (README.md "Migration policy", `make demo`, the engine's policy tests).

    write_sample_tree(root)  ->  {"north/study1/adult.dcm": SampleFile(...), ...}

Each tenant gets: an adult, a child and an infant study, one study without a birth date, one
with a birth date after the study (implausible), a file that says "DICM" and is malformed, and a
non-DICOM report. Files are written with pydicom (Part 10, Explicit VR Little Endian), unlike
pyengine.bench.dicom_tree, which hand-encodes so the bench runs without pydicom: here the point
is that an independent writer produced what read_dicom_head reads. Every file carries a planted
patient name, ID and birth date (PLANTED_*) so tests can check none of them leaks.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pyengine.policy.retention import add_years

__all__ = [
    "PLANTED_BIRTH_DATES",
    "PLANTED_PATIENT_ID",
    "PLANTED_PATIENT_NAME",
    "SAMPLE_ACCOUNT_URL",
    "SAMPLE_POLICY_TOML",
    "SampleFile",
    "sample_policy_toml",
    "write_sample_tree",
]

PLANTED_PATIENT_NAME = "PLANTED^PATIENTNAME"
PLANTED_PATIENT_ID = "PLANTEDPID4711"
#: every birth date the tree plants, as DICOM writes them (DA) and as ISO dates
PLANTED_BIRTH_DATES = ("19700501", "20100615", "20191201", "20220101")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SAMPLE_ACCOUNT_URL = "https://contosoimaging.blob.core.windows.net"

# Dates chosen so the default rule gives a different answer for each case (adult: study + 7 y;
# child and infant: birth + 21 y), all in the past of any test run.
_STUDIES = {
    # kind: (study date, birth date or None)
    "adult": ("20200310", "19700501"),
    "child": ("20200310", "20100615"),
    "infant": ("20200310", "20191201"),
    "nobirthdate": ("20210105", None),
    "birthafterstudy": ("20210105", "20220101"),
}

SAMPLE_POLICY_TOML = f'''\
# A two-tenant migration policy (pyengine copy SRC --policy FILE).
[policy]
# files that match no tenant go here instead of failing (leave out to make them fail)
fallback = "south"

[retention]
# retain_until = max(study date + adult_years, birth date + minor_until_age_years)
adult_years = 7
minor_until_age_years = 21

[tiers]
# tier at copy time by study age; Azure lifecycle rules (pyengine policy lifecycle FILE)
# carry the later moves, keyed on the `tierband` index tag
default = "Hot"
cool_after_days = 90
cold_after_days = 730
archive_after_days = 3650
# one lifecycle rule per 60 days of study age below 3650: 61 rules (Azure allows 100)
step_days = 60

[immutability]
# x-ms-immutability-policy-until-date = retain-until, mode Unlocked
enabled = true
legal_hold = false

[tenants.north]
dest = "{SAMPLE_ACCOUNT_URL}/north/pacs"
connection_string_env = "NORTH_STORAGE_CONNECTION_STRING"
kek_file = "keys/north.kek"
paths = ["north/**"]
tags = {{ project = "migration2026" }}

[tenants.south]
dest = "{SAMPLE_ACCOUNT_URL}/south/pacs"
connection_string_env = "SOUTH_STORAGE_CONNECTION_STRING"
paths = ["south/**"]
'''


def sample_policy_toml(*, account_url: str = SAMPLE_ACCOUNT_URL) -> str:
    """SAMPLE_POLICY_TOML with another account URL (e.g. Azurite's
    ``http://127.0.0.1:PORT/devstoreaccount1`` for the demo)."""
    return SAMPLE_POLICY_TOML.replace(SAMPLE_ACCOUNT_URL, account_url.rstrip("/"))


@dataclass(frozen=True)
class SampleFile:
    tenant: str
    #: adult | child | infant | nobirthdate | birthafterstudy | malformed | report
    kind: str
    study_uid: str | None = None
    study_date: datetime.date | None = None
    #: under the default rule (7 y / 21 y); None where it depends on the copy date or the file
    #: cannot be placed
    retain_until: datetime.date | None = None
    #: the placement is flagged (missing or implausible dates, not DICOM)
    flagged: bool = False
    #: read_dicom_head raises PolicyError for it
    malformed: bool = False


def _uid(*parts: str) -> str:
    # "2.25." + a 128-bit integer: the UUID-derived root of PS3.5 B.2; deterministic per name
    digest = hashlib.sha256("/".join(parts).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def _da(text: str) -> datetime.date:
    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _write_dicom(
    path: str, *, tenant: str, study_uid: str, study_date: str, birth: str | None
) -> None:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_uid = _uid(path, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(study_uid, "series")
    ds.StudyDate = study_date
    ds.Modality = "CT"
    ds.InstitutionName = f"{tenant.upper()} GENERAL HOSPITAL"
    ds.PatientName = PLANTED_PATIENT_NAME
    ds.PatientID = PLANTED_PATIENT_ID
    if birth is not None:
        ds.PatientBirthDate = birth
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(32 * 32 * 2)
    dcmwrite(path, ds, enforce_file_format=True)


def write_sample_tree(
    root: str | os.PathLike[str], *, tenants: Sequence[str] = ("north", "south")
) -> dict[str, SampleFile]:
    """Write the sample tree under ``root`` (created if needed); return what each file is,
    keyed by its path relative to ``root`` with "/" separators."""
    expected: dict[str, SampleFile] = {}
    for tenant in tenants:
        base = os.path.join(os.fspath(root), tenant)
        for n, (kind, (study, birth)) in enumerate(_STUDIES.items(), start=1):
            rel = f"{tenant}/study{n}/{kind}.dcm"
            os.makedirs(os.path.join(base, f"study{n}"), exist_ok=True)
            study_uid = _uid(tenant, kind)
            _write_dicom(
                os.path.join(os.fspath(root), rel),
                tenant=tenant,
                study_uid=study_uid,
                study_date=study,
                birth=birth,
            )
            study_date = _da(study)
            if birth is None or _da(birth) > study_date:
                retain, flagged = add_years(study_date, 21), True
            else:
                retain = max(add_years(study_date, 7), add_years(_da(birth), 21))
                flagged = False
            expected[rel] = SampleFile(tenant, kind, study_uid, study_date, retain, flagged)
        rel = f"{tenant}/broken/malformed.dcm"
        os.makedirs(os.path.join(base, "broken"), exist_ok=True)
        with open(os.path.join(os.fspath(root), rel), "wb") as f:
            # says DICM, then no File Meta Information group: malformed, not merely short
            f.write(b"\0" * 128 + b"DICM" + b"\xff\xee" * 256)
        expected[rel] = SampleFile(tenant, "malformed", malformed=True)
        rel = f"{tenant}/reports/report.txt"
        os.makedirs(os.path.join(base, "reports"), exist_ok=True)
        with open(os.path.join(os.fspath(root), rel), "w") as f:
            f.write(f"radiology report placeholder for tenant {tenant}\n")
        expected[rel] = SampleFile(tenant, "report", flagged=True)
    return expected
