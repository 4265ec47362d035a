"""The few DICOM attributes the policy needs, read from the leading bytes of a file that the
pipeline has already read (never a second open): identifiers of the study, its date, the
patient's age at the study (the birth date itself is never kept), and the attributes tenant
rules match on.

Parsing is pydicom's element reader (``data_element_generator`` with ``specific_tags``, stopping
before Pixel Data: what ``dcmread(stop_before_pixels=True)`` does inside). It is called directly
because ``dcmread`` raises when the head ends inside an element header and the whole data set is
lost, and returns the element the cut went through with a short value; here a failure at the
end of the head is the cut, a partial element is dropped, and so a head cut anywhere yields
exactly the attributes that ended before the cut. A failure anywhere else is a malformed file.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import io
import logging
import re
import struct
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pyengine.policy.model import PolicyError

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "HEAD_BYTES",
    "DicomInfo",
    "attribute_tag",
    "parse_da",
    "read_dicom_head",
]

#: leading bytes of a file the engine hands to read_dicom_head. The attributes read here sit in
#: groups 0008-0020, ahead of any private group and of the pixels, so a head this long holds
#: them unless sequences before them are very long (then they are missing, not wrong).
HEAD_BYTES: int = 64 * 1024

#: PS3.10 §7.1: a 128-byte preamble, then "DICM"
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
#: attributes a tenant rule may route on when the caller does not say which
DEFAULT_ATTRIBUTES = ("InstitutionName", "InstitutionalDepartmentName", "StationName")
#: 130 years: older than anyone documented, so a larger age is a wrong date
_MAX_AGE_DAYS = int(130 * 365.25)
_UNDEFINED_LENGTH = 0xFFFFFFFF

_BIRTH_DATE = 0x00100030
_FIXED_TAGS = {
    "study_uid": 0x0020000D,
    "series_uid": 0x0020000E,
    "sop_uid": 0x00080018,
    "modality": 0x00080060,
    "study_date": 0x00080020,
}
_CHARSET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010
_PIXEL_DATA = 0x7FE00010
#: an explicit-VR element header with a 32-bit length is 12 bytes, the longest there is
_MAX_HEADER_BYTES = 12

# pydicom logs (and warns) about invalid values and may quote them: header values must not
# reach our logs. While read_dicom_head runs, its records are dropped (a context variable, so
# other threads and tasks using pydicom keep their logging); its warnings are silenced with
# warnings.catch_warnings, which is process-wide: call read_dicom_head from one thread.
_READING = contextvars.ContextVar("pyengine_policy_reading_dicom", default=False)


class _DropWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _READING.get()


for _name in ("pydicom", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_DropWhileReading())


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    token = _READING.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _READING.reset(token)


@dataclass(frozen=True)
class DicomInfo:
    """Only non-identifying attributes are kept."""

    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    study_date: datetime.date | None
    #: from PatientBirthDate, which itself is never stored
    patient_age_at_study_days: int | None
    #: "ok" | "missing" | "implausible" (birth after study, study in the future, age > 130 y);
    #: "missing" also when there is no study date to measure the age from
    birth_date_status: str
    #: keyword -> value for attributes tenant rules match on (e.g. InstitutionName); never
    #: PatientName, PatientID or PatientBirthDate
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: "ok" | "missing" | "implausible" (unparsable or in the future)
    study_date_status: str = "ok"


def parse_da(text: str) -> datetime.date | None:
    """A DICOM DA value ("YYYYMMDD"; the ACR-NEMA "YYYY.MM.DD" too) as a date, or None."""
    digits = text.strip().replace(".", "")
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def attribute_tag(key: str) -> int | None:
    """The tag of a rule key: a pydicom keyword ("InstitutionName") or eight hex digits
    ("00080080"); None when it is neither."""
    from pydicom.datadict import tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return int(key, 16)
    return tag_for_keyword(key)


def _is_dicom(head: bytes) -> bool:
    return head[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] == _MAGIC


#: what pydicom raises on a corrupt element, reading or converting it
_CONVERSION_ERRORS = (
    ValueError,
    KeyError,
    EOFError,
    NotImplementedError,
    OverflowError,
    TypeError,
    IndexError,
    struct.error,
)


def _elements(fp: io.BytesIO, end: int, **kwargs: Any) -> dict[int, Any]:
    """Raw elements from pydicom's element generator until it ends or the head runs out. A
    failure within an element header's reach of the end is the cut (the data simply stops
    there: keep what came before); anywhere else the file is malformed."""
    from pydicom.filereader import data_element_generator

    found: dict[int, Any] = {}
    try:
        for elem in data_element_generator(fp, **kwargs):
            found[int(elem.tag)] = elem
    except _CONVERSION_ERRORS as e:
        # a value skipped over (not a wanted tag) may leave the position past the end
        if fp.tell() < end - _MAX_HEADER_BYTES:
            # the exception text may quote values: only its type goes out
            raise PolicyError("DICOM header", f"malformed ({type(e).__name__})") from None
    return found


def _syntax(uid: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a transfer syntax; None when the data set cannot be
    read in place (deflated)."""
    if uid == "1.2.840.10008.1.2":
        return True, True
    if uid == "1.2.840.10008.1.2.2":
        return False, False
    if uid in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"):  # deflated, JPIP deflate
        return None
    return False, True


