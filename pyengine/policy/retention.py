"""How long a study is kept: the United States default is 7 years for adults, and images of a
minor are kept until the patient turns 21 (and at least 7 years). So

    retain_until = max(study_date + adult_years, birth_date + minor_until_age_years)

with adult_years = 7, minor_until_age_years = 21 by default (both configurable in [retention]).
The birth date is known here only as the age at the study (birth = study - age), never stored.

Missing or implausible dates take the longest retention the rule can give,
anchor + max(adult_years, minor_until_age_years), where the anchor is the study date when that
is sound and the copy date otherwise (a study cannot be later than its copy); the placement is
flagged so the manifest shows why.
"""

from __future__ import annotations

import datetime

from pyengine.policy.dicom import DicomInfo
from pyengine.policy.model import RetentionRule

__all__ = ["add_years", "retain_until"]


def add_years(day: datetime.date, years: int) -> datetime.date:
    """``day`` moved ``years`` later; 29 February becomes 1 March (the later day: a retention
    must never end early)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return datetime.date(day.year + years, 3, 1)


def retain_until(
    info: DicomInfo | None, rule: RetentionRule, *, today: datetime.date
) -> tuple[datetime.date, str | None]:
    """(retain-until date, flag); the flag is None when the dates were fine."""
    longest = rule.longest_years
    if info is None:
        return add_years(today, longest), "not DICOM: longest retention from the copy date"
    study = info.study_date
    if study is None or info.study_date_status != "ok" or study > today:
        what = "missing" if info.study_date_status == "missing" else "implausible"
        return add_years(today, longest), f"study date {what}: longest retention from copy date"
    if info.birth_date_status != "ok" or info.patient_age_at_study_days is None:
        what = "implausible" if info.birth_date_status == "implausible" else "missing"
        return add_years(study, longest), f"birth date {what}: longest retention"
    birth = study - datetime.timedelta(days=info.patient_age_at_study_days)
    until = max(add_years(study, rule.adult_years), add_years(birth, rule.minor_until_age_years))
    return until, None
