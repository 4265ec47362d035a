"""Blob index tags: what lets an operator (and lifecycle rules) find blobs by tenant, study,
modality, date and retention without reading them. Never a patient name, patient ID or birth
date: tags are readable by anyone holding tag-read permission and are indexed account-wide.

Azure's rules ("Manage and find Azure Blob data with blob index tags"): at most 10 tags per
blob, keys 1-128 and values 0-256 characters of a-z A-Z 0-9 space + - . / : = _ ; values taken
from DICOM headers are sanitised by replacing any other character with "_".
"""

from __future__ import annotations

import datetime
import re

from pyengine.policy.dicom import DicomInfo
from pyengine.policy.model import Tenant

__all__ = ["MAX_TAGS", "OWN_TAG_KEYS", "blob_tags", "sanitise_value", "tag_key_problem"]

MAX_TAGS = 10
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
#: the tags pyengine writes itself; a tenant's fixed tags may not reuse these keys
OWN_TAG_KEYS = ("tenant", "studyuid", "modality", "studydate", "retainuntil", "tierband")
_DISALLOWED = re.compile(r"[^A-Za-z0-9 +\-./:=_]")


def sanitise_value(value: str) -> str:
    return _DISALLOWED.sub("_", value)[:MAX_VALUE_CHARS]


def tag_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid tag key, or None."""
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        return f"tag key must be 1-{MAX_KEY_CHARS} characters"
    if _DISALLOWED.search(key):
        return "tag key may hold only a-z A-Z 0-9 space + - . / : = _"
    return None


def tag_value_problem(value: str) -> str | None:
    if len(value) > MAX_VALUE_CHARS:
        return f"tag value must be at most {MAX_VALUE_CHARS} characters"
    if _DISALLOWED.search(value):
        return "tag value may hold only a-z A-Z 0-9 space + - . / : = _"
    return None


def blob_tags(
    tenant: Tenant,
    info: DicomInfo | None,
    *,
    retain_until: datetime.date,
    tier_band_days: int | None,
) -> dict[str, str]:
    tags: dict[str, str] = {"tenant": sanitise_value(tenant.name)}
    if info is not None:
        if info.study_uid:
            tags["studyuid"] = sanitise_value(info.study_uid)
        if info.modality:
            tags["modality"] = sanitise_value(info.modality)
        if info.study_date is not None:
            tags["studydate"] = info.study_date.isoformat()
    tags["retainuntil"] = retain_until.isoformat()
    if tier_band_days is not None:
        tags["tierband"] = str(tier_band_days)
    tags.update(tenant.tags)  # validated at load: allowed characters, no clash, total <= 10
    return tags
