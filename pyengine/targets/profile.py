"""What a Blob REST endpoint accepts: the Azure service, or a Data Box device's Blob storage.

A :class:`TargetProfile` holds the REST version every request sends, the plan-time limits (blob
name length, block and blob sizes) and which commit properties the endpoint can store. The
engine plans with its limits (a file that breaks one fails before any byte is sent) and
:func:`fit_properties` drops what the endpoint cannot store, so that it can be journaled as
pending and stamped later by ``pyengine finalize`` once the data is in Azure.

Data Box facts, from "Azure Data Box Blob storage requirements"
(https://learn.microsoft.com/azure/databox/data-box-system-requirements-rest):
- REST API versions 2015-04-05 ... 2019-02-02 only (Data Box 3.0 onwards);
- blob names of at most 880 characters (1,760 bytes), against Azure's 1,024;
- block blobs of at most 4.75 TiB, "100 MB x 50,000 blocks": blocks of at most 100 MiB;
- general-purpose v1 accounts only: no blob-level access tier;
- endpoints ``https://<account>.blob.<device serial>.microsoftdatabox.com`` with the device's own
  certificate (hence ``--ca-cert``).
What 2019-02-02 lacks of what pyengine sends: ``x-ms-tags`` (blob index tags, 2019-12-12) and
the immutability and legal-hold headers (2020-06-12 / 2020-10-02). ``x-ms-content-crc64``
(2019-02-02) and ``x-ms-blob-content-md5`` are within it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyengine.errors import ConfigError
from pyengine.options import MAX_BLOCK_BYTES, MAX_BLOCKS_PER_BLOB, MiB

#: the REST version sent to Azure: tags (>= 2019-12-12), tier on Put Blob / Put Block List
#: (>= 2018-11-09), immutability headers (>= 2020-06-12)
AZURE_API_VERSION = "2021-08-06"
#: the newest REST version Data Box Blob storage accepts
DATABOX_API_VERSION = "2019-02-02"
#: the host name suffix of a Data Box Blob endpoint (account.blob.SERIAL.microsoftdatabox.com)
DATABOX_HOST_SUFFIX = ".microsoftdatabox.com"

TARGETS = ("azure", "databox")

#: commit headers that need a REST version newer than 2019-02-02, by the pending kind that
#: records them: a profile without the feature never sends them
_TAGS_HEADER = "x-ms-tags"
_TIER_HEADER = "x-ms-access-tier"
#: x-ms-immutability-policy-until-date, x-ms-immutability-policy-mode, x-ms-legal-hold
_IMMUTABILITY_PREFIXES = ("x-ms-immutability-", "x-ms-legal-hold")


@dataclass(frozen=True)
class TargetProfile:
    """What one kind of Blob endpoint accepts."""

    name: str
    api_version: str
    max_name_chars: int
    #: largest block of Put Block (and chunk of Put Blob)
    max_block_bytes: int
    max_blob_bytes: int
    supports_tags: bool
    supports_immutability: bool
    supports_tier: bool


#: Azure Blob Storage (and Azurite)
AZURE = TargetProfile(
    name="azure",
    api_version=AZURE_API_VERSION,
    max_name_chars=1024,
    max_block_bytes=MAX_BLOCK_BYTES,
    max_blob_bytes=MAX_BLOCK_BYTES * MAX_BLOCKS_PER_BLOB,
    supports_tags=True,
    supports_immutability=True,
    supports_tier=True,
)

#: Data Box Blob storage (Data Box 3.0 onwards): see the module docstring for the sources
DATABOX = TargetProfile(
    name="databox",
    api_version=DATABOX_API_VERSION,
    max_name_chars=880,
    max_block_bytes=100 * MiB,
    max_blob_bytes=100 * MiB * MAX_BLOCKS_PER_BLOB,  # 4.75 TiB
    supports_tags=False,
    supports_immutability=False,
    supports_tier=False,
)

_PROFILES = {p.name: p for p in (AZURE, DATABOX)}


def is_databox_host(host: str) -> bool:
    """Whether ``host`` is a Data Box Blob endpoint (its documented name suffix)."""
    return host.lower().rstrip(".").endswith(DATABOX_HOST_SUFFIX)


def choose_profile(target: str | None, host: str) -> TargetProfile:
    """The profile named by ``target`` ("azure" | "databox"), or when None the one the
    destination's host name says (a ``*.microsoftdatabox.com`` host is a Data Box)."""
    if target is None:
        return DATABOX if is_databox_host(host) else AZURE
    try:
        return _PROFILES[target]
    except KeyError:
        raise ConfigError(
            "--target", f"expected one of {', '.join(TARGETS)}, got {target!r}"
        ) from None


def fit_properties(
    profile: TargetProfile,
    tier: str | None,
    tags: Mapping[str, str] | None,
    headers: Mapping[str, str],
) -> tuple[str | None, dict[str, str] | None, dict[str, str], dict[str, Any]]:
    """(tier, tags, headers) as ``profile`` can store them, and what it cannot: a dict of pending
    kind ("tier", "tags", "immutability") to the JSON-able value left out, for the journal."""
    pending: dict[str, Any] = {}
    kept = dict(headers)
    if tier and not profile.supports_tier:
        pending["tier"] = tier
        tier = None
    kept_tier_header = kept.pop(_TIER_HEADER, None)
    if kept_tier_header is not None:
        if profile.supports_tier:
            kept[_TIER_HEADER] = kept_tier_header
        else:
            pending.setdefault("tier", kept_tier_header)
    out_tags = dict(tags) if tags else None
    if out_tags and not profile.supports_tags:
        pending["tags"] = out_tags
        out_tags = None
    if _TAGS_HEADER in kept and not profile.supports_tags:
        pending.setdefault("tags", kept.pop(_TAGS_HEADER))
    if not profile.supports_immutability:
        held = {h: kept.pop(h) for h in list(kept) if h.lower().startswith(_IMMUTABILITY_PREFIXES)}
        if held:
            pending["immutability"] = held
    return tier, out_tags, kept, pending
