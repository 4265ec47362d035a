"""Policy.tenant_for and Policy.place: routing by path glob and DICOM attributes, retention,
tier by study age, tags and immutability."""

from __future__ import annotations

import datetime
from types import MappingProxyType

import pytest

from pyengine.policy import DicomInfo, PolicyError, parse_policy
from pyengine.policy.retention import add_years

TODAY = datetime.date(2026, 11, 26)
D = datetime.date
STUDY = D(2024, 1, 1)

TWO = """
[tenants.north]
dest = "https://acct.blob.core.windows.net/north/pacs"
paths = ["north/**", "shared/*.dcm"]

[tenants.south]
dest = "https://acct.blob.core.windows.net/south"
[[tenants.south.match]]
InstitutionName = "south general*"
[[tenants.south.match]]
path = "inbox/**"
Modality = "MR"
"""


def info(
    *,
    study: datetime.date | None = STUDY,
    age_days: int | None = 40 * 365,
    birth_status: str = "ok",
    study_status: str = "ok",
    modality: str | None = "CT",
    uid: str | None = "1.2.3",
    **attributes: str,
) -> DicomInfo:
    return DicomInfo(
        study_uid=uid,
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        modality=modality,
        study_date=study,
        patient_age_at_study_days=age_days if birth_status == "ok" else None,
        birth_date_status=birth_status,
        attributes=MappingProxyType(attributes),
        study_date_status=study_status if study is not None else "missing",
    )


@pytest.fixture
def two():
    return parse_policy(TWO, base_dir=".")


# -- routing


def test_path_globs_route_files(two):
    assert two.tenant_for("north/a/b/c.dcm", None).name == "north"
    assert two.tenant_for("shared/x.dcm", None).name == "north"


def test_single_star_stays_within_one_directory(two):
    with pytest.raises(PolicyError):
        two.tenant_for("shared/sub/x.dcm", None)


def test_dicom_attributes_route_files_case_insensitively(two):
    i = info(InstitutionName="SOUTH GENERAL HOSPITAL")
    assert two.tenant_for("anywhere/x.dcm", i).name == "south"
    assert two.needs_dicom_for_tenant


def test_all_conditions_of_one_match_rule_must_hold(two):
    # Modality is a field of every DicomInfo: matched without being asked for as an attribute
    assert two.tenant_for("inbox/1.dcm", info(modality="MR")).name == "south"
    with pytest.raises(PolicyError):
        two.tenant_for("inbox/1.dcm", info(modality="CT"))
    with pytest.raises(PolicyError):
        two.tenant_for("elsewhere/1.dcm", info(modality="MR"))


def test_a_dicom_rule_never_matches_a_file_that_is_not_dicom(two):
    with pytest.raises(PolicyError):
        two.tenant_for("inbox/report.pdf", None)


def test_two_matching_tenants_is_an_error_naming_both(two):
    with pytest.raises(PolicyError) as e:
        two.tenant_for("north/x.dcm", info(InstitutionName="South General"))
    assert "north" in e.value.reason and "south" in e.value.reason
    assert e.value.subject == "north/x.dcm"


def test_no_matching_tenant_is_an_error_without_fallback(two):
    with pytest.raises(PolicyError) as e:
        two.tenant_for("elsewhere/x.dcm", info())
    assert "no tenant" in e.value.reason and "fallback" in e.value.reason


def test_the_fallback_takes_what_no_tenant_matches():
    policy = parse_policy('[policy]\nfallback = "south"\n' + TWO, base_dir=".")
    assert policy.tenant_for("elsewhere/x.dcm", info()).name == "south"
    # the fallback never hides a double match
    with pytest.raises(PolicyError):
        policy.tenant_for("north/x.dcm", info(InstitutionName="South General"))


def test_a_double_star_slash_also_matches_no_directory():
    policy = parse_policy(
        '[tenants.a]\ndest = "https://acct.blob.core.windows.net/aaa"\npaths = ["**/*.dcm"]\n',
        base_dir=".",
    )
    assert policy.tenant_for("x.dcm", None).name == "a"
    assert policy.tenant_for("p/q/x.dcm", None).name == "a"


# -- retention: retain_until = max(study + 7 y, birth + 21 y); bad dates take the longest


@pytest.mark.parametrize(
    ("birth", "expected"),
    [
        (D(1984, 5, 6), D(2031, 1, 1)),  # adult: study + 7 y
        (D(2006, 1, 1), D(2031, 1, 1)),  # 18 at the study: 25 at study + 7 y, past 21
        (D(2014, 6, 30), D(2035, 6, 30)),  # child: birth + 21 y > study + 7 y
        (D(2023, 12, 1), D(2044, 12, 1)),  # infant: birth + 21 y
        (STUDY, D(2045, 1, 1)),  # born on the study day
    ],
    ids=["adult", "young-adult", "child", "infant", "newborn"],
)
def test_retention_by_age_at_study(two, birth, expected):
    placed = two.place("north/x.dcm", info(age_days=(STUDY - birth).days), today=TODAY)
    assert placed.retain_until == expected
    assert placed.retention_flag is None


