"""A policy file (TOML) -> a validated :class:`~pyengine.policy.model.Policy`.

Every problem is one PolicyFileError (a ConfigError: the CLI exits 2) whose line names the file,
the key and the reason: ``error: policy.toml: tenants.north.dest: missing container name``.
Unknown keys are refused, so a misspelt key never silently means "default". The format is
documented with a complete example in README.md ("Migration policy").
"""

from __future__ import annotations

import os
import re
from typing import Any

import tomllib

from pyengine.errors import ConfigError
from pyengine.policy import tags as tag_rules
from pyengine.policy.dicom import attribute_tag
from pyengine.policy.lifecycle import MAX_RULES, lifecycle_rule_count
from pyengine.policy.model import (
    TIERS,
    Immutability,
    MatchRule,
    Policy,
    PolicyFileError,
    RetentionRule,
    Tenant,
    TierRule,
    glob_regex,
    tier_name,
)

__all__ = ["load_policy", "parse_policy"]

_TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: DICOM attributes a tenant rule may never match on: they identify the patient (PS3.15 E.1).
#: Group 0010 is the Patient module; IssuerOfPatientID names the issuing system, not a person.
_PATIENT_GROUP = 0x0010
_ALLOWED_PATIENT_TAGS = frozenset({0x00100021})
_TIER_KEYS = {"Cool": "cool_after_days", "Cold": "cold_after_days", "Archive": "archive_after_days"}


