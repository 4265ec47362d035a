"""The access tier a blob gets at copy time, from the study's age then, and the lifecycle band
that lets Azure carry the later transitions with nothing of ours running.

Lifecycle management can only count days since a blob's creation (or modification, or last
access), not the study's age. So each blob is tagged with its study age at copy time rounded
down to ``step_days`` (tag ``tierband``, e.g. "360"), and lifecycle.py writes one rule per band:
"tierband == B: to Cool at creation + (cool_after_days - B) days", and so on. The copy-time
tier is taken from the same rounded age, so the copy and the rules agree: a transition happens
when the study is at least as old as its threshold, at most ``step_days`` (and one day) late,
never early. A blob past the last threshold is copied straight into the coolest tier and gets
no band (no rule has anything left to do).
"""

from __future__ import annotations

import datetime

from pyengine.policy.dicom import DicomInfo
from pyengine.policy.model import Tenant, TierRule

__all__ = ["copy_tier", "study_age_days", "tier_for_age"]


def study_age_days(info: DicomInfo | None, *, today: datetime.date) -> int | None:
    """Days from the study to ``today``; None when there is no sound study date."""
    if info is None or info.study_date is None or info.study_date_status != "ok":
        return None
    return max(0, (today - info.study_date).days)


def tier_for_age(rule: TierRule, age_days: int) -> str:
    tier = rule.default
    for name, after_days in rule.after_days:
        if age_days >= after_days:
            tier = name
    return tier


def copy_tier(
    tenant: Tenant, rule: TierRule | None, info: DicomInfo | None, *, today: datetime.date
) -> tuple[str | None, int | None]:
    """(tier at copy time, band in days for the `tierband` tag or None).

    A study without a sound date (and a file that is not DICOM) is treated as new: band 0, so
    it starts in the default tier and cools as the blob ages."""
    if tenant.tier is not None:
        return tenant.tier, None
    if rule is None:
        return None, None
    age = study_age_days(info, today=today) or 0
    band = age - age % rule.step_days
    last_after_days = rule.after_days[-1][1] if rule.after_days else 0
    return tier_for_age(rule, band), (band if band < last_after_days else None)
