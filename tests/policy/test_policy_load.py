"""pyengine.policy.load: a good file loads, and every bad one is a one-line ConfigError naming
the file, the key and the reason."""

from __future__ import annotations

import pytest

from pyengine.errors import ConfigError
from pyengine.policy import PolicyFileError, load_policy, parse_policy
from pyengine.policy.sample import SAMPLE_POLICY_TOML

BASE = """
[tenants.north]
dest = "https://acct.blob.core.windows.net/north/pacs"
paths = ["north/**"]
"""


def test_the_sample_policy_loads_with_every_section(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE_POLICY_TOML)
    policy = load_policy(path)
    assert [t.name for t in policy.tenants] == ["north", "south"]
    north = policy.tenant("north")
    assert north.kek_file == str(tmp_path / "keys" / "north.kek")  # relative to the file
    assert north.encrypt and not policy.tenant("south").encrypt
    assert north.connection_string_env == "NORTH_STORAGE_CONNECTION_STRING"
    assert north.tags == (("project", "migration2026"),)
    assert policy.fallback == "south"
    assert policy.retention.adult_years == 7 and policy.retention.minor_until_age_years == 21
    assert policy.tiers is not None
    assert policy.tiers.after_days == (("Cool", 90), ("Cold", 730), ("Archive", 3650))
    assert policy.immutability.enabled and not policy.immutability.legal_hold
    assert not policy.needs_dicom_for_tenant


def test_defaults_apply_to_a_minimal_file():
    policy = parse_policy(BASE, base_dir="/etc")
    assert policy.retention.adult_years == 7 and policy.retention.minor_until_age_years == 21
    assert policy.tiers is None and not policy.immutability.enabled and policy.fallback is None


BAD = [
    ("[tenants.north\n", "", "not valid TOML"),
    ("", "tenants", "at least one"),
    (BASE + "colour = 1\n", "tenants.north.colour", "unknown key"),
    ("[policy]\nfallbak = 'x'\n" + BASE, "policy.fallbak", "unknown key"),
    ("[policy]\nfallback = 'east'\n" + BASE, "policy.fallback", "no tenant named 'east'"),
    (BASE.replace('paths = ["north/**"]', ""), "tenants.north", "needs 'paths'"),
    (BASE.replace("north/**", "north/[ab"), "tenants.north.paths[0]", "unclosed '['"),
    (BASE.replace("north/**", "/abs/**"), "tenants.north.paths[0]", "relative"),
    (BASE.replace("north/**", "a/../b"), "tenants.north.paths[0]", "relative"),
    (BASE.replace("/north/pacs", "/North_X/pacs"), "tenants.north.dest", "invalid container"),
    (BASE.replace("/north/pacs", "/north/pacs?sig=abc"), "tenants.north.dest", "no SAS"),
    (BASE.replace("dest =", "dst ="), "tenants.north.dst", "unknown key"),
    (BASE + "tier = 'Frozen'\n", "tenants.north.tier", "unknown tier"),
    (BASE + "kek_file = 'a'\nkek_id = 'b'\n", "tenants.north.kek_file", "not both"),
    (BASE + "connection_string_env = 'A B'\n", "tenants.north.connection_string_env", "env"),
    (BASE + "tags = { tenant = 'x' }\n", "tenants.north.tags.tenant", "written by pyengine"),
    (BASE + "tags = { 'a#b' = 'x' }\n", "tenants.north.tags.a#b", "tag key may hold only"),
    (BASE + "tags = { a = 'x;y' }\n", "tenants.north.tags.a", "tag value may hold only"),
    (BASE + "tags = { a='1', b='2', c='3', d='4', e='5' }\n", "tenants.north.tags", "at most 4"),
    (BASE + "[[tenants.north.match]]\nPatientName = 'X*'\n", "PatientName", "patient"),
    (BASE + "[[tenants.north.match]]\nPatientID = 'X*'\n", "PatientID", "patient"),
    (BASE + "[[tenants.north.match]]\nReferringPhysicianName = 'X'\n", "Referring", "patient"),
    (BASE + "[[tenants.north.match]]\nInstitutonName = 'X'\n", "InstitutonName", "DICOM"),
    ("[tiers]\ncool_after_days = 0\n" + BASE, "tiers.cool_after_days", ">= 1"),
    ("[tiers]\ncool_after_days = true\n" + BASE, "tiers.cool_after_days", "whole number"),
    ("[tiers]\ncool_after_days = 400\ncold_after_days = 300\n" + BASE, "cold_after", "greater"),
    ("[tiers]\ndefault = 'Cold'\ncool_after_days = 30\n" + BASE, "tiers.cool_after", "cool"),
    ("[tiers]\ndefault = 'Tepid'\n" + BASE, "tiers.default", "unknown tier"),
    ("[tiers]\narchive_after_days = 36500\n" + BASE, "tiers.step_days", "Azure allows 100"),
    ("[retention]\nadult_years = 'seven'\n" + BASE, "retention.adult_years", "whole number"),
    ("[immutability]\nenabled = 'yes'\n" + BASE, "immutability.enabled", "true or false"),
    ("[immutability]\nlocked = true\n" + BASE, "immutability.locked", "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD, ids=[b[1] or b[2] for b in BAD])
def test_a_bad_policy_file_is_one_line_naming_file_key_and_reason(tmp_path, text, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as e:
        load_policy(path)
    line = e.value.one_line()
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert key in line and reason in line


def test_a_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(PolicyFileError) as e:
        load_policy(tmp_path / "nope.toml")
    assert e.value.exit_code == 2 and "nope.toml" in e.value.one_line()


def test_dicom_rules_make_the_policy_need_dicom_and_name_the_attributes():
    policy = parse_policy(
        BASE + "[[tenants.north.match]]\nInstitutionName = 'NORTH*'\n'00091010' = 'x'\n",
        base_dir=".",
    )
    assert policy.needs_dicom_for_tenant
    assert policy.dicom_attributes == ("00091010", "InstitutionName")


def test_the_readme_example_is_the_sample_policy():
    import pathlib

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Migration policy", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    assert example == SAMPLE_POLICY_TOML