class _Reader:
    def __init__(self, subject: str, base_dir: str) -> None:
        self.subject = subject
        self.base_dir = base_dir

    def fail(self, key: str, reason: str) -> PolicyFileError:
        return PolicyFileError(self.subject, f"{key}: {reason}" if key else reason)

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                expected = ", ".join(sorted(allowed))
                raise self.fail(where, f"unknown key (expected one of: {expected})")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def integer(self, value: Any, key: str, *, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be a whole number >= {minimum}")
        return value

    def tier(self, value: Any, key: str) -> str:
        name = tier_name(self.string(value, key))
        if name is None:
            raise self.fail(key, f"unknown tier {value!r} (expected one of: {', '.join(TIERS)})")
        return name

    def path_glob(self, value: Any, key: str) -> str:
        pattern = self.string(value, key)
        if pattern.startswith("/") or "\\" in pattern or ".." in pattern.split("/"):
            raise self.fail(key, "a path glob is relative to the source root, with '/' separators")
        try:
            glob_regex(pattern)
        except ValueError as e:
            raise self.fail(key, f"bad glob: {e}") from None
        return pattern

    def dicom_key(self, attr: str, key: str) -> None:
        tag = attribute_tag(attr)
        if tag is None:
            raise self.fail(key, "not a DICOM keyword or 8-hex-digit tag")
        from pydicom.datadict import dictionary_VR

        try:
            vr = dictionary_VR(tag)
        except KeyError:  # private or unknown tag: routed on by its value only
            vr = ""
        if (tag >> 16 == _PATIENT_GROUP and tag not in _ALLOWED_PATIENT_TAGS) or vr == "PN":
            raise self.fail(key, "tenant rules may not match on patient identifiers")


def _match_rules(r: _Reader, name: str, raw: dict[str, Any]) -> tuple[MatchRule, ...]:
    rules: list[MatchRule] = []
    key = f"tenants.{name}.paths"
    paths = raw.get("paths", [])
    if not isinstance(paths, list):
        raise r.fail(key, "must be a list of globs")
    for i, pattern in enumerate(paths):
        rules.append(MatchRule(path_glob=r.path_glob(pattern, f"{key}[{i}]")))
    matches = raw.get("match", [])
    if not isinstance(matches, list):
        raise r.fail(f"tenants.{name}.match", "must be an array of tables ([[tenants.NAME.match]])")
    for i, m in enumerate(matches):
        key = f"tenants.{name}.match[{i}]"
        if not isinstance(m, dict) or not m:
            raise r.fail(key, "must be a non-empty table")
        path_glob = r.path_glob(m["path"], f"{key}.path") if "path" in m else None
        dicom = []
        for attr, pattern in m.items():
            if attr == "path":
                continue
            r.dicom_key(attr, f"{key}.{attr}")
            pattern = r.string(pattern, f"{key}.{attr}")
            try:
                glob_regex(pattern, ignore_case=True, segments=False)
            except ValueError as e:
                raise r.fail(f"{key}.{attr}", f"bad glob: {e}") from None
            dicom.append((attr, pattern))
        rules.append(MatchRule(path_glob=path_glob, dicom=tuple(dicom)))
    if not rules:
        raise r.fail(f"tenants.{name}", "needs 'paths' or at least one [[tenants.NAME.match]]")
    return tuple(rules)


def _tenant(r: _Reader, name: str, raw: Any) -> Tenant:
    from pyengine.targets.auth import parse_destination

    key = f"tenants.{name}"
    if not _TENANT_NAME.fullmatch(name):
        raise r.fail(key, "a tenant name is 1-64 letters, digits, '-' or '_'")
    allowed = {"dest", "connection_string_env", "kek_file", "kek_id", "paths", "match", "tier"}
    raw = r.table(raw, key, allowed | {"immutable", "legal_hold", "tags"})
    if "dest" not in raw:
        raise r.fail(f"{key}.dest", "missing (the tenant's destination URL)")
    dest = r.string(raw["dest"], f"{key}.dest")
    if "?" in dest:
        raise r.fail(f"{key}.dest", "no SAS in the policy file: use connection_string_env")
    try:
        parse_destination(dest)
    except ConfigError as e:
        raise r.fail(f"{key}.dest", e.reason) from None
    env = raw.get("connection_string_env")
    if env is not None and not _ENV_NAME.fullmatch(r.string(env, f"{key}.connection_string_env")):
        raise r.fail(f"{key}.connection_string_env", "must be an environment variable name")
    kek_file = raw.get("kek_file")
    kek_id = raw.get("kek_id")
    if kek_file is not None and kek_id is not None:
        raise r.fail(f"{key}.kek_file", "give kek_file or kek_id, not both")
    if kek_file is not None:
        kek_file = os.path.join(r.base_dir, r.string(kek_file, f"{key}.kek_file"))
    if kek_id is not None:
        kek_id = r.string(kek_id, f"{key}.kek_id")
    tags = r.table(raw.get("tags", {}), f"{key}.tags", set(raw.get("tags", {})))
    max_own = tag_rules.MAX_TAGS - len(tag_rules.OWN_TAG_KEYS)
    if len(tags) > max_own:
        own = len(tag_rules.OWN_TAG_KEYS)
        raise r.fail(f"{key}.tags", f"at most {max_own} (pyengine writes up to {own} itself)")
    for tag_key, tag_value in tags.items():
        where = f"{key}.tags.{tag_key}"
        problem = tag_rules.tag_key_problem(tag_key)
        if problem is None and tag_key in tag_rules.OWN_TAG_KEYS:
            problem = "this tag is written by pyengine"
        if problem is None and isinstance(tag_value, str):
            problem = tag_rules.tag_value_problem(tag_value)
        elif problem is None:
            problem = "tag value must be a string"
        if problem:
            raise r.fail(where, problem)
    return Tenant(
        name=name,
        dest=dest,
        connection_string_env=env,
        kek_file=kek_file,
        kek_id=kek_id,
        encrypt=kek_file is not None or kek_id is not None,
        tier=r.tier(raw["tier"], f"{key}.tier") if "tier" in raw else None,
        immutable=r.boolean(raw["immutable"], f"{key}.immutable") if "immutable" in raw else None,
        legal_hold=(
            r.boolean(raw["legal_hold"], f"{key}.legal_hold") if "legal_hold" in raw else None
        ),
        tags=tuple(sorted(tags.items())),
        rules=_match_rules(r, name, raw),
    )


def _tiers(r: _Reader, raw: Any) -> TierRule:
    raw = r.table(raw, "tiers", {"default", "step_days", *_TIER_KEYS.values()})
    default = r.tier(raw.get("default", "Hot"), "tiers.default")
    after: list[tuple[str, int]] = []
    for tier, key in _TIER_KEYS.items():
        if key in raw:
            days = r.integer(raw[key], f"tiers.{key}")
            if TIERS.index(tier) <= TIERS.index(default):
                raise r.fail(f"tiers.{key}", f"the default tier {default} is already as cool")
            if after and days <= after[-1][1]:
                raise r.fail(f"tiers.{key}", "a cooler tier must start at a greater age")
            after.append((tier, days))
    step = r.integer(raw.get("step_days", 30), "tiers.step_days")
    rule = TierRule(default=default, after_days=tuple(after), step_days=step)
    count = lifecycle_rule_count(step, rule.after_days)
    if count > MAX_RULES:
        raise r.fail(
            "tiers.step_days",
            f"{count} lifecycle rules needed, Azure allows {MAX_RULES}: use a larger step",
        )
    return rule


def parse_policy(text: str, *, base_dir: str | os.PathLike[str], subject: str = "policy") -> Policy:
    """Parse and validate a policy given as TOML text; relative paths (kek_file) are taken from
    ``base_dir``; ``subject`` names the file in errors."""
    r = _Reader(subject, os.fspath(base_dir))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise r.fail("", f"not valid TOML: {e}") from None
    doc = r.table(doc, "", {"policy", "retention", "tiers", "immutability", "tenants"})
    head = r.table(doc.get("policy", {}), "policy", {"source", "fallback"})
    # relative to the policy file, like kek_file: `copy --policy` and `policy check` agree
    source = (
        os.path.join(r.base_dir, r.string(head["source"], "policy.source"))
        if "source" in head
        else None
    )
    raw_tenants = doc.get("tenants")
    if not isinstance(raw_tenants, dict) or not raw_tenants:
        raise r.fail("tenants", "at least one [tenants.NAME] table is required")
    tenants = tuple(_tenant(r, name, raw) for name, raw in raw_tenants.items())
    fallback = None
    if "fallback" in head:
        fallback = r.string(head["fallback"], "policy.fallback")
        if fallback not in raw_tenants:
            raise r.fail("policy.fallback", f"no tenant named {fallback!r}")

    ret = r.table(doc.get("retention", {}), "retention", {"adult_years", "minor_until_age_years"})
    retention = RetentionRule(
        adult_years=r.integer(ret.get("adult_years", 7), "retention.adult_years"),
        minor_until_age_years=r.integer(
            ret.get("minor_until_age_years", 21), "retention.minor_until_age_years"
        ),
    )
    imm = r.table(doc.get("immutability", {}), "immutability", {"enabled", "legal_hold"})
    immutability = Immutability(
        enabled=r.boolean(imm.get("enabled", False), "immutability.enabled"),
        legal_hold=r.boolean(imm.get("legal_hold", False), "immutability.legal_hold"),
    )
    return Policy(
        tenants=tenants,
        source=source,
        fallback=fallback,
        retention=retention,
        tiers=_tiers(r, doc["tiers"]) if "tiers" in doc else None,
        immutability=immutability,
        path=subject if subject != "policy" else None,
    )


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at ``path`` (raises PolicyFileError, exit code 2)."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise PolicyFileError(shown, e.strerror or str(e)) from None
    except UnicodeDecodeError:
        raise PolicyFileError(shown, "not UTF-8 text") from None
    return parse_policy(text, base_dir=os.path.dirname(os.path.abspath(path)), subject=shown)
