"""pyengine.policy.lifecycle: the Azure lifecycle management policy has the documented shape,
and evaluated on synthetic blobs it moves each one when its study reaches the tier's age (never
earlier, at most one band later)."""

from __future__ import annotations

import datetime
import json
import re
from types import MappingProxyType

import pytest

from pyengine.policy import (
    DicomInfo,
    PolicyError,
    evaluate_lifecycle,
    lifecycle_policy,
    parse_policy,
)
from pyengine.policy.sample import SAMPLE_POLICY_TOML
from pyengine.policy.tiers import tier_for_age

TODAY = datetime.date(2026, 11, 26)
TIERS = ("Hot", "Cool", "Cold", "Archive")
POLICY = """
[tiers]
cool_after_days = 30
cold_after_days = 365
archive_after_days = 1825
step_days = 30

[tenants.north]
dest = "https://acct.blob.core.windows.net/north/pacs"
paths = ["north/**"]

[tenants.south]
dest = "https://acct.blob.core.windows.net/south"
paths = ["south/**"]

[tenants.legal]
dest = "https://acct.blob.core.windows.net/legal"
tier = "Cold"
paths = ["legal/**"]
"""


def study(age_days: int) -> DicomInfo:
    return DicomInfo(
        study_uid="1.2.3",
        series_uid=None,
        sop_uid=None,
        modality="CT",
        study_date=TODAY - datetime.timedelta(days=age_days),
        patient_age_at_study_days=None,
        birth_date_status="missing",
        attributes=MappingProxyType({}),
    )


def test_lifecycle_json_has_the_documented_shape():
    policy = parse_policy(POLICY, base_dir=".")
    doc = json.loads(json.dumps(lifecycle_policy(policy)))  # JSON all the way
    assert set(doc) == {"rules"}
    assert 1 <= len(doc["rules"]) <= 100
    names = [r["name"] for r in doc["rules"]]
    assert len(set(names)) == len(names)
    for rule in doc["rules"]:
        assert set(rule) == {"enabled", "name", "type", "definition"}
        assert rule["enabled"] is True and rule["type"] == "Lifecycle"
        assert re.fullmatch(r"[A-Za-z0-9]{1,256}", rule["name"])
        assert set(rule["definition"]) == {"actions", "filters"}
        filters = rule["definition"]["filters"]
        assert set(filters) == {"blobTypes", "prefixMatch", "blobIndexMatch"}
        assert filters["blobTypes"] == ["blockBlob"]
        # prefixes start with the container name; the fixed-tier tenant is left out
        assert filters["prefixMatch"] == ["north/pacs/", "south/"]
        assert 1 <= len(filters["blobIndexMatch"]) <= 10
        for cond in filters["blobIndexMatch"]:
            assert set(cond) == {"name", "op", "value"} and cond["op"] == "=="
        actions = rule["definition"]["actions"]
        assert set(actions) == {"baseBlob"}
        days = []
        for action, condition in actions["baseBlob"].items():
            assert action in ("tierToCool", "tierToCold", "tierToArchive")
            assert set(condition) == {"daysAfterCreationGreaterThan"}
            assert isinstance(condition["daysAfterCreationGreaterThan"], int)
            days.append(condition["daysAfterCreationGreaterThan"])
        assert days == sorted(days) and days[0] > 0
    assert len(doc["rules"]) == 1825 // 30 + 1  # one per band below the last threshold


def test_every_synthetic_blob_moves_when_its_study_reaches_the_tier_age_never_earlier():
    policy = parse_policy(POLICY, base_dir=".")
    rules = lifecycle_policy(policy)
    step = 30
    for age_at_copy in [0, 1, 29, 30, 31, 200, 364, 365, 366, 700, 1799, 1800, 1824, 1825, 3000]:
        placed = policy.place("north/a/b.dcm", study(age_at_copy), today=TODAY)
        tier = placed.tier
        blob = {"name": "north/pacs/a/b.dcm", "tags": placed.tags}
        for days in range(0, 2000, 5):
            moved = evaluate_lifecycle(rules, {**blob, "tier": tier, "days_since_creation": days})
            if moved is not None:
                assert TIERS.index(moved) > TIERS.index(tier)
                tier = moved  # the service moved it; later runs see the new tier
            age = age_at_copy + days
            # never cooler than the study's age warrants ...
            assert TIERS.index(tier) <= TIERS.index(tier_for_age(policy.tiers, age))
            # ... and at most one band (plus the "GreaterThan" day) behind it
            late = tier_for_age(policy.tiers, max(0, age - step - 1))
            assert TIERS.index(tier) >= TIERS.index(late), (age_at_copy, days, tier)


def test_blobs_outside_the_rules_are_left_alone():
    rules = lifecycle_policy(parse_policy(POLICY, base_dir="."))
    band0 = {"tierband": "0"}
    assert (
        evaluate_lifecycle(
            rules, {"name": "north/pacs/x", "tags": band0, "days_since_creation": 99}
        )
        == "Cool"
    )
    # another container, the fixed-tier tenant's container, a blob without a band
    assert (
        evaluate_lifecycle(rules, {"name": "other/x", "tags": band0, "days_since_creation": 99})
        is None
    )
    assert (
        evaluate_lifecycle(rules, {"name": "legal/x", "tags": band0, "days_since_creation": 99})
        is None
    )
    assert (
        evaluate_lifecycle(rules, {"name": "north/pacs/x", "tags": {}, "days_since_creation": 99})
        is None
    )


def test_tenants_in_several_accounts_need_the_account_named():
    text = POLICY.replace(
        "https://acct.blob.core.windows.net/south", "https://other.blob.core.windows.net/south"
    )
    policy = parse_policy(text, base_dir=".")
    with pytest.raises(PolicyError) as e:
        lifecycle_policy(policy)
    assert "acct" in e.value.reason and "other" in e.value.reason
    only = lifecycle_policy(policy, account="other")
    assert only["rules"][0]["definition"]["filters"]["prefixMatch"] == ["south/"]


def test_a_policy_without_tier_transitions_has_no_lifecycle():
    text = POLICY.split("[tenants.north]")[1]
    with pytest.raises(PolicyError):
        lifecycle_policy(parse_policy("[tenants.north]" + text, base_dir="."))


def test_the_sample_policy_lifecycle_fits_azures_limit():
    rules = lifecycle_policy(parse_policy(SAMPLE_POLICY_TOML, base_dir="."))["rules"]
    assert len(rules) == 61
    first = rules[0]["definition"]["actions"]["baseBlob"]
    assert first == {
        "tierToCool": {"daysAfterCreationGreaterThan": 90},
        "tierToCold": {"daysAfterCreationGreaterThan": 730},
        "tierToArchive": {"daysAfterCreationGreaterThan": 3650},
    }