def _whole(elem: Any) -> bool:
    """False for the element the cut went through: pydicom hands it back with a short value."""
    length = getattr(elem, "length", None)
    value = getattr(elem, "value", None)
    return not (
        length is not None
        and length != _UNDEFINED_LENGTH
        and isinstance(value, bytes)
        and len(value) < length
    )


def _read_raw(head: bytes, tags: list[int]) -> dict[int, Any]:
    """The wanted raw elements of the data set that lie whole within ``head``."""
    start = _MAGIC_OFFSET + 4
    if len(head) < start + 4:
        return {}  # cut before the first element
    (group,) = struct.unpack_from("<H", head, start)
    if group != 0x0002:
        raise PolicyError("DICOM header", "malformed: no file meta information after 'DICM'")
    fp = io.BytesIO(head)
    fp.seek(start)
    # PS3.10 §7.1: the File Meta Information is always Explicit VR Little Endian
    meta = _elements(
        fp,
        len(head),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag.group != 0x0002,
    )
    uid_elem = meta.get(_TRANSFER_SYNTAX)
    if uid_elem is None or not _whole(uid_elem):
        if fp.tell() >= len(head) - _MAX_HEADER_BYTES:
            return {}  # cut inside the file meta: nothing of the data set to read
        raise PolicyError("DICOM header", "malformed: no transfer syntax in the file meta")
    syntax = _syntax(uid_elem.value.decode("ascii", "replace").strip("\0 "))
    if syntax is None:
        return {}  # deflated: identifiers unknown, routed by path and dated as missing
    implicit, little = syntax
    # Elements come in tag order: nothing past the last wanted tag is read (the identifiers sit
    # in groups 0008-0020, before the bulk of a header), and never the pixel data.
    last = min(max(tags), _PIXEL_DATA - 1)
    return _elements(
        fp,
        len(head),
        is_implicit_VR=implicit,
        is_little_endian=little,
        stop_when=lambda tag, vr, length: tag > last,
        specific_tags=tags,
    )


def _text(ds: Any, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None or isinstance(value, bytes):
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):  # multi-valued
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def read_dicom_head(
    head: bytes,
    *,
    attributes: Iterable[str] | None = None,
    today: datetime.date | None = None,
) -> DicomInfo | None:
    """None when ``head`` is not DICOM Part 10 (no 'DICM' at 128); parses with pydicom
    (stop_before_pixels, tolerant of the head being truncated mid-element); raises
    PolicyError(reason) for a malformed DICOM file (one line, no patient data).

    ``attributes``: the keys tenant rules match on (keywords or "GGGGEEEE"; default
    DEFAULT_ATTRIBUTES); ``today`` (default: the local date) judges "study in the future"."""
    from pydicom.dataset import Dataset

    if not _is_dicom(head):
        return None
    keys = tuple(DEFAULT_ATTRIBUTES if attributes is None else attributes)
    wanted: dict[str, int] = {}
    for key in keys:
        tag = attribute_tag(key)
        if tag is not None:
            wanted[key] = tag
    tags = [*_FIXED_TAGS.values(), _BIRTH_DATE, _CHARSET, *wanted.values()]
    fixed: dict[str, str | None] = dict.fromkeys(_FIXED_TAGS)
    birth_text: str | None = None
    found: dict[str, str | None] = {}
    with _quiet_pydicom():
        raw = _read_raw(head, tags)
        if raw:
            ds = Dataset({tag: elem for tag, elem in raw.items() if _whole(elem)})
            try:
                fixed = {name: _text(ds, tag) for name, tag in _FIXED_TAGS.items()}
                birth_text = _text(ds, _BIRTH_DATE)
                found = {key: _text(ds, tag) for key, tag in wanted.items()}
            except _CONVERSION_ERRORS as e:  # e.g. an unknown VR: the element is corrupt
                raise PolicyError("DICOM header", f"malformed ({type(e).__name__})") from None
            finally:
                del ds, raw  # nothing identifying outlives this call

    today = today or datetime.date.today()
    study_date = parse_da(fixed["study_date"]) if fixed["study_date"] else None
    if fixed["study_date"] is None:
        study_status = "missing"
    elif study_date is None or study_date > today:
        study_status = "implausible"
    else:
        study_status = "ok"

    age_days: int | None = None
    birth = parse_da(birth_text) if birth_text else None
    if birth_text is None or fixed["study_date"] is None:
        birth_status = "missing"  # no age can be measured
    elif birth is None or study_date is None or study_status != "ok":
        birth_status = "implausible"
    else:
        age = (study_date - birth).days
        if 0 <= age <= _MAX_AGE_DAYS:
            birth_status, age_days = "ok", age
        else:
            birth_status = "implausible"
    del birth, birth_text

    return DicomInfo(
        study_uid=fixed["study_uid"],
        series_uid=fixed["series_uid"],
        sop_uid=fixed["sop_uid"],
        modality=fixed["modality"],
        study_date=study_date,
        patient_age_at_study_days=age_days,
        birth_date_status=birth_status,
        attributes=MappingProxyType({k: v for k, v in found.items() if v is not None}),
        study_date_status=study_status,
    )