def test_infant_images_are_kept_until_21():
    policy = parse_policy(TWO, base_dir=".")
    placed = policy.place("north/x.dcm", info(study=D(2020, 3, 10), age_days=100), today=TODAY)
    assert placed.retain_until == add_years(D(2020, 3, 10) - datetime.timedelta(days=100), 21)


@pytest.mark.parametrize(
    ("i", "expected", "flag"),
    [
        (info(birth_status="missing"), D(2045, 1, 1), "birth date missing"),
        (info(birth_status="implausible"), D(2045, 1, 1), "birth date implausible"),
        (info(study=None, birth_status="missing"), add_years(TODAY, 21), "study date missing"),
        (
            info(study=D(2030, 1, 1), study_status="implausible", birth_status="implausible"),
            add_years(TODAY, 21),
            "study date implausible",
        ),
        (None, add_years(TODAY, 21), "not DICOM"),
    ],
    ids=["no-birth", "bad-birth", "no-study", "future-study", "not-dicom"],
)
def test_missing_or_implausible_dates_take_the_longest_retention_and_are_flagged(
    two, i, expected, flag
):
    placed = two.place("north/x.dcm", i, today=TODAY)
    assert placed.retain_until == expected
    assert placed.retention_flag is not None and flag in placed.retention_flag


def test_retention_years_are_configurable():
    policy = parse_policy(
        "[retention]\nadult_years = 10\nminor_until_age_years = 25\n" + TWO, base_dir="."
    )
    placed = policy.place("north/x.dcm", info(birth_status="missing"), today=TODAY)
    assert placed.retain_until == D(2049, 1, 1)


def test_a_29_february_retention_ends_on_1_march_not_earlier():
    assert add_years(D(2024, 2, 29), 7) == D(2031, 3, 1)


# -- tiers by study age at copy time

TIERED = (
    "[tiers]\ncool_after_days = 30\ncold_after_days = 365\narchive_after_days = 1825\n"
    "step_days = 30\n" + TWO
)


@pytest.mark.parametrize(
    ("age_days", "tier", "band"),
    [
        (0, "Hot", "0"),
        (29, "Hot", "0"),
        (30, "Cool", "30"),
        (400, "Cold", "390"),
        (1824, "Cold", "1800"),
        (1825, "Cold", "1800"),  # rounded down to its band: Archive 25 days after creation
        (1830, "Archive", None),  # no later move: no band
        (9000, "Archive", None),
    ],
)
def test_tier_and_band_by_study_age(age_days, tier, band):
    policy = parse_policy(TIERED, base_dir=".")
    study = TODAY - datetime.timedelta(days=age_days)
    placed = policy.place("north/x.dcm", info(study=study), today=TODAY)
    assert placed.tier == tier
    assert placed.tags.get("tierband") == band


def test_copy_tier_uses_the_age_rounded_down_to_the_band():
    # 370 days old: band 360, so Cool now (not Cold): the lifecycle rule of band 360 makes it
    # Cold 5 days after creation, when the study is 375 >= 365 days old
    policy = parse_policy(TIERED, base_dir=".")
    placed = policy.place("north/x.dcm", info(study=TODAY - datetime.timedelta(370)), today=TODAY)
    assert (placed.tier, placed.tags["tierband"]) == ("Cool", "360")


def test_files_without_a_study_date_start_in_the_default_tier():
    policy = parse_policy(TIERED, base_dir=".")
    assert policy.place("north/r.pdf", None, today=TODAY).tier == "Hot"


def test_a_tenant_tier_overrides_age_tiering_and_carries_no_band():
    policy = parse_policy(
        TIERED.replace('paths = ["north/**"', 'tier = "cold"\npaths = ["north/**"'), base_dir="."
    )
    placed = policy.place("north/x.dcm", info(study=TODAY), today=TODAY)
    assert placed.tier == "Cold" and "tierband" not in placed.tags


def test_no_tiers_section_leaves_the_account_default():
    placed = parse_policy(TWO, base_dir=".").place("north/x.dcm", info(), today=TODAY)
    assert placed.tier is None and "tierband" not in placed.tags


# -- tags


