"""What a migration policy says: tenants (where a file goes and under which key), retention,
tiers, tags and immutability, and the two questions the engine asks of it: which tenant owns a
file (:meth:`Policy.tenant_for`) and how that file is stored (:meth:`Policy.place`).

Pure data and decisions: no I/O. :mod:`pyengine.policy.load` builds a :class:`Policy` from a TOML
file and validates it; the rules each decision follows live in retention.py, tiers.py, tags.py.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from pyengine.errors import ConfigError, PyEngineError

if TYPE_CHECKING:
    from pyengine.policy.dicom import DicomInfo

TIERS = ("Hot", "Cool", "Cold", "Archive")


class PolicyError(PyEngineError):
    """A file cannot be placed by the policy (no tenant, two tenants, malformed DICOM header).

    ``reason`` is one line and never carries patient data; the subject is the file's path (or
    "DICOM header" where the path is not known)."""


class PolicyFileError(PolicyError, ConfigError):
    """The policy FILE itself is bad: a load-time error, so the CLI exits 2."""

    exit_code = 2


@dataclass(frozen=True)
class MatchRule:
    """One way a file can belong to a tenant: every condition given must hold (AND); a tenant
    with several rules matches when any rule does (OR)."""

    #: source-path glob (relative to the source root, "/" separators); None = any path
    path_glob: str | None = None
    #: DICOM attribute (keyword, or "GGGGEEEE" hex tag) -> value glob, matched case-insensitively
    dicom: tuple[tuple[str, str], ...] = ()

    def matches(self, rel_path: str, info: DicomInfo | None) -> bool:
        if self.path_glob is not None and not glob_regex(self.path_glob).fullmatch(rel_path):
            return False
        if self.dicom:
            if info is None:  # not DICOM: a rule on DICOM attributes cannot hold
                return False
            for key, pattern in self.dicom:
                value = info.attributes.get(key) or _fixed_attribute(info, key)
                if value is None:
                    return False
                if not glob_regex(pattern, ignore_case=True, segments=False).fullmatch(value):
                    return False
        return True


def _fixed_attribute(info: DicomInfo, key: str) -> str | None:
    """Attributes every DicomInfo carries, matched even when the caller did not ask for them."""
    fixed = {
        "Modality": info.modality,
        "StudyInstanceUID": info.study_uid,
        "SeriesInstanceUID": info.series_uid,
        "SOPInstanceUID": info.sop_uid,
    }
    return fixed.get(key)


@dataclass(frozen=True)
class Tenant:
    name: str
    #: destination URL (account/container/prefix) as `pyengine copy` takes it; never a SAS
    dest: str
    #: name of an env var holding the connection string (the secret stays out of the file)
    connection_string_env: str | None = None
    #: path of a KEK file (resolved against the policy file's dir); None = see kek_id
    kek_file: str | None = None
    #: key id resolved through the KEK interface (e.g. a Key Vault key URL); None = see kek_file
    kek_id: str | None = None
    encrypt: bool = False
    #: fixed copy-time tier for every file of this tenant (no age-based tiering, no lifecycle
    #: rule); None = the policy's [tiers] rules
    tier: str | None = None
    #: per-tenant immutability override; None = the policy's [immutability]
    immutable: bool | None = None
    legal_hold: bool | None = None
    #: fixed blob index tags added to every blob of this tenant (validated at load)
    tags: tuple[tuple[str, str], ...] = ()
    rules: tuple[MatchRule, ...] = ()

    @property
    def uses_dicom(self) -> bool:
        return any(rule.dicom for rule in self.rules)

    def matches(self, rel_path: str, info: DicomInfo | None) -> bool:
        return any(rule.matches(rel_path, info) for rule in self.rules)


@dataclass(frozen=True)
class RetentionRule:
    """retain_until = max(study_date + adult_years, birth_date + minor_until_age_years); missing
    or implausible dates take the longest: anchor + max(adult_years, minor_until_age_years)."""

    adult_years: int = 7
    minor_until_age_years: int = 21

    @property
    def longest_years(self) -> int:
        return max(self.adult_years, self.minor_until_age_years)


@dataclass(frozen=True)
class TierRule:
    """Copy-time tier by study age, and the lifecycle bands that carry the later transitions.

    ``after_days`` holds (tier, study age in days from which it applies), strictly increasing,
    coolest last; ``default`` is the tier of a study younger than the first threshold."""

    default: str = "Hot"
    after_days: tuple[tuple[str, int], ...] = ()
    #: width of one lifecycle band (tag `tierband`): study ages are rounded down to it
    step_days: int = 30


@dataclass(frozen=True)
class Immutability:
    enabled: bool = False
    legal_hold: bool = False


@dataclass(frozen=True)
class Placement:
    """Where and how one file is stored."""

    tenant: Tenant
    study_uid: str | None
    modality: str | None
    study_date: datetime.date | None
    retain_until: datetime.date
    #: e.g. "birth date missing: longest retention"; None when the dates were fine
    retention_flag: str | None
    #: "Hot" | "Cool" | "Cold" | "Archive" at copy time; None = the account's default
    tier: str | None
    #: blob index tags: <= 10, sanitised, no patient identifiers
    tags: dict[str, str]
    #: UTC; x-ms-immutability-policy-until-date (mode Unlocked); None = no policy
    immutable_until: datetime.datetime | None
    legal_hold: bool


@dataclass(frozen=True)
class Policy:
    tenants: tuple[Tenant, ...]
    #: optional default source root declared in the file
    source: str | None = None
    #: tenant that takes files no tenant matches; None = such a file fails
    fallback: str | None = None
    retention: RetentionRule = field(default_factory=RetentionRule)
    tiers: TierRule | None = None
    immutability: Immutability = field(default_factory=Immutability)
    #: where it was loaded from (for messages); None when parsed from text
    path: str | None = None

    @property
    def needs_dicom_for_tenant(self) -> bool:
        """True when some tenant rule matches on DICOM attributes."""
        return any(t.uses_dicom for t in self.tenants)

    @cached_property  # asked once per file; a Policy never changes
    def dicom_attributes(self) -> tuple[str, ...]:
        """The attribute keys tenant rules match on: pass them to read_dicom_head."""
        keys = {k for t in self.tenants for r in t.rules for k, _ in r.dicom}
        return tuple(sorted(keys))

    def tenant(self, name: str) -> Tenant:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)

    def read_dicom_head(self, head: bytes) -> DicomInfo | None:
        """read_dicom_head with the attributes this policy's rules need."""
        from pyengine.policy.dicom import read_dicom_head

        return read_dicom_head(head, attributes=self.dicom_attributes)

    def tenant_for(self, rel_path: str, info: DicomInfo | None) -> Tenant:
        """The one tenant owning ``rel_path``; raises PolicyError when none matches (and no
        fallback) or when two match (the error names both)."""
        matched = [t for t in self.tenants if t.matches(rel_path, info)]
        if len(matched) > 1:
            names = ", ".join(t.name for t in matched)
            raise PolicyError(rel_path, f"matches more than one tenant ({names})")
        if matched:
            return matched[0]
        if self.fallback is not None:
            return self.tenant(self.fallback)
        what = "path and DICOM attributes" if self.needs_dicom_for_tenant else "path"
        raise PolicyError(rel_path, f"no tenant matches this {what} and the policy has no fallback")

    def place(self, rel_path: str, info: DicomInfo | None, *, today: datetime.date) -> Placement:
        """tenant_for + retention + tier + tags + immutability for one file."""
        from pyengine.policy import retention, tags, tiers

        tenant = self.tenant_for(rel_path, info)
        retain_until, flag = retention.retain_until(info, self.retention, today=today)
        tier, band = tiers.copy_tier(tenant, self.tiers, info, today=today)
        immutable = self.immutability.enabled if tenant.immutable is None else tenant.immutable
        legal_hold = (
            self.immutability.legal_hold if tenant.legal_hold is None else tenant.legal_hold
        )
        # Azure refuses an immutability policy whose until-date is not in the future; a
        # retention that has already run out leaves nothing to lock.
        immutable_until = (
            datetime.datetime.combine(retain_until, datetime.time(), tzinfo=datetime.timezone.utc)
            if immutable and retain_until > today
            else None
        )
        return Placement(
            tenant=tenant,
            study_uid=info.study_uid if info else None,
            modality=info.modality if info else None,
            study_date=info.study_date if info else None,
            retain_until=retain_until,
            retention_flag=flag,
            tier=tier,
            tags=tags.blob_tags(tenant, info, retain_until=retain_until, tier_band_days=band),
            immutable_until=immutable_until,
            legal_hold=legal_hold,
        )


_GLOB_CACHE: dict[tuple[str, bool, bool], re.Pattern[str]] = {}


def glob_regex(
    pattern: str, *, ignore_case: bool = False, segments: bool = True
) -> re.Pattern[str]:
    """Compile a glob: ``*`` any run of characters within a path segment, ``**`` any run across
    segments (``**/`` also zero segments), ``?`` one character, ``[...]`` a class (``[!...]``
    negated). With ``segments=False`` (DICOM values) ``*`` crosses "/" too. Raises ValueError
    for a malformed pattern (an unclosed ``[``)."""
    key = (pattern, ignore_case, segments)
    cached = _GLOB_CACHE.get(key)
    if cached is not None:
        return cached
    one = "[^/]" if segments else "."
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # "**/" also matches no directory at all
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append(one + "*")
        elif c == "?":
            out.append(one)
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if end < 0:
                raise ValueError(f"unclosed '[' at character {i + 1}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    compiled = re.compile("".join(out), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)
    _GLOB_CACHE[key] = compiled
    return compiled


def tier_name(text: str) -> str | None:
    """The canonical tier name for ``text`` (any case), or None when it is not one."""
    for tier in TIERS:
        if tier.lower() == text.lower():
            return tier
    return None
