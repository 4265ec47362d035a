"""The Azure Storage lifecycle management policy that carries a policy's later tier transitions,
so tiering goes on with nothing of ours running (`pyengine policy lifecycle FILE`).

Format: "Lifecycle management policy structure",
https://learn.microsoft.com/azure/storage/blobs/lifecycle-management-policy-structure
(rules: at most 100; a rule name up to 256 alphanumeric characters, unique; filters
blobTypes, prefixMatch (at most 10, each starting with the container name) and blobIndexMatch
(at most 10 conditions, op "=="); actions.baseBlob.tierToCool / tierToCold / tierToArchive with
daysAfterCreationGreaterThan). Lifecycle conditions count days since the blob's creation, so the
rules are keyed on the `tierband` index tag (the study's age at copy time, see tiers.py).
"""

from __future__ import annotations

from typing import Any

from pyengine.policy.model import TIERS, Policy, PolicyError, Tenant

__all__ = ["MAX_RULES", "evaluate_lifecycle", "lifecycle_policy", "lifecycle_rule_count"]

MAX_RULES = 100
MAX_PREFIXES = 10
_ACTION = {"Cool": "tierToCool", "Cold": "tierToCold", "Archive": "tierToArchive"}
_ACTION_TIER = {v: k for k, v in _ACTION.items()}


def _account_and_prefix(tenant: Tenant) -> tuple[str, str]:
    from pyengine.targets.auth import parse_destination

    dest = parse_destination(tenant.dest)
    return dest.account_name, f"{dest.container}/{dest.prefix}"


def lifecycle_rule_count(step_days: int, after_days: tuple[tuple[str, int], ...]) -> int:
    """How many band rules a tier rule needs (bands below the last threshold)."""
    if not after_days:
        return 0
    last = after_days[-1][1]
    return -(-last // step_days)


def lifecycle_policy(policy: Policy, *, account: str | None = None) -> dict[str, Any]:
    """The lifecycle management policy (JSON-ready dict) for the tenants tiered by age in one
    storage account (``account``: needed when the tenants span several accounts)."""
    rule = policy.tiers
    if rule is None or not rule.after_days:
        raise PolicyError(policy.path or "policy", "no [tiers] transitions to carry")
    tiered = [t for t in policy.tenants if t.tier is None]
    by_account: dict[str, list[str]] = {}
    for tenant in tiered:
        name, prefix = _account_and_prefix(tenant)
        by_account.setdefault(name, [])
        if prefix not in by_account[name]:
            by_account[name].append(prefix)
    if account is None:
        if len(by_account) > 1:
            names = ", ".join(sorted(by_account))
            raise PolicyError(
                policy.path or "policy",
                f"tenants span storage accounts ({names}): name one (--account); a lifecycle "
                "policy belongs to one account",
            )
        account = next(iter(by_account), None)
    prefixes = sorted(by_account.get(account or "", []))
    if not prefixes:
        raise PolicyError(policy.path or "policy", f"no tenant tiered by age in account {account}")
    if len(prefixes) > MAX_PREFIXES:
        raise PolicyError(
            policy.path or "policy",
            f"{len(prefixes)} tenant prefixes in account {account}: a rule takes at most "
            f"{MAX_PREFIXES}",
        )
    rules = []
    last = rule.after_days[-1][1]
    for band in range(0, last, rule.step_days):
        actions: dict[str, Any] = {}
        for tier, after_days in rule.after_days:
            if after_days > band:
                # "GreaterThan": the move happens after (after_days - band) full days, when the
                # study is at least after_days old (band <= its age at copy time)
                actions[_ACTION[tier]] = {"daysAfterCreationGreaterThan": after_days - band}
        rules.append(
            {
                "enabled": True,
                "name": f"pyengineTierBand{band}",
                "type": "Lifecycle",
                "definition": {
                    "actions": {"baseBlob": actions},
                    "filters": {
                        "blobTypes": ["blockBlob"],
                        "prefixMatch": prefixes,
                        "blobIndexMatch": [{"name": "tierband", "op": "==", "value": str(band)}],
                    },
                },
            }
        )
    return {"rules": rules}


def evaluate_lifecycle(policy_json: dict[str, Any], blob: dict[str, Any]) -> str | None:
    """The tier Azure's lifecycle management would move ``blob`` to, or None (no action).

    ``blob``: {"name": "container/blob/name", "tags": {...}, "days_since_creation": N,
    optional "tier": current tier}. Of several actions that apply, the coolest wins (Azure
    applies the least expensive); a blob already as cool or cooler is left alone."""
    name = blob.get("name", blob.get("prefix", ""))
    tags = blob.get("tags", {})
    days = blob["days_since_creation"]
    best: str | None = None
    for rule in policy_json["rules"]:
        if not rule.get("enabled", True) or rule.get("type") != "Lifecycle":
            continue
        filters = rule["definition"].get("filters", {})
        if "blockBlob" not in filters.get("blobTypes", []):
            continue
        prefixes = filters.get("prefixMatch")
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        if not all(
            c["op"] == "==" and tags.get(c["name"]) == c["value"]
            for c in filters.get("blobIndexMatch", [])
        ):
            continue
        for action, condition in rule["definition"]["actions"].get("baseBlob", {}).items():
            tier = _ACTION_TIER.get(action)
            if tier is None or days <= condition["daysAfterCreationGreaterThan"]:
                continue
            if best is None or TIERS.index(tier) > TIERS.index(best):
                best = tier
    current = blob.get("tier")
    if best is not None and current is not None and TIERS.index(current) >= TIERS.index(best):
        return None
    return best