def test_tags_carry_tenant_study_modality_dates_and_nothing_else():
    policy = parse_policy(TIERED, base_dir=".")
    placed = policy.place("north/x.dcm", info(study=D(2026, 11, 1)), today=TODAY)
    assert placed.tags == {
        "tenant": "north",
        "studyuid": "1.2.3",
        "modality": "CT",
        "studydate": "2026-11-01",
        "retainuntil": "2033-11-01",
        "tierband": "0",
    }


def test_tag_values_from_dicom_are_sanitised():
    placed = parse_policy(TWO, base_dir=".").place(
        "north/x.dcm", info(modality="C;T\\é", uid="1.2<3>"), today=TODAY
    )
    assert placed.tags["modality"] == "C_T__"
    assert placed.tags["studyuid"] == "1.2_3_"


def test_tags_are_at_most_ten_with_a_tenants_fixed_tags():
    text = TIERED.replace(
        'paths = ["north/**"',
        "tags = { a = '1', b = '2', c = '3', d = '4' }\npaths = [\"north/**\"",
    )
    placed = parse_policy(text, base_dir=".").place("north/x.dcm", info(study=TODAY), today=TODAY)
    assert len(placed.tags) == 10
    for key, value in placed.tags.items():
        assert 1 <= len(key) <= 128 and len(value) <= 256


def test_no_patient_identifier_reaches_tags_or_the_placement(tmp_path):
    # a real file with planted identifiers, through read_dicom_head and place
    from pyengine.policy.sample import (
        PLANTED_BIRTH_DATES,
        PLANTED_PATIENT_ID,
        PLANTED_PATIENT_NAME,
        SAMPLE_POLICY_TOML,
        write_sample_tree,
    )

    expected = write_sample_tree(tmp_path)
    policy = parse_policy(SAMPLE_POLICY_TOML, base_dir=tmp_path)
    seen = []
    for rel, sample in expected.items():
        if sample.malformed:
            continue
        head = (tmp_path / rel).read_bytes()
        placed = policy.place(rel, policy.read_dicom_head(head), today=TODAY)
        seen.append(repr(placed))
    text = "\n".join(seen)
    iso_births = [f"{b[:4]}-{b[4:6]}-{b[6:]}" for b in PLANTED_BIRTH_DATES]
    for secret in (PLANTED_PATIENT_NAME, PLANTED_PATIENT_ID, *PLANTED_BIRTH_DATES, *iso_births):
        assert secret not in text
    assert "PLANTED" not in text


def test_the_sample_tree_places_as_documented(tmp_path):
    from pyengine.policy.sample import SAMPLE_POLICY_TOML, write_sample_tree

    expected = write_sample_tree(tmp_path)
    policy = parse_policy(SAMPLE_POLICY_TOML, base_dir=tmp_path)
    for rel, sample in expected.items():
        head = (tmp_path / rel).read_bytes()
        if sample.malformed:
            with pytest.raises(PolicyError):
                policy.read_dicom_head(head)
            continue
        placed = policy.place(rel, policy.read_dicom_head(head), today=TODAY)
        assert placed.tenant.name == sample.tenant
        assert (placed.retention_flag is not None) == sample.flagged, rel
        if sample.retain_until is not None:
            assert placed.retain_until == sample.retain_until, rel
        assert placed.tags.get("studyuid") == sample.study_uid


# -- immutability


def test_immutability_locks_until_retain_until_midnight_utc():
    policy = parse_policy("[immutability]\nenabled = true\nlegal_hold = true\n" + TWO, base_dir=".")
    placed = policy.place("north/x.dcm", info(study=D(2024, 1, 1)), today=TODAY)
    assert placed.immutable_until == datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc)
    assert placed.legal_hold


def test_no_immutability_unless_the_policy_asks():
    placed = parse_policy(TWO, base_dir=".").place("north/x.dcm", info(), today=TODAY)
    assert placed.immutable_until is None and not placed.legal_hold


def test_a_tenant_can_opt_out_of_immutability():
    text = "[immutability]\nenabled = true\n" + TWO.replace(
        'paths = ["north/**"', 'immutable = false\npaths = ["north/**"'
    )
    policy = parse_policy(text, base_dir=".")
    assert policy.place("north/x.dcm", info(), today=TODAY).immutable_until is None
    south = policy.place("x", info(InstitutionName="South General"), today=TODAY)
    assert south.immutable_until is not None


def test_an_expired_retention_sets_no_immutability_policy():
    # Azure refuses an until-date in the past; an adult study from 2010 ran out in 2017
    policy = parse_policy("[immutability]\nenabled = true\n" + TWO, base_dir=".")
    placed = policy.place("north/x.dcm", info(study=D(2010, 1, 1)), today=TODAY)
    assert placed.retain_until == D(2017, 1, 1) and placed.immutable_until is None
