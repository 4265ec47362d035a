"""`pyengine policy lifecycle FILE` and `pyengine policy check FILE [--explain PATH...]`."""

from __future__ import annotations

import json

from pyengine.cli.main import main
from pyengine.policy.sample import (
    PLANTED_BIRTH_DATES,
    PLANTED_PATIENT_ID,
    PLANTED_PATIENT_NAME,
    SAMPLE_POLICY_TOML,
    write_sample_tree,
)


def test_policy_lifecycle_prints_the_lifecycle_json(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE_POLICY_TOML)
    assert main(["policy", "lifecycle", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rules"][0]["name"] == "pyengineTierBand0"
    assert len(doc["rules"]) == 61


def test_policy_check_exits_2_with_one_line_for_a_bad_file(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE_POLICY_TOML.replace("adult_years", "adult_yeras"))
    assert main(["policy", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {path}: retention.adult_yeras: unknown key "
        "(expected one of: adult_years, minor_until_age_years)"
    )


def test_policy_check_explains_where_files_go_without_patient_data(tmp_path, capsys):
    tree = tmp_path / "tree"
    expected = write_sample_tree(tree)
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE_POLICY_TOML)
    files = [str(tree / rel) for rel in expected]
    argv = ["policy", "check", str(path), "--source", str(tree), "--today", "2026-11-26"]
    code = main([*argv, "--json", "--explain", *files])
    out, err = capsys.readouterr()
    assert code == 1  # the malformed files fail, the others are explained
    rows = {row["path"]: row for row in map(json.loads, out.splitlines())}
    for rel, sample in expected.items():
        if sample.malformed:
            assert rel not in rows and f"{tree / rel}: malformed" in err
            continue
        assert rows[rel]["tenant"] == sample.tenant
        if sample.retain_until is not None:
            assert rows[rel]["retain_until"] == sample.retain_until.isoformat()
    for secret in (PLANTED_PATIENT_NAME, PLANTED_PATIENT_ID, *PLANTED_BIRTH_DATES):
        assert secret not in out + err
